"""Where log lines go: a private file that rotates itself, or stderr without doubled
timestamps when stderr is the systemd journal.

Why rotate in the process: the app log lives in the user's own directories, where no logrotate
runs, and used to grow forever. Each file is created 0600 (the log names contacts and
addresses). Under journald, which stamps every line itself, our own timestamp would show twice.
"""

from __future__ import annotations

import logging
import logging.handlers
import os
from typing import IO, Mapping

MAX_BYTES = 5 * 1024 * 1024   # per file; with BACKUPS, at most 20 MiB of logs
BACKUPS = 3
FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
JOURNAL_FORMAT = "%(levelname)s %(name)s: %(message)s"


class PrivateRotatingFileHandler(logging.handlers.RotatingFileHandler):
    """RotatingFileHandler whose every file, the current one and each new one, is mode 0600."""

    def __init__(self, path: str, max_bytes: int = MAX_BYTES, backups: int = BACKUPS) -> None:
        super().__init__(path, maxBytes=max_bytes, backupCount=backups, encoding="utf-8", delay=False)

    def _open(self) -> IO[str]:  # type: ignore[override]
        fd = os.open(self.baseFilename, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        os.fchmod(fd, 0o600)   # a file left by an older version may be wider
        return os.fdopen(fd, "a", encoding="utf-8")


def stderr_is_journal(stream: IO[str], environ: Mapping[str, str]) -> bool:
    """systemd sets JOURNAL_STREAM=DEVICE:INODE of the journal's socket on a service's stderr."""
    device, _, inode = environ.get("JOURNAL_STREAM", "").partition(":")
    if not (device.isdigit() and inode.isdigit()):
        return False
    try:
        info = os.fstat(stream.fileno())
    except (OSError, ValueError):
        return False
    return (info.st_dev, info.st_ino) == (int(device), int(inode))


def log_format(stream: IO[str], environ: Mapping[str, str]) -> str:
    """The line format for stderr: without a timestamp when journald adds its own."""
    return JOURNAL_FORMAT if stderr_is_journal(stream, environ) else FORMAT
