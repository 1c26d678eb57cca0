#!/usr/bin/env python3
"""Holds services/ to its size limits (#21): no source file above 500 lines outside its tests,
no function above 80 lines.

A file's size is counted up to its `#[cfg(test)]` module (the tests that live beside the code);
files under a crate's tests/ are not counted. A function is measured from its `fn` line to its
closing brace, found by matching braces outside strings, characters and comments.

Usage: scripts/check-limits.py [--files N] [--functions N] [ROOT ...]   (default: services)
Exits 1 and names each offender when a limit is passed.
"""

import argparse
import pathlib
import re
import sys

FN = re.compile(r"^\s*(pub(\([^)]*\))?\s+)?((const|async|unsafe|extern\s+\"[^\"]*\")\s+)*fn\s+(\w+)")


def code_only(text):
    """The text with strings, characters and comments blanked out (newlines kept), so braces
    inside them are not counted."""
    out, i, n = [], 0, len(text)
    while i < n:
        c = text[i]
        if text.startswith("//", i):
            j = text.find("\n", i)
            j = n if j < 0 else j
            out.append(" " * (j - i))
            i = j
        elif text.startswith("/*", i):
            j = text.find("*/", i + 2)
            j = n if j < 0 else j + 2
            out.append(re.sub(r"[^\n]", " ", text[i:j]))
            i = j
        elif c == "r" and re.match(r'r(#*)"', text[i:i + 10]) and (i == 0 or not text[i - 1].isalnum()):
            hashes = re.match(r'r(#*)"', text[i:]).group(1)
            end = '"' + hashes
            j = text.find(end, i + 2 + len(hashes))
            j = n if j < 0 else j + len(end)
            out.append(re.sub(r"[^\n]", " ", text[i:j]))
            i = j
        elif c == '"':
            j = i + 1
            while j < n and text[j] != '"':
                j += 2 if text[j] == "\\" else 1
            j += 1
            out.append(re.sub(r"[^\n]", " ", text[i:j]))
            i = j
        elif c == "'":
            # A character literal ('x', '\n', '\u{..}') or a lifetime ('a): only the former is blanked.
            m = re.match(r"'(\\.|\\u\{[0-9a-fA-F]+\}|[^\\'])'", text[i:i + 12])
            if m:
                out.append(" " * len(m.group(0)))
                i += len(m.group(0))
            else:
                out.append(c)
                i += 1
        else:
            out.append(c)
            i += 1
    return "".join(out)


def test_module_start(lines):
    for i, line in enumerate(lines):
        if line.strip() == "#[cfg(test)]" and i + 1 < len(lines) and re.match(r"\s*mod \w+", lines[i + 1]):
            return i
    return len(lines)


def long_functions(lines, limit):
    """(name, first line, length) of each function longer than `limit` lines."""
    found = []
    for i, line in enumerate(lines):
        m = FN.match(line)
        if not m:
            continue
        depth, opened = 0, False
        for j in range(i, len(lines)):
            if not opened and ";" in lines[j] and "{" not in lines[j]:
                break  # a declaration without a body (trait method, extern)
            for ch in lines[j]:
                if ch == "{":
                    depth += 1
                    opened = True
                elif ch == "}":
                    depth -= 1
            if opened and depth == 0:
                length = j - i + 1
                if length > limit:
                    found.append((m.group(5), i + 1, length))
                break
    return found


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=500)
    parser.add_argument("--functions", type=int, default=80)
    parser.add_argument("roots", nargs="*", default=["services"])
    args = parser.parse_args()
    failures = []
    checked = 0
    for root in args.roots:
        for path in sorted(pathlib.Path(root).rglob("*.rs")):
            parts = path.parts
            if "tests" in parts or "target" in parts or "fuzz" in parts:
                continue
            checked += 1
            lines = code_only(path.read_text()).split("\n")
            code_lines = test_module_start(lines)
            if code_lines > args.files:
                failures.append(f"{path}: {code_lines} lines outside tests (limit {args.files})")
            for name, line, length in long_functions(lines, args.functions):
                failures.append(f"{path}:{line}: fn {name} is {length} lines (limit {args.functions})")
    for failure in failures:
        print(failure)
    print(f"check-limits: {checked} files, {len(failures)} over the limits "
          f"({args.files} lines a file, {args.functions} a function)")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
