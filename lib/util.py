"""Small helpers shared by the core: timestamps and private files."""

from __future__ import annotations

import functools
import os
import pathlib
import time


def iso_utc(ts: float) -> str:
    """UTC ISO-8601 with milliseconds and 'Z', the seed protocol's timestamp form."""
    millis = int(ts * 1000)
    return f"{_iso_second(millis // 1000)}.{millis % 1000:03d}Z"


@functools.lru_cache(maxsize=8)
def _iso_second(second: int) -> str:
    """Every API answer carries a timestamp: format each second once (strftime costs a few
    microseconds, more than the rest of a small answer's envelope)."""
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))


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
