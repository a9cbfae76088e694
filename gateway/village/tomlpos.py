"""Line numbers for TOML values, which `tomllib` does not give.

`tomllib` parses the file (and reports its own syntax errors with a line); this module scans the
same text once more, line by line, to learn on which line each key of each table was written:

    locate = KeyLines(text)
    locate.line(("person", 2, "cards"))   -> 31   (third [[person]] block, its `cards = ...` line)
    locate.line(("person", 2))            -> 27   (the `[[person]]` header of that block)

A path is table names, array-of-tables indexes and the key. When the exact key is not found (an
inline table, a value spread over lines) the nearest enclosing path that is known is used, so an
error always names a line, at worst the header of its block. The scanner understands the TOML
this project writes: `[a.b]` and `[[a.b]]` headers, `key = value` and dotted keys, comments, and
multi-line strings/arrays (skipped over, their key keeps the line where it starts).
"""

import re

_HEADER = re.compile(r"^\s*(\[\[?)\s*([^\]]+?)\s*(\]\]?)\s*(#.*)?$")
_KEY = re.compile(r"""^\s*((?:[A-Za-z0-9_-]+|"[^"]*"|'[^']*')(?:\s*\.\s*(?:[A-Za-z0-9_-]+|"[^"]*"|'[^']*'))*)\s*=""")


def _split_key(text):
    parts = []
    for raw in re.findall(r"""[A-Za-z0-9_-]+|"[^"]*"|'[^']*'""", text):
        parts.append(raw[1:-1] if raw[0] in "\"'" else raw)
    return tuple(parts)


class KeyLines:
    def __init__(self, text):
        self._lines = {}           # path tuple -> 1-based line
        self._aot_count = {}       # array-of-tables path -> blocks seen so far
        self._scan(text.splitlines())

    def _scan(self, lines):
        prefix = ()
        depth = 0                  # open brackets of a multi-line array / inline table
        in_string = None           # the delimiter of an open multi-line string
        for number, line in enumerate(lines, start=1):
            if in_string:
                if in_string in line:
                    in_string = None
                continue
            if depth:
                depth += _bracket_balance(line)
                continue
            header = _HEADER.match(line)
            if header and not _KEY.match(line):
                names = _split_key(header.group(2))
                if header.group(1) == "[[":
                    base = self._resolve(names)
                    index = self._aot_count.get(base, 0)
                    self._aot_count[base] = index + 1
                    prefix = base + (index,)
                else:
                    prefix = self._resolve(names)
                self._lines.setdefault(prefix, number)
                continue
            key = _KEY.match(line)
            if key:
                path = prefix + _split_key(key.group(1))
                self._lines.setdefault(path, number)
                rest = line[key.end():]
                for delim in ('"""', "'''"):
                    if rest.count(delim) == 1:
                        in_string = delim
                if not in_string:
                    depth = max(0, _bracket_balance(rest))

    def _resolve(self, names):
        """Map header names to a path, inserting the current index of enclosing arrays of tables."""
        path = ()
        for i, name in enumerate(names):
            path += (name,)
            if i < len(names) - 1 and path in self._aot_count:
                path += (self._aot_count[path] - 1,)
        return path

    def line(self, path):
        """The line of `path` or of its nearest known ancestor; None if nothing matches."""
        path = tuple(path)
        while path:
            if path in self._lines:
                return self._lines[path]
            path = path[:-1]
        return None


def _bracket_balance(text):
    """Open minus closed [ and { outside strings and comments (enough for our arrays)."""
    balance, quote = 0, None
    for ch in text:
        if quote:
            if ch == quote:
                quote = None
        elif ch in "\"'":
            quote = ch
        elif ch == "#":
            break
        elif ch in "[{":
            balance += 1
        elif ch in "]}":
            balance -= 1
    return balance
