"""Field checks and parsers the byte codecs share, defined once (pure, no I/O).

Each codec raises its own error type (WireError, CryptoError, IdentityError...), so these
helpers take the class to raise: a caller's `except` clauses stay as they are."""

from __future__ import annotations

import struct
from typing import Optional

_U16 = struct.Struct(">H")

BytesLike = (bytes, bytearray, memoryview)


def check_bytes(value: object, what: str, error: type[Exception], size: Optional[int] = None) -> bytes:
    """`value` as bytes (bytes, bytearray or memoryview), exactly `size` long when given;
    otherwise `error` naming `what`. A bytes value comes back as is, without a copy."""
    if not isinstance(value, BytesLike):
        raise error(f"{what} must be bytes, not {type(value).__name__}")
    data = bytes(value)
    if size is not None and len(data) != size:
        raise error(f"{what} must be {size} bytes, got {len(data)}")
    return data


def encode_prefixed(data: bytes) -> bytes:
    """`data` behind its u16 big-endian length (at most 65535 bytes: struct.error beyond)."""
    return _U16.pack(len(data)) + data


def read_prefixed(data: bytes, pos: int, error: type[Exception], truncated: str) -> tuple[bytes, int]:
    """(field, position after it) of the u16-length-prefixed field at `pos`; `error(truncated)`
    when the length or the field runs past the end of `data`."""
    end = pos + _U16.size
    if end > len(data):
        raise error(truncated)
    (size,) = _U16.unpack_from(data, pos)
    if end + size > len(data):
        raise error(truncated)
    return data[end : end + size], end + size


def decode_utf8(raw: bytes, what: str, error: type[Exception]) -> str:
    """`raw` as UTF-8 text; `error` naming `what` when it is not UTF-8."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise error(f"{what} is not valid UTF-8") from None
