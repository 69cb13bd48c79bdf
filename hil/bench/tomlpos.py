"""Where each key of a TOML document is: a map from key paths to line numbers.

:mod:`tomllib` returns plain values without positions. To say on which line a bad
key is, this module scans the same text once more, without decoding values, and
records the line of every table header, array-of-tables element and key,
including dotted keys (``power.volts = 12``), keys inside inline tables
(``ignition = { board = "relays", channel = 1 }``) and elements of arrays.

Paths are tuples of keys and array indexes, as in the parsed document:
``("benches", "lab", "ecus", "bms", "request_id")`` or ``("items", 2, "name")``.
The scan expects text that :mod:`tomllib` accepted; on anything it does not
follow it keeps what it found so far rather than fail.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

TomlPath = tuple[str | int, ...]

_BARE = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-")
_SCALAR_END = frozenset(",]}\n#")


class _Stop(Exception):
    """The scanner met something it does not follow."""


class TomlPositions:
    """The line (1-based) of every key, table and array element of a TOML text."""

    def __init__(self, text: str) -> None:
        self._text = text
        self._pos = 0
        self._line = 1
        self._lines: dict[TomlPath, int] = {}
        self._explicit: set[TomlPath] = set()
        self._array_tables: dict[TomlPath, int] = {}
        try:
            self._document()
        except (_Stop, IndexError):
            pass  # keep the positions found so far

    def line_of(self, path: Sequence[str | int]) -> int | None:
        """Return the line of ``path``, or of its longest prefix that has one, or ``None``."""
        key = tuple(path)
        while key:
            line = self._lines.get(key)
            if line is not None:
                return line
            key = key[:-1]
        return None

    def exact_line(self, path: Sequence[str | int]) -> int | None:
        """Return the line of ``path`` itself, if the text has it."""
        return self._lines.get(tuple(path))

    # -- scanning ------------------------------------------------------------------

    def _peek(self, ahead: int = 0) -> str:
        index = self._pos + ahead
        return self._text[index] if index < len(self._text) else ""

    def _advance(self, count: int = 1) -> None:
        for _ in range(count):
            if self._pos < len(self._text):
                if self._text[self._pos] == "\n":
                    self._line += 1
                self._pos += 1

    def _record(self, path: TomlPath, line: int) -> None:
        # A table's own header or key wins over an earlier mention as a prefix.
        if path not in self._explicit:
            self._explicit.add(path)
            self._lines[path] = line
        for end in range(1, len(path)):
            self._lines.setdefault(path[:end], line)

    def _skip_blank(self, *, newlines: bool) -> None:
        """Skip spaces and comments (and newlines if ``newlines``)."""
        while self._pos < len(self._text):
            char = self._peek()
            if char in " \t\r" or (newlines and char == "\n"):
                self._advance()
            elif char == "#":
                while self._pos < len(self._text) and self._peek() != "\n":
                    self._advance()
            else:
                return

    def _document(self) -> None:
        current: TomlPath = ()
        while True:
            self._skip_blank(newlines=True)
            if self._pos >= len(self._text):
                return
            line = self._line
            if self._peek() == "[":
                current = self._header()
                self._record(current, line)
            else:
                keys = self._key()
                self._skip_blank(newlines=False)
                if self._peek() != "=":
                    raise _Stop
                self._advance()
                path = current + keys
                self._record(path, line)
                self._skip_blank(newlines=False)
                self._value(path)

    def _header(self) -> TomlPath:
        array = self._peek(1) == "["
        self._advance(2 if array else 1)
        self._skip_blank(newlines=False)
        keys = self._key()
        self._skip_blank(newlines=False)
        closing = "]]" if array else "]"
        if self._text[self._pos : self._pos + len(closing)] != closing:
            raise _Stop
        self._advance(len(closing))
        resolved: TomlPath = ()
        for index, key in enumerate(keys):
            resolved += (key,)
            last = index == len(keys) - 1
            if last and array:
                count = self._array_tables.get(resolved, 0)
                self._array_tables[resolved] = count + 1
                resolved += (count,)
            elif resolved in self._array_tables:
                # A sub-table of an array of tables belongs to its last element.
                resolved += (self._array_tables[resolved] - 1,)
        return resolved

    def _key(self) -> TomlPath:
        keys: list[str] = []
        while True:
            self._skip_blank(newlines=False)
            keys.append(self._simple_key())
            self._skip_blank(newlines=False)
            if self._peek() != ".":
                return tuple(keys)
            self._advance()

    def _simple_key(self) -> str:
        char = self._peek()
        if char in "\"'":
            start = self._pos
            self._string()
            raw = self._text[start : self._pos]
            if raw.startswith("'"):
                return raw[1:-1]
            try:
                decoded: str = json.loads(raw)
            except ValueError:
                decoded = raw[1:-1]
            return decoded
        start = self._pos
        while self._peek() in _BARE and self._peek():
            self._advance()
        if self._pos == start:
            raise _Stop
        return self._text[start : self._pos]

    def _string(self) -> None:
        """Skip a string of any of the four kinds."""
        quote = self._peek()
        triple = self._text[self._pos : self._pos + 3] == quote * 3
        if triple:
            self._advance(3)
            while self._pos < len(self._text):
                if quote == '"' and self._peek() == "\\":
                    self._advance(2)
                elif self._text[self._pos : self._pos + 3] == quote * 3:
                    # Up to two quotes may end the content right before the delimiter.
                    while self._peek(3) == quote:
                        self._advance()
                    self._advance(3)
                    return
                else:
                    self._advance()
            raise _Stop
        self._advance()
        while self._pos < len(self._text):
            char = self._peek()
            if quote == '"' and char == "\\":
                self._advance(2)
            elif char == quote:
                self._advance()
                return
            elif char == "\n":
                raise _Stop
            else:
                self._advance()
        raise _Stop

    def _value(self, path: TomlPath) -> None:
        char = self._peek()
        if char in "\"'":
            self._string()
        elif char == "{":
            self._inline_table(path)
        elif char == "[":
            self._array(path)
        else:
            while self._pos < len(self._text) and self._peek() not in _SCALAR_END:
                self._advance()

    def _inline_table(self, path: TomlPath) -> None:
        self._advance()  # {
        while True:
            self._skip_blank(newlines=True)
            if self._peek() == "}":
                self._advance()
                return
            line = self._line
            keys = self._key()
            self._skip_blank(newlines=False)
            if self._peek() != "=":
                raise _Stop
            self._advance()
            self._record(path + keys, line)
            self._skip_blank(newlines=False)
            self._value(path + keys)
            self._skip_blank(newlines=True)
            if self._peek() == ",":
                self._advance()
            elif self._peek() != "}":
                raise _Stop

    def _array(self, path: TomlPath) -> None:
        self._advance()  # [
        index = 0
        while True:
            self._skip_blank(newlines=True)
            if self._peek() == "]":
                self._advance()
                return
            self._record((*path, index), self._line)
            self._value((*path, index))
            index += 1
            self._skip_blank(newlines=True)
            if self._peek() == ",":
                self._advance()
            elif self._peek() != "]":
                raise _Stop
