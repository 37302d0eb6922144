"""Column checks and conversions that more than one repository needs."""
from __future__ import annotations

from ..util import iso_utc
from .errors import InvalidValueError

FINGERPRINT_SIZE = 32


def check_fingerprint(fp: bytes) -> bytes:
    """Check a fingerprint's size so a truncated key never matches or gets stored."""
    fp = bytes(fp)
    if len(fp) != FINGERPRINT_SIZE:
        raise InvalidValueError(f"A key fingerprint is {FINGERPRINT_SIZE} bytes, not {len(fp)}")
    return fp


def iso_or_none(ts: float | None) -> str | None:
    """A timestamp column as ISO-8601 UTC for JSON views; NULL stays None."""
    return None if ts is None else iso_utc(ts)
