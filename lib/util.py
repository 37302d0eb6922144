"""Small generic helpers shared by the core, each defined once here: timestamps, the wire JSON
encoder, private files, boolean text, the (host, port) address type, bidi controls, a token
bucket. Pure Python, no project imports: every layer may use them."""

from __future__ import annotations

import functools
import json
import os
import ipaddress
import pathlib
import tempfile
import time
from json.encoder import c_make_encoder as _c_make_encoder  # None without the C accelerator
from json.encoder import encode_basestring as _c_encode_basestring
from typing import Callable, Iterator, Optional

# A UDP endpoint as the socket module gives it: (host, port).
Address = tuple[str, int]

# Bidirectional overrides, embeddings, isolates and marks (LRM, RLM, ALM): they make a name
# display as another one, so contact names and received file names refuse them alike.
BIDI_CONTROLS = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069\u200e\u200f\u061c")

_BOOL_TEXT = {"1": True, "true": True, "yes": True, "on": True,
              "0": False, "false": False, "no": False, "off": False}


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


def parse_bool(text: str) -> Optional[bool]:
    """True/False for true/false, yes/no, on/off, 1/0 (any case, surrounding blanks ignored);
    None for anything else, so each caller words its own error (conf file, API field)."""
    return _BOOL_TEXT.get(text.strip().lower())


def fsync_dir(path: pathlib.Path) -> None:
    """fsync a directory so a rename or link in it survives power loss; best effort (some file
    systems refuse to open or sync a directory)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_private_file(path: pathlib.Path, data: bytes, *, replace: bool = True) -> bool:
    """Atomically put `data` at `path`, mode 0600 from the first byte on disk (keys, tokens),
    synced to disk with its directory entry. The data goes to a unique temporary file in the
    same directory first, so a crash leaves the old file or the new one, never a mix.

    `replace=False` never replaces an existing file (two processes creating the same identity):
    the temporary file is linked into place, and False is returned when `path` already exists.
    Returns True when `path` now holds `data`."""
    path = pathlib.Path(path)
    fd, tmp = tempfile.mkstemp(prefix="." + path.name + ".", suffix=".tmp", dir=path.parent)  # 0600
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        if replace:
            os.replace(tmp, path)
        else:
            try:
                os.link(tmp, path)
            except FileExistsError:
                return False
            except OSError:  # no hard links on this file system: rename, unless it appeared
                if path.exists():
                    return False
                os.replace(tmp, path)
    finally:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
    fsync_dir(path.parent)
    return True


class TokenBucket:
    """A rate limit: `rate` tokens a second, at most `burst` saved up. Callers may change
    `rate` and `burst` between refills (pacing follows a measured rate). Pure: the caller
    passes the time."""

    __slots__ = ("rate", "burst", "tokens", "updated")

    def __init__(self, rate: float, burst: float, now: float, tokens: Optional[float] = None) -> None:
        self.rate = rate
        self.burst = burst
        self.tokens = burst if tokens is None else tokens  # full unless told
        self.updated = now

    def refill(self, now: float) -> None:
        """Add what accrued since the last refill, up to `burst`; a clock going back adds nothing."""
        self.tokens = min(self.burst, self.tokens + max(0.0, now - self.updated) * self.rate)
        self.updated = max(self.updated, now)

    def take(self, now: float, cost: float = 1.0) -> bool:
        """Spend `cost` tokens if there are enough (refilled up to `now`)."""
        self.refill(now)
        if self.tokens < cost:
            return False
        self.tokens -= cost
        return True

    def wait_for(self, cost: float) -> float:
        """Seconds until `cost` tokens are there at the current rate (0 if they are)."""
        return max(0.0, cost - self.tokens) / self.rate

    def idle_full(self, now: float) -> bool:
        """Would be full by `now`: forgetting it changes nothing."""
        return self.tokens + (now - self.updated) * self.rate >= self.burst


def is_loopback(host: str) -> bool:
    """An address of this machine only (127.0.0.0/8, ::1, localhost)."""
    try:
        return ipaddress.ip_address(host.split("%")[0]).is_loopback
    except ValueError:
        return host == "localhost"


def proc_tcp_rows() -> Iterator[list[str]]:
    """The rows of /proc/net/tcp and tcp6 (Linux), split into columns: local and remote
    address (hex ip:port), state (0A: listening), ..., uid (column 7), inode (column 9)."""
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table, encoding="ascii") as handle:
                next(handle, None)
                for line in handle:
                    yield line.split()
        except OSError:
            continue
