"""Transfer state: sizes and timers, states, errors, per-transfer and per-link objects."""

from __future__ import annotations

import collections
import errno
import hashlib
from typing import Callable, Optional

import gevent
import gevent.event

from ...errors import Invalid, NotFound, Refused
from ...codec import wire
from ..congestion import Bbr, Recovery
from ...codec.filecodec import (
    MAX_ACCEPT_RANGES, RangeSet, chunk_ranges, chunks_to_bytes, parse_ranges, transfer_wire_id,
)
from ...contract import Direction, Side, TransferState, TransferView
from ...net.peers import Link
from ...util import TokenBucket

from .direct import DirectStage


# -- sizes and timers (see docs/PROTOCOL.md §10 for how they were chosen) ------------------------
READ_BLOCK = 4 << 20              # sender reads and hashes the file in blocks of this size (one
                                  # hand-off to a thread each: fewer, larger ones keep the pump fed)
HASH_BLOCK = 2 << 20              # receiver hashes what it wrote in reads of this size...
HASH_STEP = 4 << 20               # ...at most this much per hand-off (hashing 16 MiB kept the writer
                                  # 30 ms from the next batch: the window filled, the sender waited)
WRITE_BATCH = 2 << 20             # receiver: bytes gathered before one hand-off to a thread...
WRITE_WAIT = 0.01                 # ...or at most this long after the first one (s)
SEND_CACHE = 16 << 20             # bytes a sender keeps read: in flight + read ahead, per transfer
MAX_PENDING_WRITES = 8 << 20      # bytes received but not yet written, per node (else dropped, unacked)
MAX_DIRECT_STAGES = 4             # incoming transfers written around the page cache at once (each
                                  # holds a 2 MiB buffer: memory stays flat); others go through it
PART_DIR = ".chatp2p-partial"      # part files' own directory in the downloads dir
SYNC_BYTES = 16 << 20             # fdatasync the .part (in the background) and record the chunk map
                                  # this often: writeback keeps up, so the final fsync is short...
SYNC_INTERVAL = 1.0               # ...or after this many seconds with unsynced data; what a sync
                                  # made durable (and was hashed) then leaves the page cache
RELEASE_ALIGN = 1 << 20           # ...in whole MiB (pages, and a hash read-back never split)
ACK_EVERY = 8                     # DATA packets per FILE_ACK at most (at once when out of order)...
ACK_MIN_BYTES = 32 << 10          # ...once they hold this many bytes (~22 datagrams of 1472)...
ACK_BYTES = 256 << 10             # ...or this many bytes (4 datagrams of 64 KiB): an ACK costs both
                                  # sides a sealed datagram and a pass of loss/rate bookkeeping; at a
                                  # 1500-byte MTU one per 8 DATA was a third of the receiver's CPU
WINDOW_UPDATE_AT = MAX_PENDING_WRITES // 2  # a receiver that refused DATA for want of room sends
                                  # an ACK (its new window) once this much is free again: else the
                                  # sender, held by the window, learns it only from a probe timeout
ACK_DELAY = 0.001                 # s: a lone DATA packet is acknowledged after this
BURST = 132                       # datagrams the pump seals for one link before looking around (three
                                  # GSO sends of 1472-byte datagrams, ~0.6 ms of work: a pass of the
                                  # pump costs ~50 us, a sixth of a 44-datagram burst at 1200 bytes)...
BURST_BYTES = 256 << 10           # ...or this many bytes (4 of 64 KiB): between two turns the loop
                                  # serves the API and chat
GSO_BURST_BYTES = 64 << 10        # pacing lets this much go at once: one batched send
PROGRESS_INTERVAL = 0.25          # s: file_transfer_progress at most 4 times a second
CONTROL_RTO = 0.25                # s: first retransmission of OFFER / ACCEPT / END...
CONTROL_MAX_RTO = 4.0             # ...doubling up to this
PROBE_SIZES = (1472, 8972, 16384, 32768, 65507)  # path MTU search ladder (Ethernet, jumbo, loopback)
PROBE_TRIES = 3
PROBE_RETRY_AFTER = 30.0          # s: search again after a black hole
MAX_OFFERS_PER_PEER = 16          # offers waiting for the user, per contact
MAX_OFFERS = 64                   # ... and in all
REFUSAL_EVENTS_PER_MINUTE = 10    # file_transfer_failed events for refused offers, per peer
MAX_REFUSED_REMEMBERED = 1024

Publish = Callable[[str, object], None]

# States (contract.TransferState says how they follow each other), by their short names here.
QUEUED, OFFERED, ACTIVE, PAUSED = TransferState.QUEUED, TransferState.OFFERED, TransferState.ACTIVE, TransferState.PAUSED
COMPLETED, FAILED = TransferState.COMPLETED, TransferState.FAILED
REJECTED, CANCELLED = TransferState.REJECTED, TransferState.CANCELLED
TERMINAL = (COMPLETED, REJECTED, CANCELLED)
LOCAL, PEER = Side.LOCAL, Side.PEER


class TransferError(Refused):
    """An API request about transfers cannot be done; the message is for the user."""


class InvalidTransferRequest(Invalid, TransferError):
    """A transfer request with a malformed argument (path, chunk size, id, file name)."""


class TransferNotFound(NotFound, TransferError):
    """No transfer has that id."""


def os_reason(exc: OSError) -> str:
    """A short reason for an OS error (the API and events show it)."""
    if exc.errno == errno.ENOSPC or exc.errno == errno.EDQUOT:
        return "disk full"
    if exc.errno in (errno.EACCES, errno.EPERM):
        return "permission denied"
    if exc.errno == errno.ENOENT:
        return "file not found"
    if exc.errno == errno.EISDIR:
        return "is a directory"
    return exc.strerror or str(exc)


# -- progress ------------------------------------------------------------------------------------
class Meter:
    """Rate over the last ~2 s, for progress events and `p2p transfers`."""

    def __init__(self) -> None:
        self.samples: collections.deque[tuple[float, int]] = collections.deque()
        self.published_at = 0.0
        self.published_bytes = -1

    def sample(self, now: float, done: int) -> None:
        samples = self.samples
        if samples and samples[-1][1] > done:  # went back (a restart): start over
            samples.clear()
        samples.append((now, done))
        while len(samples) > 2 and now - samples[1][0] >= 2.0:
            samples.popleft()

    def rate(self, now: float) -> float:
        if len(self.samples) < 2:
            return 0.0
        (t0, b0), (t1, b1) = self.samples[0], self.samples[-1]
        if now - t1 > 1.0:  # nothing new for a while: stalled
            return 0.0
        return (b1 - b0) / (t1 - t0) if t1 > t0 else 0.0


# -- per-transfer state ---------------------------------------------------------------------------
class Transfer:
    """What both directions share: identity, peer, file, persisted state."""

    direction = ""

    def __init__(self, row: dict, fingerprint: bytes, peer: str) -> None:
        self.transfer_id: str = row["transfer_id"]
        self.tid = transfer_wire_id(self.transfer_id)
        self.contact_id: Optional[int] = row["contact_id"]   # None: a group peer (PROTOCOL §13.7)
        self.group_id: Optional[bytes] = row.get("group_id")  # a group file's (PROTOCOL §13.4)
        self.fingerprint = fingerprint
        self.peer = peer
        self.name: str = row["file_name"]
        self.path: Optional[str] = row["path"]
        self.size: int = row["size"]
        self.chunk_size: int = row["chunk_size"]
        self.tag = bytes(row["tag"])
        self.state = TransferState(row["state"])
        self.stopped_by = Side(row["stopped_by"]) if row["stopped_by"] else None
        self.sha256: Optional[str] = row["sha256"]
        self.error: Optional[str] = row["error"]
        self.fd: Optional[int] = None
        self.meter = Meter()
        self.started_at: Optional[float] = None
        self.wire_bytes = 0          # DATA payload bytes sent / received, duplicates included
        self.control_sent = 0.0      # last OFFER / ACCEPT / END retransmission
        self.control_tries = 0
        self.release = False         # close the file once the worker greenlet is done with it
        self.last_done = 0

    def done_bytes(self) -> int:
        raise NotImplementedError

    def view(self, now: float) -> TransferView:
        done = self.done_bytes()
        rate = self.meter.rate(now) if self.state == ACTIVE else 0.0
        eta = round((self.size - done) / rate, 1) if rate > 0 else None
        return {"transfer_id": self.transfer_id, "peer": self.peer, "direction": self.direction,
                "file_name": self.name, "size": self.size, "path": self.path, "state": self.state,
                "bytes": done, "rate": round(rate), "eta": eta, "sha256": self.sha256,
                "error": self.error, "stopped_by": self.stopped_by, "wire_bytes": self.wire_bytes}


class Outgoing(Transfer):
    direction = Direction.OUT

    def __init__(self, row: dict, fingerprint: bytes, peer: str) -> None:
        super().__init__(row, fingerprint, peer)
        self.answered = False        # an ANSWER came for the current offer
        self.accepted = False        # ACCEPT received in this session: data flows
        self.gen = 0                 # bumped on every restart of the send state
        self.need = RangeSet()       # bytes the receiver still lacks
        self.retransmit = RangeSet()  # lost bytes, sent before new ones
        self.cursor = 0              # first transmissions have covered [0, cursor)
        self.blocks: dict[int, bytes] = {}
        self.cache_bytes = 0
        self.read_pos = 0
        self.hash_pos = 0
        self.hasher = hashlib.sha256()
        self.digest: Optional[bytes] = None
        self.reader: Optional[gevent.Greenlet] = None
        self.wake = gevent.event.Event()

    def done_bytes(self) -> int:
        if self.state == COMPLETED:
            return self.size
        if self.accepted:
            self.last_done = self.size - self.need.total
        return self.last_done

    def reset_source(self) -> None:
        """The file is (re)opened: hashing and reading start over."""
        self.gen += 1
        self.hasher = hashlib.sha256()
        self.hash_pos = self.read_pos = 0
        self.digest = None
        self.blocks.clear()
        self.cache_bytes = 0

    def restart_session(self, have: RangeSet) -> None:
        """ACCEPT with the bytes the receiver holds: send the rest, from the start."""
        self.gen += 1
        self.need = have.complement(0, self.size)
        self.retransmit = RangeSet()
        self.cursor = 0
        self.blocks.clear()
        self.cache_bytes = 0
        first = self.need.first()
        self.read_pos = min(self.hash_pos, (first[0] // READ_BLOCK) * READ_BLOCK if first else self.size)

    def next_piece(self, capacity: int) -> Optional[tuple[int, memoryview]]:
        """The next (offset, bytes) to send: lost bytes first, then new ones in order."""
        while self.retransmit:
            start, end = self.retransmit.first()  # type: ignore[misc]
            index = start // READ_BLOCK
            block = self.blocks.get(index)
            if block is None:  # not in memory (should not happen): read it again
                self.retransmit.remove(start, end)
                self.cursor = min(self.cursor, start)
                self.read_pos = min(self.read_pos, index * READ_BLOCK)
                self.wake.set()
                continue
            end = min(end, start + capacity, (index + 1) * READ_BLOCK)
            self.retransmit.remove(start, end)
            base = index * READ_BLOCK
            return start, memoryview(block)[start - base:end - base]
        while self.cursor < self.size:
            found = self.need.next_from(self.cursor)
            if found is None:
                self.cursor = self.size
                return None
            start, end = found
            index = start // READ_BLOCK
            block = self.blocks.get(index)
            if block is None:
                self.cursor = start
                return None  # the reader has not got there yet
            end = min(end, start + capacity, (index + 1) * READ_BLOCK)
            self.cursor = end
            base = index * READ_BLOCK
            return start, memoryview(block)[start - base:end - base]
        return None

    def delivered(self, offset: int, length: int) -> bool:
        """Bytes acknowledged; frees the blocks nobody needs any more. True if a block was freed."""
        end = offset + length
        self.need.remove(offset, end)
        self.retransmit.remove(offset, end)
        freed = False
        for index in range(offset // READ_BLOCK, (end - 1) // READ_BLOCK + 1):
            block = self.blocks.get(index)
            if block is not None and not self.need.overlaps(index * READ_BLOCK, index * READ_BLOCK + len(block)):
                del self.blocks[index]
                self.cache_bytes -= len(block)
                freed = True
        return freed

    def lost(self, offset: int, length: int) -> None:
        for start, end in self.need.complement(0, self.size).complement(offset, offset + length):
            self.retransmit.add(start, end)


class Incoming(Transfer):
    direction = Direction.IN

    def __init__(self, row: dict, fingerprint: bytes, peer: str) -> None:
        super().__init__(row, fingerprint, peer)
        self.part_path: Optional[str] = row["part_path"]
        durable = chunks_to_bytes(parse_ranges(row["have"]), self.chunk_size, self.size)
        self.have = durable.copy()      # bytes received (written or queued)
        self.written = durable.copy()   # bytes written to the .part
        self.pending: list[list] = []   # runs [offset, end, buffers] received, not yet written
        self.pending_bytes = 0
        self.unsynced = 0
        self.synced_at = 0.0
        self.hasher = hashlib.sha256()
        self.hash_pos = 0
        self.released = 0               # the .part's pages below this left the page cache
        self.stage: Optional[DirectStage] = None  # the streaming write around the page cache
        self.expected: Optional[bytes] = None
        self.writer: Optional[gevent.Greenlet] = None
        self.syncer: Optional[gevent.Greenlet] = None  # a background fdatasync, while writing goes on
        self.wake = gevent.event.Event()
        self.accept_pending = False     # ACCEPT sent, no DATA yet: retransmit it
        self.finishing = False

    def done_bytes(self) -> int:
        return self.size if self.state == COMPLETED else self.have.total

    def have_chunks(self) -> tuple[tuple[int, int], ...]:
        """Chunk ranges (first, last inclusive) held, for ACCEPT (at most MAX_ACCEPT_RANGES)."""
        ranges = chunk_ranges(self.have, self.chunk_size, self.size)
        return tuple((first, stop - 1) for first, stop in list(ranges)[:MAX_ACCEPT_RANGES])


class Channel:
    """The file-transfer state of one link (one session): packet numbers, loss recovery,
    congestion control and pacing, path MTU, and the receiving side's ACK bookkeeping."""

    def __init__(self, link: Link, now: float) -> None:
        self.link = link
        self.recovery = Recovery(max_ack_delay=2 * ACK_DELAY)
        self.bbr = Bbr(wire.MAX_DATAGRAM, now)
        self.next_pn = 0
        self.max_datagram = wire.MAX_DATAGRAM
        self.pacing = TokenBucket(rate=0.0, burst=0.0, now=now, tokens=0.0)  # rate, burst follow BBR
        self.idle = True
        self.senders: list[Outgoing] = []
        self.rr = 0
        self.ptos = 0
        self.peer_window = MAX_PENDING_WRITES  # receiver's buffer room, from its last ACK
        # path MTU search
        self.probe_id = 0
        self.probe_size = 0
        self.probe_sent = 0.0
        self.probe_tries = 0
        self.probe_done = False
        self.probe_after = 0.0
        self.check_id = 0                # small PROBE sent after repeated probe timeouts (black hole?)
        self.acked_top = -1              # highest packet number any FILE_ACK acknowledged
        # receiving
        self.rx = RangeSet()             # packet numbers received (newest MAX_ACK_RANGES ranges)
        self.rx_largest = -1
        self.rx_largest_time = 0.0
        self.rx_unacked = 0
        self.rx_unacked_bytes = 0
        self.ack_now = False
        self.window_starved = False      # DATA was refused for want of room: say when room is back
        self.ack_timer: Optional[gevent.Greenlet] = None
        self.answer_sent: dict[bytes, float] = {}  # tid -> last unsolicited state answer (rate limit)
