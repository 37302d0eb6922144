"""Incremental decoder of a byte stream of top-level JSON objects (pure, no I/O).

The control API reads requests as a stream of JSON objects with or without newlines between
them (the Windows client writes bare objects back to back). Two ways through a request:

- fast: at the start of an object, when a newline has arrived, the line is handed to the C
  JSON parser whole; a line that is exactly one object (what almost every client sends) costs
  one parse and nothing else;
- incremental: otherwise each byte is examined once, the scanner keeping its state (depth,
  inside a string, escape) between feeds, so a 1 MiB request arriving one byte at a time
  costs linear, not quadratic, time.

A failed fast attempt stops at the parser's first error, which lies inside the first object
of the line, so it costs no more than the incremental scan that then covers that object.
"""

from __future__ import annotations

import json
import re
from typing import Any, NamedTuple

BOM = b"\xef\xbb\xbf"
_DECODER = json.JSONDecoder()  # stateless: shared
_WHITESPACE = b" \t\r\n"
_STRUCTURAL = re.compile(rb'[{}\[\]"]')
_IN_STRING = re.compile(rb'["\\]')


class Item(NamedTuple):
    """What the scanner found: a decoded object, a balanced `{...}` that is not valid JSON,
    the start of junk, or an oversized object. A tuple: one is built per request."""

    kind: str            # "object" | "invalid" | "junk" | "too_large"
    value: Any = None    # the decoded object (a dict) for "object"
    error: str = ""      # why the text is not JSON, for "invalid"


def decode_object(text: bytes | bytearray) -> Item:
    """The Item for one balanced `{...}`: the object, or why it is not valid JSON (requests
    are UTF-8, RFC 8259 §8.1)."""
    try:
        return Item("object", _DECODER.decode(text.decode()))
    except RecursionError:
        return Item("invalid", error="nested too deeply")
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError
        return Item("invalid", error=str(exc).splitlines()[0][:200])


class JsonStreamScanner:
    """Feed bytes, get complete top-level objects back, decoded, in order."""

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
                    fast = self._whole_line(buf)
                    if fast is not None:
                        items.append(fast)
                        continue
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
                            items.append(decode_object(buf[self._start:self._pos]))
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

    def _whole_line(self, buf: bytearray) -> Item | None:
        """The fast way: the object starting at `_pos` if it is the whole rest of its line
        (then `_pos` moves past the newline), else None and nothing changes."""
        newline = buf.find(b"\n", self._pos)
        if newline < 0 or newline - self._pos > self.max_object_bytes:
            return None
        try:
            # raw_decode on text: json.loads on bytes spends longer guessing the encoding
            # than parsing a small request.
            line = buf[self._pos:newline].decode()
            value, end = _DECODER.raw_decode(line)
        except (ValueError, RecursionError):
            return None  # an object across lines, bad JSON or bad UTF-8: the careful way
        if end != len(line) and line[end:].strip(" \t\r"):
            return None  # more than one object on the line
        self._pos = newline + 1
        return Item("object", value)

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
