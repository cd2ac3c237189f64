#!/usr/bin/env python3
"""Runs the ```sql blocks of one Markdown file, in order, in one psql session, and checks them.

Used by tests/docs.sh, which gives it a fresh database (PGHOST, PGPORT, PGUSER, PGDATABASE in the
environment). Usage: docs_run.py FILE.md PSQL

Conventions (to a reader, plain SQL comments and fence info strings):
  * ```sql           a block that runs here.
    ```sql citus     needs Citus; ```sql pg_cron needs pg_cron (both tags: both): counted as
                     skipped, unless DOCS_WITH (say "pg_cron", or "citus pg_cron") names every
                     tag of the block: a script whose database has those extensions runs them.
  * -- ERROR 22023   after a statement (on its line or the comment lines after it): the statement
                     must fail with that SQLSTATE. Any other error fails the block.
  * -- → VALUE       after a statement: its output, one such comment per row, in order; columns
                     joined by " | ", NULL shown as NULL, "..." matches any text. "-- → (no rows)"
                     means an empty result. A statement without "→" comments is not checked.
Prints one line per failed statement and, last, "RESULT passed failed skipped" (blocks).
"""
import os
import re
import subprocess
import sys
import tempfile

FENCE_OPEN = re.compile(r'^\s*```sql(?:\s+(.*?))?\s*$')
FENCE_CLOSE = re.compile(r'^\s*```\s*$')
SKIP_TAGS = {'citus', 'pg_cron'}
ERROR_MARK = re.compile(r'--\s*ERROR\s+([0-9A-Z]{5})\b')
RESULT_MARK = re.compile(r'--\s*→\s?(.*)$')


def blocks_of(path):
    """[(first line number of the block's body, info tags, lines)] for every ```sql block."""
    out, cur, tags, start = [], None, None, 0
    with open(path, encoding='utf-8') as f:
        for n, line in enumerate(f, 1):
            line = line.rstrip('\n')
            if cur is None:
                m = FENCE_OPEN.match(line)
                if m:
                    cur, tags, start = [], (m.group(1) or '').split(), n + 1
            elif FENCE_CLOSE.match(line):
                out.append((start, tags, cur))
                cur = None
            else:
                cur.append(line)
    if cur is not None:
        raise SystemExit(f'{path}:{start - 1}: unclosed ```sql block')
    return out


def split_statements(text):
    """[(start offset, end offset past ';', comments after the statement up to the next one)]."""
    stmts, i, n = [], 0, len(text)
    start = None          # offset of the current statement's first token
    comments = []         # comments seen since the current (or last) statement started
    last = None           # the last finished statement, which trailing comments attach to
    while i < n:
        c = text[i]
        if text.startswith('--', i):
            j = text.find('\n', i)
            j = n if j < 0 else j
            comments.append(text[i:j])
            i = j
            continue
        if text.startswith('/*', i):
            depth, j = 1, i + 2
            while j < n and depth:
                if text.startswith('/*', j):
                    depth, j = depth + 1, j + 2
                elif text.startswith('*/', j):
                    depth, j = depth - 1, j + 2
                else:
                    j += 1
            i = j
            continue
        if c.isspace():
            i += 1
            continue
        if start is None:
            # A new statement begins: what came since the last one belongs to the last one.
            if last is not None:
                last[2].extend(comments)
            comments = []
            start = i
        if c == "'":
            escapes = i > 0 and text[i - 1] in 'eE' and (i < 2 or not (text[i - 2].isalnum() or text[i - 2] == '_'))
            j = i + 1
            while j < n:
                if escapes and text[j] == '\\':
                    j += 2
                    continue
                if text[j] == "'":
                    if j + 1 < n and text[j + 1] == "'":
                        j += 2
                        continue
                    break
                j += 1
            i = j + 1
            continue
        if c == '"':
            j = text.find('"', i + 1)
            i = n if j < 0 else j + 1
            continue
        if c == '$' and (i == 0 or not (text[i - 1].isalnum() or text[i - 1] == '_')):
            m = re.match(r'\$([A-Za-z_][A-Za-z_0-9]*)?\$', text[i:])
            if m:
                tag = m.group(0)
                j = text.find(tag, i + len(tag))
                i = n if j < 0 else j + len(tag)
                continue
        if c == ';':
            last = (start, i + 1, comments)
            stmts.append(last)
            comments, start = [], None
            i += 1
            continue
        i += 1
    if start is not None:   # a last statement without ';'
        last = (start, n, comments)
        stmts.append(last)
        comments = []
    if last is not None:
        last[2].extend(comments)
    return stmts


def expectations(stmt_text, comments):
    """(expected SQLSTATE or None, expected rows or None) from the statement's comments."""
    sqlstate, rows = None, None
    found = [m.group(0) for m in re.finditer(r'--[^\n]*', stmt_text)] + comments
    for c in found:
        m = ERROR_MARK.search(c)
        if m:
            sqlstate = m.group(1)
        m = RESULT_MARK.search(c)
        if m:
            rows = rows or []
            v = m.group(1).strip()
            if v != '(no rows)':
                rows.append(v)
    return sqlstate, rows


def row_matches(expected, actual):
    pattern = '.*?'.join(re.escape(part) for part in expected.split('...'))
    return re.fullmatch(pattern, actual, re.S) is not None


def main():
    path, psql = sys.argv[1], sys.argv[2]
    plan = []       # (block index, markdown line, statement text, sqlstate, rows)
    blocks = blocks_of(path)
    skipped = 0
    runnable = []
    for bi, (line0, tags, lines) in enumerate(blocks):
        unknown = [t for t in tags if t not in SKIP_TAGS]
        if unknown:
            raise SystemExit(f'{path}:{line0 - 1}: unknown ```sql tag(s) {unknown} (known: {sorted(SKIP_TAGS)})')
        if tags and not set(tags) <= set(os.environ.get('DOCS_WITH', '').split()):
            skipped += 1
            continue
        runnable.append(bi)
        text = '\n'.join(lines) + '\n'
        for s, e, comments in split_statements(text):
            stmt = text[s:e]
            if not stmt.rstrip().endswith(';'):
                stmt += ';'
            sqlstate, rows = expectations(stmt, comments)
            plan.append((bi, line0 + text.count('\n', 0, s), stmt, sqlstate, rows))

    with tempfile.NamedTemporaryFile('w', suffix='.sql', delete=False, encoding='utf-8') as f:
        f.write('\\set ON_ERROR_STOP 0\n\\pset null NULL\n\\pset fieldsep \' | \'\n')
        for k, (_, _, stmt, _, _) in enumerate(plan):
            f.write(f'\\echo @@@S {k}\n\\warn @@@S {k}\n{stmt}\n\\echo @@@E {k} :SQLSTATE\n')
        script = f.name
    try:
        r = subprocess.run([psql, '-X', '-q', '-A', '-t', '-f', script],
                           capture_output=True, text=True)
    finally:
        os.unlink(script)

    outs, states, errs = {}, {}, {}
    cur = None
    for line in r.stdout.split('\n'):
        m = re.match(r'^@@@([SE]) (\d+)(?: (\S+))?$', line)
        if m:
            k = int(m.group(2))
            if m.group(1) == 'S':
                cur = k
                outs[k] = []
            else:
                states[k] = m.group(3)
                cur = None
        elif cur is not None:
            outs[cur].append(line.rstrip())
    cur = None
    for line in r.stderr.split('\n'):
        m = re.match(r'^@@@S (\d+)$', line)
        if m:
            cur = int(m.group(1))
            errs[cur] = []
        elif cur is not None and line:
            errs[cur].append(line)
        elif line:
            errs.setdefault(-1, []).append(line)

    failed_blocks = set()
    for k, (bi, lno, stmt, want_state, want_rows) in enumerate(plan):
        state = states.get(k)
        got = outs.get(k, [])
        problem = None
        if state is None:
            problem = 'did not run (psql stopped: ' + ' '.join(errs.get(-1, [])[-3:]) + ')'
        elif want_state:
            if state != want_state:
                problem = f'expected ERROR {want_state}, got SQLSTATE {state}'
        elif state != '00000':
            problem = f'unexpected error {state}'
        if problem is None and want_rows is not None:
            if len(got) != len(want_rows) or not all(row_matches(w, g) for w, g in zip(want_rows, got)):
                problem = 'result differs:\n      expected: ' + ('\n                ' .join(want_rows) or '(no rows)') \
                          + '\n      got:      ' + ('\n                '.join(got) or '(no rows)')
        if problem:
            failed_blocks.add(bi)
            first = stmt.strip().split('\n')[0]
            print(f'  FAIL {path}:{lno}: {first[:100]}')
            print(f'      {problem}')
            for e in errs.get(k, [])[:6]:
                if 'ERROR' in e or 'DETAIL' in e or 'HINT' in e:
                    print(f'      | {e}')
    passed = len(runnable) - len(failed_blocks)
    print(f'RESULT {passed} {len(failed_blocks)} {skipped}')


if __name__ == '__main__':
    main()
