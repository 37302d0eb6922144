"""Small helpers shared by the core: timestamps and private files."""

from __future__ import annotations

import os
import pathlib
import time


def iso_utc(ts: float) -> str:
    """UTC ISO-8601 with milliseconds and 'Z', the seed protocol's timestamp form."""
    millis = int(ts * 1000)  # every answer carries one: time.gmtime is 5x cheaper than datetime
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(millis // 1000)) + f".{millis % 1000:03d}Z"


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
