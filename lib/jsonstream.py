"""Incremental splitter of a byte stream into top-level JSON objects (pure, no I/O).

The control API reads requests as a stream of JSON objects with or without newlines between
them (the Windows client writes bare objects back to back). Each byte is examined once:
the scanner keeps its state (depth, inside a string, escape) between feeds, so a 1 MiB
request arriving one byte at a time costs linear, not quadratic, time.
"""

from __future__ import annotations

import dataclasses
import re

BOM = b"\xef\xbb\xbf"
_WHITESPACE = b" \t\r\n"
_STRUCTURAL = re.compile(rb'[{}\[\]"]')
_IN_STRING = re.compile(rb'["\\]')


@dataclasses.dataclass(frozen=True)
class Item:
    """What the scanner found: a complete object, the start of junk, or an oversized object."""

    kind: str            # "object" | "junk" | "too_large"
    text: bytes = b""


class JsonStreamScanner:
    """Feed bytes, get complete top-level objects back, in order."""

    def __init__(self, max_object_bytes: int) -> None:
        self.max_object_bytes = max_object_bytes
        self._buf = bytearray()
        self._pos = 0          # next byte to examine
        self._start = -1       # start of the current object, -1 when between objects
        self._depth = 0
        self._in_string = False
        self._junk = False     # skipping to the next newline after something that is not '{'

    @property
    def in_object(self) -> bool:
        return self._start >= 0

    def feed(self, data: bytes) -> list[Item]:
        """Consume `data`; return the items completed by it."""
        self._buf += data
        items: list[Item] = []
        buf = self._buf
        while self._pos < len(buf):
            if self._junk:
                newline = buf.find(b"\n", self._pos)
                if newline < 0:
                    self._pos = len(buf)
                    break
                self._pos = newline + 1
                self._junk = False
                continue
            if self._start < 0:
                byte = buf[self._pos]
                if byte in _WHITESPACE:
                    self._pos += 1
                elif byte == 0xEF:
                    if len(buf) - self._pos < 3:
                        break  # wait for the rest of a possible BOM
                    if buf[self._pos:self._pos + 3] == BOM:
                        self._pos += 3
                    else:
                        self._junk = True
                        items.append(Item("junk"))
                elif byte == 0x7B:  # '{'
                    self._start = self._pos
                    self._depth = 1
                    self._pos += 1
                else:
                    self._junk = True
                    items.append(Item("junk"))
                continue
            if self._in_string:
                match = _IN_STRING.search(buf, self._pos)
                if match is None:
                    self._pos = len(buf)
                elif match.group() == b"\\":
                    if match.end() >= len(buf):
                        self._pos = match.start()
                        break  # the escaped byte has not arrived yet
                    self._pos = match.end() + 1
                else:
                    self._in_string = False
                    self._pos = match.end()
            else:
                match = _STRUCTURAL.search(buf, self._pos)
                if match is None:
                    self._pos = len(buf)
                else:
                    char = match.group()
                    self._pos = match.end()
                    if char == b'"':
                        self._in_string = True
                    elif char in (b"{", b"["):
                        self._depth += 1
                    else:
                        self._depth -= 1
                        if self._depth == 0:
                            items.append(Item("object", bytes(buf[self._start:self._pos])))
                            self._start = -1
            if self._start >= 0 and self._pos - self._start > self.max_object_bytes:
                items.append(Item("too_large"))
                self._reset()
                return items
        self._compact()
        if self._start >= 0 and len(self._buf) - self._start > self.max_object_bytes:
            items.append(Item("too_large"))
            self._reset()
        return items

    def _compact(self) -> None:
        """Drop consumed bytes so the buffer holds at most the object in progress."""
        keep_from = self._start if self._start >= 0 else self._pos
        if keep_from > 0:
            del self._buf[:keep_from]
            self._pos -= keep_from
            if self._start >= 0:
                self._start = 0

    def _reset(self) -> None:
        self._buf = bytearray()
        self._pos = 0
        self._start = -1
        self._depth = 0
        self._in_string = False
        self._junk = False
