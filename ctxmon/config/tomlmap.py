"""Where keys and tables are in a TOML file's text, for error messages that name the
line (tomllib gives values only). Locations are tuples of keys and array indexes."""

from __future__ import annotations

import json
import re

from .schema import MAX_NESTING



_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")
_BASIC_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')
# The rest of a multi-line string up to its closing quotes, if on this line.
_BASIC_ML_END = re.compile(r'(?:[^"\\]|\\.|"(?!""))*"""')
_LITERAL_ML_END = re.compile(r".*?'''")


def _scan_key(line: str, pos: int) -> tuple[tuple[str, ...], int] | None:
    """A (dotted) TOML key starting at `pos` → (parts, end), or None."""
    parts: list[str] = []
    n = len(line)
    while True:
        while pos < n and line[pos] in " \t":
            pos += 1
        if pos >= n:
            return None
        ch = line[pos]
        if ch == '"':
            m = _BASIC_STRING.match(line, pos)
            if not m:
                return None
            try:
                parts.append(json.loads(m.group(0)))
            except ValueError:
                parts.append(m.group(0)[1:-1])
            pos = m.end()
        elif ch == "'":
            end = line.find("'", pos + 1)
            if end < 0:
                return None
            parts.append(line[pos + 1:end])
            pos = end + 1
        else:
            m = _BARE_KEY.match(line, pos)
            if not m:
                return None
            parts.append(m.group(0))
            pos = m.end()
        while pos < n and line[pos] in " \t":
            pos += 1
        if pos < n and line[pos] == ".":
            pos += 1
            continue
        return tuple(parts), pos


class _LineIndex:
    """Where keys and tables are in the file text, for error messages.

    Locations are tuples of keys and array indexes: ("collector", "rule", 1, "regex")
    is the `regex` of the second `[[collector.rule]]`. Only the file's own structure
    is recorded: a key inside an inline table or a multi-line value falls back to the
    nearest enclosing thing that has a line.
    """

    def __init__(self, text: str):
        self.lines: dict[tuple, int] = {}
        self._array_counts: dict[tuple, int] = {}
        self.too_deep: int | None = None  # the first line nesting past MAX_NESTING
        self._scan(text)

    def _record(self, loc: tuple, lineno: int) -> None:
        self.lines.setdefault(loc, lineno)

    def _scan(self, text: str) -> None:
        section: tuple = ()
        depth = 0  # open [ and { of a value spanning lines
        in_string: str | None = None  # the closing quotes of a multi-line string
        for lineno, line in enumerate(text.splitlines(), start=1):
            pos = 0
            if in_string is None and depth == 0:
                stripped = line.lstrip()
                if stripped.startswith("[["):
                    parsed = _scan_key(line, line.index("[[") + 2)
                    if parsed and line[parsed[1]:].startswith("]]"):
                        path = parsed[0]
                        index = self._array_counts.get(path, 0)
                        self._array_counts[path] = index + 1
                        section = path + (index,)
                        self._record(path, lineno)
                        self._record(section, lineno)
                        continue
                elif stripped.startswith("["):
                    parsed = _scan_key(line, line.index("[") + 1)
                    if parsed and line[parsed[1]:].startswith("]"):
                        section = self._resolve(parsed[0])
                        self._record(section, lineno)
                        continue
                else:
                    parsed = _scan_key(line, 0)
                    if parsed and line[parsed[1]:].startswith("="):
                        keys, end = parsed
                        for i in range(1, len(keys) + 1):
                            self._record(section + keys[:i], lineno)
                        pos = end + 1
            depth, in_string, peak = self._scan_value(line, pos, depth, in_string)
            if peak > MAX_NESTING and self.too_deep is None:
                self.too_deep = lineno

    def _resolve(self, path: tuple[str, ...]) -> tuple:
        """`[a.b]` after `[[a]]` is a table in a's latest array element."""
        out: tuple = ()
        for part in path:
            out += (part,)
            if out in self._array_counts:
                out += (self._array_counts[out] - 1,)
        return out

    @staticmethod
    def _scan_value(line: str, pos: int, depth: int, in_string: str | None):
        """Carry bracket depth and multi-line string state past one line."""
        n = len(line)
        peak = depth
        while pos < n:
            if in_string is not None:
                m = (_BASIC_ML_END if in_string == '"""' else _LITERAL_ML_END).match(line, pos)
                if not m:
                    return depth, in_string, peak
                pos = m.end()
                in_string = None
                continue
            ch = line[pos]
            if ch == "#":
                break
            if line.startswith('"""', pos) or line.startswith("'''", pos):
                in_string = line[pos:pos + 3]
                pos += 3
                continue
            if ch == '"':
                m = _BASIC_STRING.match(line, pos)
                pos = m.end() if m else n
                continue
            if ch == "'":
                end = line.find("'", pos + 1)
                pos = end + 1 if end >= 0 else n
                continue
            if ch in "[{":
                depth += 1
                peak = max(peak, depth)
            elif ch in "]}":
                depth = max(0, depth - 1)
            pos += 1
        return depth, in_string, peak

    def line_of(self, loc: tuple) -> int | None:
        for n in range(len(loc), 0, -1):
            line = self.lines.get(loc[:n])
            if line is not None:
                return line
        return None


def _describe(loc: tuple) -> str:
    """("collector", "interval") → "[collector] interval";
    ("collector", "rule", 1, "regex") → "[[collector.rule]] #2 regex"."""
    table: list[str] = []
    rest = list(loc)
    while rest and isinstance(rest[0], str) and len(rest) > 1:
        table.append(rest.pop(0))
        if rest and isinstance(rest[0], int):
            index = rest.pop(0)
            head = f"[[{'.'.join(table)}]] #{index + 1}"
            return head + (" " + ".".join(map(str, rest)) if rest else "")
    if not table:
        return ".".join(map(str, rest))
    return f"[{'.'.join(table)}]" + (" " + ".".join(map(str, rest)) if rest else "")
