#!/usr/bin/env python3
"""The statements the DO blocks of migration files run, written as plain SQL that squawk can lint.

    scripts/squawk-do.py OUTDIR FILE...

squawk parses a DO block as one opaque statement, so it lints none of what the block runs. For
each FILE holding `DO $tag$ ... $tag$;` blocks this writes OUTDIR/<FILE's name>.do.sql with:
  - the file's top-level `SET` lines (the timeouts its blocks run under), and its first line when that
    is `-- no-transaction`;
  - every statement a block can run, in order: its static ALTER, CREATE, DROP, LOCK, UPDATE, INSERT,
    DELETE and COMMENT statements as written, and each `EXECUTE format(...)` expanded once for every
    value its loop runs over (a `FOR v IN SELECT * FROM (VALUES ...) AS t(a, b) LOOP`, or a
    `FOREACH v IN ARRAY ARRAY[...] LOOP`) or for a `constant` it names, `%I`, `%L` and `%s` filled as
    format() fills them; a variable read at run time (a column list from the catalog) stands for
    itself by its name, which leaves the statement's kind, what squawk's rules judge, as it runs.
An EXECUTE it cannot expand (a template that is not a literal, an argument that is an expression) is
said on stderr with the file and the exit status is 1: nothing a migration runs goes unlinted without saying so. Each statement is preceded by a
comment naming the source file and line.
"""

import os
import re
import sys

STATIC = re.compile(
    r"\b(ALTER\s+TABLE|CREATE\s+(?:UNIQUE\s+)?INDEX|CREATE\s+TABLE|DROP\s+(?:INDEX|TABLE)|LOCK\s+TABLE"
    r"|UPDATE\s+\w+|INSERT\s+INTO|DELETE\s+FROM|COMMENT\s+ON)\b",
    re.IGNORECASE,
)
DO_BLOCK = re.compile(r"\bDO\s+\$(\w*)\$(.*?)\$\1\$\s*;", re.DOTALL | re.IGNORECASE)


def mask(text):
    """The text with every '…' literal's content and every -- comment replaced by spaces (same
    length, so that positions match), so that keywords are found only in code."""
    out = list(text)
    i = 0
    while i < len(text):
        if text.startswith("--", i):
            j = text.find("\n", i)
            j = len(text) if j < 0 else j
            for k in range(i, j):
                out[k] = " "
            i = j
        elif text[i] == "'":
            j = i + 1
            while j < len(text):
                if text[j] == "'" and text[j + 1 : j + 2] == "'":
                    j += 2
                elif text[j] == "'":
                    break
                else:
                    j += 1
            for k in range(i + 1, j):
                out[k] = " "
            i = j + 1
        else:
            i += 1
    return "".join(out)


def split_top(text, sep=","):
    """`text` split at `sep` outside quotes and parentheses."""
    parts, depth, cur, i = [], 0, "", 0
    while i < len(text):
        ch = text[i]
        if ch == "'":
            j = i + 1
            while j < len(text):
                if text[j] == "'" and text[j + 1 : j + 2] == "'":
                    j += 2
                elif text[j] == "'":
                    break
                else:
                    j += 1
            cur += text[i : j + 1]
            i = j + 1
            continue
        if ch in "([":
            depth += 1
        elif ch in ")]":
            depth -= 1
        if ch == sep and depth == 0:
            parts.append(cur.strip())
            cur = ""
        else:
            cur += ch
        i += 1
    if cur.strip():
        parts.append(cur.strip())
    return parts


def unquote(literal):
    literal = literal.strip()
    if literal.startswith("'") and literal.endswith("'"):
        return literal[1:-1].replace("''", "'")
    return None


def quote_ident(name):
    return name if re.fullmatch(r"[a-z_][a-z0-9_$]*", name) else '"' + name.replace('"', '""') + '"'


def quote_literal(value):
    return "'" + value.replace("'", "''") + "'"


def fill(template, values):
    """format(template, values…) for %I, %L, %s and %%."""
    out, k, i = "", 0, 0
    while i < len(template):
        if template[i] == "%" and i + 1 < len(template):
            spec = template[i + 1]
            if spec == "%":
                out += "%"
            else:
                value = values[k]
                k += 1
                out += {"I": quote_ident, "L": quote_literal, "s": str}[spec](value)
            i += 2
        else:
            out += template[i]
            i += 1
    return out


def matching_paren(text, start):
    """The index of the `)` closing the `(` at `start`, quotes skipped."""
    depth, i = 0, start
    while i < len(text):
        ch = text[i]
        if ch == "'":
            j = i + 1
            while j < len(text):
                if text[j] == "'" and text[j + 1 : j + 2] == "'":
                    j += 2
                elif text[j] == "'":
                    break
                else:
                    j += 1
            i = j + 1
            continue
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
            if depth == 0:
                return i
        i += 1
    raise ValueError("unbalanced parentheses")


def block_statements(path, text, body, offset):
    """(line, statement) for each statement the block can run; problems said as (line, None, why)."""
    masked = mask(body)
    line_of = lambda pos: text.count("\n", 0, offset + pos) + 1  # noqa: E731
    constants = {
        m.group(1): unquote(m.group(2))
        for m in re.finditer(r"(\w+)\s+constant\s+text\s*:=\s*('(?:[^']|'')*')\s*;", body)
    }
    # Loops: variable -> list of rows (dict column -> value, or the value itself).
    loops = {}
    for m in re.finditer(
        r"\bFOR\s+(\w+)\s+IN\s+SELECT\s+\*\s+FROM\s+\(\s*VALUES\b", masked, re.IGNORECASE
    ):
        start = masked.find("(", m.start() + m.group(0).upper().find("FROM") + 4)
        end = matching_paren(body, start)
        inner = body[start + 1 : end].strip()[len("VALUES") :]
        after = re.match(r"\s*AS\s+\w+\s*\(([^)]*)\)", body[end + 1 :], re.IGNORECASE)
        columns = [c.strip() for c in after.group(1).split(",")] if after else []
        rows = []
        for row in split_top(inner):
            values = [unquote(v) for v in split_top(row.strip()[1:-1])]
            rows.append(dict(zip(columns, values)))
        loops[m.group(1)] = rows
    for m in re.finditer(r"\bFOREACH\s+(\w+)\s+IN\s+ARRAY\s+ARRAY\[", masked, re.IGNORECASE):
        start = m.end() - 1
        end = body.index("]", start)
        loops[m.group(1)] = [unquote(v) for v in split_top(body[start + 1 : end])]

    found = []
    for m in re.finditer(r"\bEXECUTE\s+format\s*\(", masked, re.IGNORECASE):
        open_at = m.end() - 1
        close_at = matching_paren(body, open_at)
        args = split_top(body[open_at + 1 : close_at])
        template = unquote(args[0])
        refs = args[1:]
        loop_vars = {r.split(".")[0] for r in refs if r.split(".")[0] in loops}
        if template is None or len(loop_vars) > 1:
            found.append((line_of(m.start()), None, "a format() this script cannot expand"))
            continue
        rows = loops[loop_vars.pop()] if loop_vars else [None]
        var = next((r.split(".")[0] for r in refs if r.split(".")[0] in loops), None)
        for row in rows:
            values = []
            for r in refs:
                head, _, field = r.partition(".")
                if head == var and isinstance(row, dict) and field in row:
                    values.append(row[field])
                elif head == var and not field and not isinstance(row, dict):
                    values.append(row)
                elif r in constants:
                    values.append(constants[r])
                elif re.fullmatch(r"\w+", r):
                    # A value read at run time (a column list from the catalog, a regclass): its
                    # name stands for it; the statement's kind, which the rules judge, is the same.
                    values.append(r)
                else:
                    values = None
                    break
            if values is None:
                found.append((line_of(m.start()), None, f"format() argument {r!r} is not a name"))
                break
            found.append((line_of(m.start()), fill(template, values) + ";", None))
    for m in STATIC.finditer(masked):
        # The statement runs to the next `;` outside quotes; EXECUTE's own text was handled above.
        before = masked[: m.start()].rstrip()
        if before.upper().endswith("EXECUTE") or before.endswith("("):
            continue
        end = masked.index(";", m.start())
        found.append((line_of(m.start()), body[m.start() : end + 1].strip(), None))
    return sorted(found, key=lambda f: f[0])


def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    outdir, files = sys.argv[1], sys.argv[2:]
    status = 0
    for path in files:
        with open(path, encoding="utf-8") as f:
            text = f.read()
        blocks = list(DO_BLOCK.finditer(text))
        if not blocks:
            continue
        name = os.path.basename(path)
        head = []
        if text.startswith("-- no-transaction\n"):
            head.append("-- no-transaction")
        head += [l for l in text.splitlines() if re.match(r"SET\s+(LOCAL\s+)?\w+", l, re.IGNORECASE)]
        lines = head + [f"-- the statements of the DO blocks of {name}, as they run"]
        for b in blocks:
            for line, statement, why in block_statements(path, text, b.group(2), b.start(2)):
                if statement is None:
                    print(f"squawk-do: {path}:{line}: {why}", file=sys.stderr)
                    status = 1
                else:
                    lines += [f"-- {name}:{line}", statement]
        with open(os.path.join(outdir, name + ".do.sql"), "w", encoding="utf-8") as out:
            out.write("\n".join(lines) + "\n")
    sys.exit(status)


if __name__ == "__main__":
    main()
