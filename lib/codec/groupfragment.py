"""Group frames cut into GROUP records and put back together (PROTOCOL §13.8).

Pure: `fragment_frame` cuts a frame, `FrameAssembler` is the bounded receiving state (one per
node, keyed by session), driven by the caller's clock. The record itself, `GroupFragment`,
lives in `wire` with the other record types (the record decoder returns it); it is exported
here too.

Fragments are not acknowledged: a frame missing a fragment is dropped when it expires, and
anti-entropy (§13.6) sends its content again. So the assembler never waits for anything and
never asks for anything: it only bounds what a peer can make it hold.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Hashable, Optional

from .wire import GROUP_HEADER, RECORD_HEADER_LEN, GroupFragment, WireError, payload_capacity

__all__ = ["GroupFragment", "fragment_frame", "fragment_capacity", "FrameAssembler", "Drop",
           "MAX_FRAME", "MAX_PARTIALS", "FRAME_TIMEOUT", "MAX_BUFFERED"]

MAX_FRAME = 512 * 1024        # bytes of one group frame (a RECORDS frame is at most 256 KiB)
MAX_PARTIALS = 16             # incomplete frames per session
FRAME_TIMEOUT = 10.0          # s an incomplete frame is kept
MAX_BUFFERED = 16 * 1024 * 1024  # bytes reserved by incomplete frames over all sessions
RECENT_FRAMES = 64            # completed frame ids remembered per session (late duplicates)
_U32 = 0xFFFFFFFF


def fragment_capacity(max_datagram: int) -> int:
    """Frame bytes one GROUP record carries when it fills a DATA datagram alone."""
    return payload_capacity(max_datagram) - RECORD_HEADER_LEN - GROUP_HEADER.size


def fragment_frame(frame_id: int, frame: bytes, capacity: int) -> list[GroupFragment]:
    """`frame` as GROUP records of at most `capacity` bytes of frame each, in order.

    ValueError (a caller bug) for an empty frame, one over MAX_FRAME, or a capacity < 1."""
    if not isinstance(frame, (bytes, bytearray, memoryview)) or not 1 <= len(frame) <= MAX_FRAME:
        raise ValueError(f"a group frame is 1..{MAX_FRAME} bytes")
    if not isinstance(frame_id, int) or not 0 <= frame_id <= _U32:
        raise ValueError(f"frame id out of range: {frame_id!r}")
    if capacity < 1:
        raise ValueError(f"fragment capacity must be >= 1, got {capacity}")
    data = bytes(frame)
    total = len(data)
    return [GroupFragment(frame_id, total, offset, data[offset:offset + capacity])
            for offset in range(0, total, capacity)]


class Drop(WireError):
    """A fragment the assembler did not keep; `reason` names the counter to count it in."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass
class _Partial:
    """The fragments received so far of one frame: a buffer of its declared length and the
    disjoint, sorted byte ranges filled."""

    total: int
    created: float
    buffer: bytearray = field(init=False)
    filled: list[list[int]] = field(default_factory=list)  # [start, end) ranges, sorted, disjoint
    size: int = 0  # bytes filled

    def __post_init__(self) -> None:
        self.buffer = bytearray(self.total)

    def add(self, offset: int, data: bytes) -> None:
        """Copy `data` in at `offset`. Bytes already held must be the same (a duplicate or an
        overlapping resend); different ones make the frame unusable: Drop("conflict")."""
        end = offset + len(data)
        merged_start, merged_end = offset, end
        keep: list[list[int]] = []
        for start, stop in self.filled:
            if stop < offset or start > end:
                keep.append([start, stop])
                continue
            low, high = max(start, offset), min(stop, end)
            if low < high and self.buffer[low:high] != data[low - offset:high - offset]:
                raise Drop("group_fragments_conflicting")
            merged_start, merged_end = min(merged_start, start), max(merged_end, stop)
            self.size -= stop - start
        self.buffer[offset:end] = data
        keep.append([merged_start, merged_end])
        keep.sort()
        self.filled = keep
        self.size += merged_end - merged_start

    @property
    def complete(self) -> bool:
        return self.size == self.total


class FrameAssembler:
    """Incomplete group frames of every session, bounded.

    Per session at most `max_partials` frames of at most `max_frame` bytes each, for `timeout`
    seconds; over all sessions at most `max_buffered` bytes (each frame reserves its declared
    length on its first fragment). At a bound the oldest frame gives way, the session's own
    first, else the oldest of the session that holds the most: a peer's flood evicts its own
    frames before anyone else's. `add` raises Drop for what it does not keep.
    """

    def __init__(self, *, max_frame: int = MAX_FRAME, max_partials: int = MAX_PARTIALS,
                 timeout: float = FRAME_TIMEOUT, max_buffered: int = MAX_BUFFERED) -> None:
        self.max_frame = max_frame
        self.max_partials = max_partials
        self.timeout = timeout
        self.max_buffered = max_buffered
        self._partials: dict[Hashable, OrderedDict[int, _Partial]] = {}  # session -> frame id -> partial, oldest first
        self._recent: dict[Hashable, OrderedDict[int, None]] = {}        # session -> completed frame ids
        self._session_bytes: dict[Hashable, int] = {}
        self.buffered = 0  # bytes reserved overall

    def partials(self, session: Hashable) -> int:
        """Incomplete frames of one session."""
        return len(self._partials.get(session, ()))

    def add(self, session: Hashable, fragment: GroupFragment, now: float) -> tuple[Optional[bytes], int]:
        """Keep `fragment`: (the whole frame if it is now complete, else None; frames evicted
        to make room). Raises Drop(reason) when the fragment is not kept."""
        if fragment.total > self.max_frame:
            raise Drop("group_fragments_oversize")
        recent = self._recent.get(session)
        if recent is not None and fragment.frame_id in recent:
            raise Drop("group_fragments_duplicate")
        partial = self._partials.get(session, {}).get(fragment.frame_id)
        evicted = 0
        if partial is not None and partial.total != fragment.total:
            self._remove(session, fragment.frame_id)
            raise Drop("group_fragments_conflicting")
        if partial is None:
            if fragment.offset == 0 and len(fragment.data) == fragment.total:
                self._completed(session, fragment.frame_id)
                return bytes(fragment.data), 0  # a frame in one fragment: nothing to hold
            evicted = self._make_room(session, fragment.total)
            partial = _Partial(fragment.total, now)
            frames = self._partials.setdefault(session, OrderedDict())
            frames[fragment.frame_id] = partial
            self._session_bytes[session] = self._session_bytes.get(session, 0) + fragment.total
            self.buffered += fragment.total
        try:
            partial.add(fragment.offset, bytes(fragment.data))
        except Drop:
            self._remove(session, fragment.frame_id)
            raise
        if not partial.complete:
            return None, evicted
        self._remove(session, fragment.frame_id)
        self._completed(session, fragment.frame_id)
        return bytes(partial.buffer), evicted

    def _completed(self, session: Hashable, frame_id: int) -> None:
        recent = self._recent.setdefault(session, OrderedDict())
        recent[frame_id] = None
        while len(recent) > RECENT_FRAMES:
            recent.popitem(last=False)

    def _make_room(self, session: Hashable, size: int) -> int:
        evicted = 0
        frames = self._partials.get(session)
        while frames and len(frames) >= self.max_partials:
            self._remove(session, next(iter(frames)))
            evicted += 1
        while self.buffered + size > self.max_buffered and self._session_bytes:
            heaviest = max(self._session_bytes, key=lambda s: (s == session, self._session_bytes[s]))
            self._remove(heaviest, next(iter(self._partials[heaviest])))
            evicted += 1
        return evicted

    def _remove(self, session: Hashable, frame_id: int) -> None:
        frames = self._partials[session]
        partial = frames.pop(frame_id)
        self.buffered -= partial.total
        self._session_bytes[session] -= partial.total
        if not frames:
            del self._partials[session]
            del self._session_bytes[session]

    def drop_session(self, session: Hashable) -> None:
        """The session ended: its incomplete frames and remembered ids go."""
        for frame_id in list(self._partials.get(session, ())):
            self._remove(session, frame_id)
        self._recent.pop(session, None)

    def expire(self, now: float) -> int:
        """Drop frames older than the timeout; how many."""
        dropped = 0
        for session in list(self._partials):
            frames = self._partials[session]
            for frame_id in [f for f, p in frames.items() if now - p.created >= self.timeout]:
                self._remove(session, frame_id)
                dropped += 1
                if session not in self._partials:
                    break
        return dropped
