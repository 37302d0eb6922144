"""Small helpers shared by the core: timestamps and private files."""

from __future__ import annotations

import datetime
import os
import pathlib


def iso_utc(ts: float) -> str:
    """UTC ISO-8601 with milliseconds and 'Z', the seed protocol's timestamp form."""
    moment = datetime.datetime.fromtimestamp(ts, tz=datetime.timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


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
