"""Prints an extension script's lines without comments and blank lines, sorted, to compare two
scripts by content: pgrx's generated scripts carry source-location comments, and the order of
their statements is not stable from one generation to the next."""
import re
import sys

text = open(sys.argv[1]).read()
text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
lines = [line.strip() for line in text.splitlines()]
for s in sorted(s for s in lines if s and not s.startswith("--")):
    print(s)
