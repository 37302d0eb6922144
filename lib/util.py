"""Small helpers shared by the core: timestamps and private files."""

from __future__ import annotations

import functools
import json
import os
import pathlib
import time
from json.encoder import c_make_encoder as _c_make_encoder  # None without the C accelerator
from json.encoder import encode_basestring as _c_encode_basestring
from typing import Callable


def iso_utc(ts: float) -> str:
    """UTC ISO-8601 with milliseconds and 'Z', the seed protocol's timestamp form."""
    return _iso_millisecond(int(ts * 1000))


# Every API answer and event carries a timestamp, and a busy node stamps many per millisecond:
# format each millisecond once, and the date and time (strftime: microseconds) once a second.
@functools.lru_cache(maxsize=64)
def _iso_millisecond(millis: int) -> str:
    return f"{_iso_second(millis // 1000)}.{millis % 1000:03d}Z"


@functools.lru_cache(maxsize=8)
def _iso_second(second: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))


def _wire_encoder() -> Callable[[object], str]:
    """The JSON encoder of answers and events: compact, UTF-8 text (no \\u escapes), no
    circular-reference check (answers and events are fresh trees built by our own code; a
    cycle raises RecursionError, caught like any unencodable value; the check costs ~15% of
    encoding a status answer).

    JSONEncoder.encode builds a new C encoder on every call; the C encoder itself is reusable,
    so build it once when the C accelerator is there (CPython: always)."""
    encoder = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), check_circular=False)
    if _c_make_encoder is None:
        return encoder.encode
    one_shot = _c_make_encoder(None, encoder.default, _c_encode_basestring, None, ":", ",",
                               False, False, True)
    return lambda value: "".join(one_shot(value, 0))


def encode_json(value: object) -> bytes:
    """Compact UTF-8 JSON, as the API answers and the events are sent.

    A lone surrogate (legal in JSON text: "\\ud800", so a client can send one) has no UTF-8
    form: it goes out as the same JSON escape. Raises TypeError, ValueError or RecursionError
    for what JSON cannot hold."""
    return _ENCODE(value).encode("utf-8", "backslashreplace")


_ENCODE = _wire_encoder()  # stateless: shared


def ensure_private_dir(path: pathlib.Path) -> pathlib.Path:
    """Create `path` (and parents) and make it 0700: it holds keys and the database."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(path, 0o700)
    return path


def write_private_file(path: pathlib.Path, data: bytes) -> None:
    """Atomically replace `path` with `data`, mode 0600 from the first byte on disk."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
