"""One process per data dir: an exclusive advisory lock on DATA_DIR/lock holding our pid."""

from __future__ import annotations

import fcntl
import os
import pathlib

from .errors import Busy


class DataDirLocked(Busy, RuntimeError):
    """Another live process holds the data dir."""


class DataDirLock:
    """flock-based, so a crashed (kill -9) holder never leaves a stale lock behind."""

    def __init__(self, data_dir: pathlib.Path) -> None:
        self.path = data_dir / "lock"
        self._fd: int | None = None

    def acquire(self) -> None:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise DataDirLocked(f"data dir {self.path.parent} is in use by another chatp2p process "
                                f"(pid {holder})") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
