"""The file-transfer protocol's pure parts: FILE records, byte-range sets, safe file names.

No I/O and no module-level mutable state. Records travel inside DATA frames as record types
0x20-0x3F (docs/PROTOCOL.md §10); here each one is a small frozen dataclass with `encode()`
(the record body) and a `decode_file_record(RawRecord)` that raises `wire.WireError` on
anything malformed, so the I/O layer can count and drop hostile input with one `except`.
"""

from __future__ import annotations

import bisect
import dataclasses
import enum
import hashlib
import struct
import unicodedata
from typing import Iterable, Iterator, Optional, Sequence, Union

from ..errors import Invalid
from . import wire
from .fields import decode_utf8
from .wire import RawRecord, WireError
from .fields import check_bytes
from ..util import BIDI_CONTROLS

TID_LEN = 16                       # wire id of a transfer: SHA-256(transfer_id text)[0:16]
TAG_LEN = 16                       # source tag: identifies one version of the source file
SHA256_LEN = 32
MAX_TRANSFER_ID_CHARS = 128
MAX_NAME_BYTES = 255               # UTF-8 bytes of an offered file name (common file system limit)
MAX_REASON_BYTES = 255
MIN_CHUNK = 4 * 1024               # chunk = unit of acknowledgement to the user and of resume
MAX_CHUNK = 4 * 1024 * 1024
DEFAULT_CHUNK = 1024 * 1024
MAX_FILE_SIZE = 1 << 44            # 16 TiB: also keeps chunk indexes within u32 at MIN_CHUNK
MAX_ACCEPT_RANGES = 128            # chunk ranges in one ANSWER (more: the sender resends some)
MAX_ACK_RANGES = 64                # packet-number ranges in one FILE_ACK


class FileRecordType(enum.IntEnum):
    """Record types of the file protocol (inside the 0x20-0x3F block reserved for it)."""

    OFFER = 0x20      # sender -> receiver: a file, its size, chunk size and source tag
    ANSWER = 0x21     # receiver -> sender: pending / accept (+ chunks held) / reject / ...
    DATA = 0x22       # sender -> receiver: bytes at an offset, with a packet number
    ACK = 0x23        # receiver -> sender: packet numbers received (selective, ranges)
    END = 0x24        # sender -> receiver: size and SHA-256 of the whole file
    HALT = 0x25       # sender -> receiver: the sender paused, cancelled or failed
    PROBE = 0x26      # either way: path MTU probe, padded to the size probed
    PROBE_ACK = 0x27  # answer to a PROBE: that size got through


FILE_TYPES = frozenset(int(t) for t in FileRecordType)


class Answer(enum.IntEnum):
    """ANSWER codes: the receiver's state of a transfer."""

    PENDING = 0     # offer stored, the user has not decided yet
    ACCEPT = 1      # send what is missing (chunk ranges held follow)
    REJECT = 2      # the user said no
    PAUSED = 3      # the receiver paused: stop sending until ACCEPT
    COMPLETE = 4    # received and verified (SHA-256 matched)
    FAILED = 5      # refused or failed: reason follows
    CANCELLED = 6   # the receiver's user cancelled


class Halt(enum.IntEnum):
    """HALT codes: why the sender stopped."""

    PAUSED = 1
    CANCELLED = 2
    FAILED = 3


def transfer_wire_id(transfer_id: str) -> bytes:
    """The 16-byte id FILE records carry for a transfer_id text (a hash: any text id fits)."""
    return hashlib.sha256(b"chatp2p v1 transfer\0" + transfer_id.encode("utf-8")).digest()[:TID_LEN]


def source_tag(size: int, mtime_ns: int, first_chunk_sha256: bytes) -> bytes:
    """Identifies one version of a source file: a change of size, mtime or first chunk shows."""
    return hashlib.sha256(struct.pack(">QQ", size, mtime_ns & (2**64 - 1)) + first_chunk_sha256).digest()[:TAG_LEN]


def _u(value: object, bits: int, what: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < (1 << bits):
        raise WireError(f"{what} out of range: {value!r}")
    return value


def _text(value: str, limit: int, what: str) -> bytes:
    raw = value.encode("utf-8")
    if len(raw) > limit:
        raise WireError(f"{what} is longer than {limit} UTF-8 bytes")
    return raw


def _utf8(raw: bytes, what: str) -> str:
    return decode_utf8(raw, what, WireError)


class _Reader:
    """Sequential reads from a record body; every overrun is a WireError."""

    def __init__(self, body: bytes, what: str) -> None:
        self.body = body
        self.pos = 0
        self.what = what

    def take(self, size: int) -> bytes:
        if self.pos + size > len(self.body):
            raise WireError(f"{self.what} truncated")
        chunk = self.body[self.pos:self.pos + size]
        self.pos += size
        return chunk

    def unpack(self, fmt: struct.Struct) -> tuple:
        return fmt.unpack(self.take(fmt.size))

    def end(self) -> None:
        if self.pos != len(self.body):
            raise WireError(f"{self.what} has {len(self.body) - self.pos} trailing bytes")


_OFFER = struct.Struct(">16sQI16sB")
_ANSWER = struct.Struct(">16sB")
_DATA = struct.Struct(">16sQQ")
_DATA_RECORD = struct.Struct(">BH16sQQ")  # record header (type, length) + DATA header
DATA_HEADER_LEN = _DATA.size      # 32
_END = struct.Struct(">16sQ32s")
_HALT = struct.Struct(">16sB")
_PROBE = struct.Struct(">II")
_RANGE32 = struct.Struct(">II")
_RANGE64 = struct.Struct(">QQ")


@dataclasses.dataclass(frozen=True)
class Offer:
    tid: bytes
    size: int
    chunk_size: int
    tag: bytes
    transfer_id: str
    name: str

    def encode(self) -> bytes:
        tid_text = _text(self.transfer_id, 255, "transfer id")
        name = _text(self.name, 0xFFFF, "file name")
        return (_OFFER.pack(check_bytes(self.tid, "tid", WireError, TID_LEN), _u(self.size, 64, "size"),
                            _u(self.chunk_size, 32, "chunk size"), check_bytes(self.tag, "tag", WireError, TAG_LEN),
                            len(tid_text))
                + tid_text + struct.pack(">H", len(name)) + name)

    @staticmethod
    def decode(body: bytes) -> "Offer":
        r = _Reader(body, "OFFER")
        tid, size, chunk, tag, id_len = r.unpack(_OFFER)
        transfer_id = _utf8(r.take(id_len), "transfer id")
        (name_len,) = struct.unpack(">H", r.take(2))
        name = _utf8(r.take(name_len), "file name")
        r.end()
        return Offer(tid, size, chunk, tag, transfer_id, name)


@dataclasses.dataclass(frozen=True)
class AnswerRecord:
    """ACCEPT carries the chunk ranges (first, last inclusive) the receiver already holds;
    REJECT and FAILED a reason."""

    tid: bytes
    code: Answer
    have: tuple[tuple[int, int], ...] = ()
    reason: str = ""

    def encode(self) -> bytes:
        head = _ANSWER.pack(check_bytes(self.tid, "tid", WireError, TID_LEN), int(self.code))
        if self.code == Answer.ACCEPT:
            if len(self.have) > MAX_ACCEPT_RANGES:
                raise WireError(f"an ANSWER holds at most {MAX_ACCEPT_RANGES} ranges")
            parts = [struct.pack(">H", len(self.have))]
            for first, last in self.have:
                if _u(first, 32, "chunk") > _u(last, 32, "chunk"):
                    raise WireError("reversed chunk range")
                parts.append(_RANGE32.pack(first, last))
            return head + b"".join(parts)
        if self.code in (Answer.REJECT, Answer.FAILED):
            reason = _text(self.reason, MAX_REASON_BYTES, "reason")
            return head + bytes([len(reason)]) + reason
        return head

    @staticmethod
    def decode(body: bytes) -> "AnswerRecord":
        r = _Reader(body, "ANSWER")
        tid, code = r.unpack(_ANSWER)
        try:
            answer = Answer(code)
        except ValueError:
            raise WireError(f"unknown ANSWER code {code}") from None
        have: tuple[tuple[int, int], ...] = ()
        reason = ""
        if answer == Answer.ACCEPT:
            (count,) = struct.unpack(">H", r.take(2))
            if count > MAX_ACCEPT_RANGES:
                raise WireError("too many chunk ranges in ANSWER")
            have = tuple(r.unpack(_RANGE32) for _ in range(count))
            if any(first > last for first, last in have):
                raise WireError("reversed chunk range")
        elif answer in (Answer.REJECT, Answer.FAILED):
            reason = _utf8(r.take(r.take(1)[0]), "reason")
        r.end()
        return AnswerRecord(tid, answer, have, reason)


@dataclasses.dataclass(frozen=True)
class Data:
    """Bytes [offset, offset + len(data)) of the file; `pn` is the link's packet number."""

    tid: bytes
    pn: int
    offset: int
    data: Union[bytes, memoryview]

    def encode(self) -> bytes:
        return _DATA.pack(self.tid, self.pn, self.offset) + bytes(self.data)

    @staticmethod
    def decode(body: bytes) -> "Data":
        return Data(*decode_data(body))


def decode_data(body: Union[bytes, memoryview]) -> tuple[bytes, int, int, memoryview]:
    """(tid, pn, offset, file bytes) of a DATA record body, without building a `Data`: the
    receiver's hot path handles a batch of them as plain tuples."""
    if len(body) < DATA_HEADER_LEN:
        raise WireError("DATA truncated")
    tid, pn, offset = _DATA.unpack_from(body)
    return tid, pn, offset, (body if type(body) is memoryview else memoryview(body))[DATA_HEADER_LEN:]


DataRun = tuple[bytes, int, int, list, list]  # tid, start, end, file bytes of each record, packet numbers


def decode_data_runs(encoded: Sequence[bytes]) -> list[DataRun]:
    """DATA records still encoded, record header included (as `wire.frame_records` leaves the
    record of every DATA datagram), in the order they came, as runs of consecutive bytes of one
    transfer: (tid, start, end, the file bytes of each record, their packet numbers). One pass
    and one unpack per record (both headers): the receiver's hot path, where a tuple per record
    and a second pass to find the runs cost a twentieth of its time. WireError if one is not a
    whole DATA record.

    The file bytes of a datagram-sized record are a copy (cheaper to make and to free than a
    view: a view is three objects), of a large one (64 KiB on loopback) a view."""
    runs: list[list] = []
    unpack, header_len, data_type, record_header_len = (
        _DATA_RECORD.unpack_from, _DATA_RECORD.size, _DATA_TYPE, wire.RECORD_HEADER_LEN)
    tid, end = None, -1
    pieces: list = []
    pns: list[int] = []
    for record in encoded:
        if len(record) < header_len:
            raise WireError("DATA truncated")
        rtype, length, record_tid, pn, offset = unpack(record)
        if rtype != data_type or record_header_len + length != len(record):
            raise WireError("not one whole DATA record")
        piece = record[header_len:] if length <= _COPY_UP_TO else memoryview(record)[header_len:]
        if offset != end or record_tid != tid:
            if runs:
                runs[-1][2] = end
            tid, pieces, pns = record_tid, [], []
            runs.append([tid, offset, offset, pieces, pns])
        pieces.append(piece)
        pns.append(pn)
        end = offset + length - DATA_HEADER_LEN
    if runs:
        runs[-1][2] = end
    return [tuple(run) for run in runs]  # type: ignore[misc]


_COPY_UP_TO = 9000  # bytes: a jumbo frame's record is still copied


def as_raw_record(item: Union[RawRecord, bytes]) -> RawRecord:
    """A received file record as a RawRecord, whether it came decoded or still encoded
    (`wire.frame_records` leaves a record alone in its frame encoded)."""
    if type(item) is bytes:
        return RawRecord(item[0], item[wire.RECORD_HEADER_LEN:])
    return item  # type: ignore[return-value]


_DATA_TYPE = int(FileRecordType.DATA)  # packed for every datagram of a file: a plain int (an
                                      # IntEnum costs struct a conversion each time)


def data_record_header(tid: bytes, pn: int, offset: int, length: int) -> bytes:
    """Record header (type, length) + DATA header: what precedes `length` bytes of file data.
    Lets the hot path build a datagram's plaintext with one join and no intermediate objects."""
    return _DATA_RECORD.pack(_DATA_TYPE, DATA_HEADER_LEN + length, tid, pn, offset)


def data_capacity(max_datagram: int) -> int:
    """File bytes one DATA record carries when it fills a datagram of `max_datagram` bytes."""
    return wire.payload_capacity(max_datagram) - wire.RECORD_HEADER_LEN - DATA_HEADER_LEN


@dataclasses.dataclass(frozen=True)
class AckRecord:
    """Packet numbers received, as inclusive ranges, highest first; `delay_us` is how long the
    receiver held the highest one before acknowledging (subtracted from RTT samples);
    `window` is how many more bytes it can take before its disk catches up (flow control)."""

    ranges: tuple[tuple[int, int], ...]
    delay_us: int = 0
    window: int = 0xFFFFFFFF

    def encode(self) -> bytes:
        if not 0 < len(self.ranges) <= MAX_ACK_RANGES:
            raise WireError(f"an ACK holds 1 to {MAX_ACK_RANGES} ranges")
        parts = [struct.pack(">IIB", _u(self.delay_us, 32, "ack delay"), _u(self.window, 32, "window"),
                             len(self.ranges))]
        for first, last in self.ranges:
            if _u(first, 64, "pn") > _u(last, 64, "pn"):
                raise WireError("reversed pn range")
            parts.append(_RANGE64.pack(first, last))
        return b"".join(parts)

    @staticmethod
    def decode(body: bytes) -> "AckRecord":
        r = _Reader(body, "FILE_ACK")
        delay, window, count = struct.unpack(">IIB", r.take(9))
        if not 0 < count <= MAX_ACK_RANGES:
            raise WireError("FILE_ACK range count out of bounds")
        ranges = tuple(r.unpack(_RANGE64) for _ in range(count))
        r.end()
        if any(first > last for first, last in ranges):
            raise WireError("reversed pn range")
        return AckRecord(ranges, delay, window)


@dataclasses.dataclass(frozen=True)
class End:
    tid: bytes
    size: int
    sha256: bytes

    def encode(self) -> bytes:
        return _END.pack(check_bytes(self.tid, "tid", WireError, TID_LEN), _u(self.size, 64, "size"),
                         check_bytes(self.sha256, "sha256", WireError, SHA256_LEN))

    @staticmethod
    def decode(body: bytes) -> "End":
        if len(body) != _END.size:
            raise WireError("END has the wrong size")
        return End(*_END.unpack(body))


@dataclasses.dataclass(frozen=True)
class HaltRecord:
    tid: bytes
    code: Halt
    reason: str = ""

    def encode(self) -> bytes:
        reason = _text(self.reason, MAX_REASON_BYTES, "reason")
        return _HALT.pack(check_bytes(self.tid, "tid", WireError, TID_LEN), int(self.code)) + bytes([len(reason)]) + reason

    @staticmethod
    def decode(body: bytes) -> "HaltRecord":
        r = _Reader(body, "HALT")
        tid, code = r.unpack(_HALT)
        try:
            halt = Halt(code)
        except ValueError:
            raise WireError(f"unknown HALT code {code}") from None
        reason = _utf8(r.take(r.take(1)[0]), "reason")
        r.end()
        return HaltRecord(tid, halt, reason)


@dataclasses.dataclass(frozen=True)
class Probe:
    """Path MTU probe: sent as the only record of a DATA frame padded to `size` bytes."""

    probe_id: int
    size: int

    def encode(self) -> bytes:
        return _PROBE.pack(_u(self.probe_id, 32, "probe id"), _u(self.size, 32, "probe size"))

    @staticmethod
    def decode(body: bytes) -> "Probe":
        if len(body) != _PROBE.size:
            raise WireError("PROBE has the wrong size")
        return Probe(*_PROBE.unpack(body))


@dataclasses.dataclass(frozen=True)
class ProbeAck:
    probe_id: int
    size: int

    def encode(self) -> bytes:
        return _PROBE.pack(_u(self.probe_id, 32, "probe id"), _u(self.size, 32, "probe size"))

    @staticmethod
    def decode(body: bytes) -> "ProbeAck":
        if len(body) != _PROBE.size:
            raise WireError("PROBE_ACK has the wrong size")
        return ProbeAck(*_PROBE.unpack(body))


FileRecord = Union[Offer, AnswerRecord, Data, AckRecord, End, HaltRecord, Probe, ProbeAck]

_CLASSES: dict[int, type] = {
    FileRecordType.OFFER: Offer, FileRecordType.ANSWER: AnswerRecord, FileRecordType.DATA: Data,
    FileRecordType.ACK: AckRecord, FileRecordType.END: End, FileRecordType.HALT: HaltRecord,
    FileRecordType.PROBE: Probe, FileRecordType.PROBE_ACK: ProbeAck,
}
_TYPES: dict[type, int] = {cls: rtype for rtype, cls in _CLASSES.items()}


def to_raw(record: FileRecord) -> RawRecord:
    """The RawRecord (type + body) that carries `record` inside a DATA frame."""
    return RawRecord(_TYPES[type(record)], record.encode())


def decode_file_record(raw: RawRecord) -> Optional[FileRecord]:
    """The FILE record in `raw`; None for a type this version does not know (ignored)."""
    cls = _CLASSES.get(raw.rtype)
    if cls is None:
        return None
    body = raw.body
    if cls is not Data and not isinstance(body, bytes):  # a large record arrives as a view:
        body = bytes(body)                               # only DATA is decoded from one
    return cls.decode(body)  # type: ignore[no-any-return]


# ---------------------------------------------------------------- byte-range sets


class RangeSet:
    """A set of integers kept as sorted, disjoint, non-adjacent half-open ranges [start, end).

    Used for bytes received, bytes still needed and chunks held. Adding at the end (the
    common, in-order case) is O(1); other changes are O(log n + k)."""

    __slots__ = ("_starts", "_ends", "total")

    def __init__(self, ranges: Iterable[tuple[int, int]] = ()) -> None:
        self._starts: list[int] = []
        self._ends: list[int] = []
        self.total = 0
        for start, end in ranges:
            self.add(start, end)

    def __len__(self) -> int:
        return len(self._starts)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        return iter(zip(self._starts, self._ends))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RangeSet) and self._starts == other._starts and self._ends == other._ends

    def __repr__(self) -> str:
        return f"RangeSet({list(self)!r})"

    def copy(self) -> "RangeSet":
        new = RangeSet()
        new._starts, new._ends, new.total = list(self._starts), list(self._ends), self.total
        return new

    def add(self, start: int, end: int) -> int:
        """Add [start, end); returns how many integers were new."""
        if end <= start:
            return 0
        starts, ends = self._starts, self._ends
        if not starts or start > ends[-1]:
            starts.append(start)
            ends.append(end)
            self.total += end - start
            return end - start
        if start >= starts[-1] and start <= ends[-1]:  # extends (or lies in) the last range
            if end <= ends[-1]:
                return 0
            added = end - ends[-1]
            ends[-1] = end
            self.total += added
            return added
        # General case: merge every range touching [start, end).
        lo = bisect.bisect_left(ends, start)      # first range that ends at or after start
        hi = bisect.bisect_right(starts, end)     # ranges before hi start at or before end
        if lo == hi:
            starts.insert(lo, start)
            ends.insert(lo, end)
            self.total += end - start
            return end - start
        covered = sum(ends[i] - starts[i] for i in range(lo, hi))
        new_start = min(start, starts[lo])
        new_end = max(end, ends[hi - 1])
        starts[lo:hi] = [new_start]
        ends[lo:hi] = [new_end]
        added = (new_end - new_start) - covered
        self.total += added
        return added

    def remove(self, start: int, end: int) -> int:
        """Remove [start, end); returns how many integers were removed."""
        if end <= start or not self._starts:
            return 0
        starts, ends = self._starts, self._ends
        lo = bisect.bisect_right(ends, start)     # first range ending after start
        hi = bisect.bisect_left(starts, end)      # ranges before hi start before end
        if lo >= hi:
            return 0
        removed = 0
        new_starts: list[int] = []
        new_ends: list[int] = []
        for i in range(lo, hi):
            s, e = starts[i], ends[i]
            removed += min(e, end) - max(s, start)
            if s < start:
                new_starts.append(s)
                new_ends.append(start)
            if e > end:
                new_starts.append(end)
                new_ends.append(e)
        starts[lo:hi] = new_starts
        ends[lo:hi] = new_ends
        self.total -= removed
        return removed

    def contains(self, start: int, end: int) -> bool:
        """Whether all of [start, end) is in the set (an empty range always is)."""
        if end <= start:
            return True
        i = bisect.bisect_right(self._starts, start) - 1
        return i >= 0 and self._ends[i] >= end

    def overlaps(self, start: int, end: int) -> bool:
        """Whether any integer of [start, end) is in the set."""
        if end <= start:
            return False
        i = bisect.bisect_right(self._ends, start)
        return i < len(self._starts) and self._starts[i] < end

    def keep_last(self, count: int) -> None:
        """Forget all but the `count` highest ranges (bounded state for ACK ranges)."""
        if len(self._starts) > count:
            cut = len(self._starts) - count
            self.total -= sum(self._ends[i] - self._starts[i] for i in range(cut))
            del self._starts[:cut]
            del self._ends[:cut]

    def last(self) -> Optional[tuple[int, int]]:
        return (self._starts[-1], self._ends[-1]) if self._starts else None

    def first(self) -> Optional[tuple[int, int]]:
        return (self._starts[0], self._ends[0]) if self._starts else None

    def next_from(self, position: int) -> Optional[tuple[int, int]]:
        """The part of the first range that ends after `position`, clipped to start there."""
        i = bisect.bisect_right(self._ends, position)
        if i >= len(self._starts):
            return None
        return max(self._starts[i], position), self._ends[i]

    def prefix_end(self, start: int = 0) -> int:
        """End of the run that starts at `start` (`start` itself if `start` is not in the set)."""
        i = bisect.bisect_right(self._starts, start) - 1
        if i >= 0 and self._ends[i] > start:
            return self._ends[i]
        return start

    def complement(self, start: int, end: int) -> "RangeSet":
        """[start, end) minus this set."""
        out = RangeSet()
        position = start
        for s, e in self:
            if e <= position:
                continue
            if s >= end:
                break
            if s > position:
                out.add(position, min(s, end))
            position = max(position, e)
            if position >= end:
                break
        if position < end:
            out.add(position, end)
        return out


def chunk_ranges(have: RangeSet, chunk_size: int, size: int) -> RangeSet:
    """Chunks (index ranges) wholly inside the byte set `have` of a file of `size` bytes."""
    out = RangeSet()
    for start, end in have:
        first = -(-start // chunk_size)
        stop = end // chunk_size if end < size else -(-size // chunk_size)  # the last chunk may be short
        if stop > first:
            out.add(first, stop)
    return out


def chunks_to_bytes(chunks: Iterable[tuple[int, int]], chunk_size: int, size: int) -> RangeSet:
    """Byte ranges of the chunk index ranges [first, stop), clipped to the file size."""
    out = RangeSet()
    for first, stop in chunks:
        start, end = first * chunk_size, min(stop * chunk_size, size)
        if end > start:
            out.add(start, end)
    return out


def format_ranges(ranges: RangeSet) -> str:
    """'0-12,20-31' (half-open) for the store."""
    return ",".join(f"{s}-{e}" for s, e in ranges)


def parse_ranges(text: str) -> RangeSet:
    out = RangeSet()
    for part in (text or "").split(","):
        if part:
            start, _, end = part.partition("-")
            out.add(int(start), int(end))
    return out


# ---------------------------------------------------------------- file names

_JOINERS = frozenset("\u200c\u200d")  # format characters emoji and some scripts need
_WINDOWS_RESERVED = frozenset(
    ["CON", "PRN", "AUX", "NUL", "CONIN$", "CONOUT$"]
    + [f"COM{i}" for i in "0123456789¹²³"] + [f"LPT{i}" for i in "0123456789¹²³"])
_WINDOWS_FORBIDDEN = frozenset('<>:"|?*')


class UnsafeName(Invalid):
    """A file name that must be refused (traversal, control characters...); says why."""


def check_file_name(name: str) -> str:
    """The name a received file may be saved under, or UnsafeName.

    Refused outright (a hostile or broken sender): empty, longer than 255 UTF-8 bytes, path
    separators, `.` / `..`, control or bidi-override characters. Adjusted (harmless names that
    would misbehave on some system): characters Windows forbids become `_`, trailing dots and
    spaces are dropped, leading spaces too, and a Windows device name (CON, NUL.txt...) gets a
    leading `_`. The result is NFC-normalised."""
    if not isinstance(name, str):
        raise UnsafeName("the file name is not text")
    name = unicodedata.normalize("NFC", name)
    if not name:
        raise UnsafeName("the file name is empty")
    if len(name.encode("utf-8")) > MAX_NAME_BYTES:
        raise UnsafeName(f"the file name is longer than {MAX_NAME_BYTES} bytes")
    if "/" in name or "\\" in name:
        raise UnsafeName("the file name contains a path separator")
    if name in (".", "..") or name.strip(" .") == "":
        raise UnsafeName("the file name is a relative path")
    for ch in name:
        if ch in BIDI_CONTROLS:
            raise UnsafeName("the file name contains a bidirectional override character")
        if unicodedata.category(ch) in ("Cc", "Cf", "Zl", "Zp", "Cs", "Co", "Cn") and ch not in _JOINERS:
            raise UnsafeName("the file name contains a control character")
    name = "".join("_" if ch in _WINDOWS_FORBIDDEN else ch for ch in name)
    name = name.lstrip(" ").rstrip(" .")
    stem = name.split(".", 1)[0].rstrip(" ").upper()
    if stem in _WINDOWS_RESERVED:
        name = "_" + name
    if not name:
        raise UnsafeName("the file name is empty")
    return name


def numbered_name(name: str, n: int) -> str:
    """`report.pdf` -> `report (n).pdf`; dot files and names without extension get ` (n)` last."""
    if n == 0:
        return name
    dot = name.rfind(".")
    if dot <= 0:
        return f"{name} ({n})"
    return f"{name[:dot]} ({n}){name[dot:]}"


