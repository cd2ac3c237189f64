"""Prints an extension script without comments and blank lines, to compare two scripts by
their statements (pgrx's generated scripts carry source-location comments)."""
import re
import sys

text = open(sys.argv[1]).read()
text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
for line in text.splitlines():
    s = line.strip()
    if s and not s.startswith("--"):
        print(s)
