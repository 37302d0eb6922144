"""File transfers over the encrypted links: offers, paced windowed sending, resume, verification.

The wire protocol is docs/PROTOCOL.md §10 (codecs in `filecodec`, loss detection and the
BBR-lite congestion controller in `congestion`). This module is the gevent I/O layer around
them, a `LinkObserver` of `peers.Network`:

* Sender: an `Outgoing` per transfer. Its reader greenlet reads the file in 4 MiB blocks in
  gevent's thread pool and hashes them in order while reading (SHA-256 runs in the thread, with
  the GIL released), so sending starts at once and the hash is ready at the end. One pump
  greenlet per node sends DATA records round-robin over the active transfers of each peer
  (`Channel`), paced by that link's congestion controller; ACK ranges free the blocks, losses
  queue exactly the missing bytes again. END carries the SHA-256 once everything is delivered.
* Receiver: an `Incoming` per transfer. Received bytes are queued for a writer greenlet that
  writes them to `DOWNLOADS/.chatp2p-partial/<id>.part` in the thread pool (pwritev, batches of a
  few MiB) and hashes what is contiguous in the same hand-off; every 64 MiB it fdatasyncs the .part and only then records the chunks held in
  the store, so after a crash the store never claims bytes the disk lost. When the bytes are
  all there and the hash matches END's, the file is fsynced and linked to its final name in
  the downloads dir (never overwriting: `name (1).ext`).
* Resume: whenever a session comes up the sender offers its unfinished transfers again; the
  receiver answers ACCEPT with the chunks it holds, and only the rest is sent. The offer
  carries a tag of the source (size, mtime, hash of the first chunk): a changed file restarts
  from zero on both sides.

Chat is never queued behind files: messages are sealed and sent the moment they are written,
while file data goes out only as the pacing allows and only when the event loop is otherwise
idle (the pump waits in `gevent.idle`), and the transport yields between batches of received
datagrams.
"""

from __future__ import annotations

import collections
import errno
import hashlib
import logging
import os
import stat
import time
import uuid
from typing import Callable, Optional

import gevent
import gevent.event

from ..errors import Invalid, NotFound, Refused
from ..codec import wire
from .congestion import Bbr, Recovery, SentPacket
from ..codec.filecodec import (
    DEFAULT_CHUNK, FILE_TYPES, FileRecordType, MAX_ACCEPT_RANGES, MAX_ACK_RANGES, MAX_CHUNK, MAX_FILE_SIZE,
    MAX_TRANSFER_ID_CHARS, MIN_CHUNK, AckRecord, Answer, AnswerRecord, Data, End, Halt, HaltRecord,
    Offer, Probe, ProbeAck, RangeSet, UnsafeName, check_file_name, chunk_ranges, chunks_to_bytes,
    data_capacity, data_record_header, decode_file_record, format_ranges, numbered_name,
    parse_ranges, source_tag, to_raw, transfer_wire_id,
)
from ..contract import Direction, FileTransferProgress, Side, TransferRef, TransferState, TransferView
from ..net.peers import Link, Network
from ..store import Contact, DuplicateError, Store
from ..util import TokenBucket
from ..codec.wire import RawRecord, WireError

log = logging.getLogger("chatp2p.transfer")

# -- sizes and timers (see docs/PROTOCOL.md §10 for how they were chosen) ------------------------
READ_BLOCK = 4 << 20              # sender reads and hashes the file in blocks of this size (one
                                  # hand-off to a thread each: fewer, larger ones keep the pump fed)
HASH_BLOCK = 2 << 20              # receiver hashes what it wrote in reads of this size...
HASH_STEP = 16 << 20              # ...at most this much between two rounds of writes
WRITE_BATCH = 2 << 20             # receiver: bytes gathered before one hand-off to a thread...
WRITE_WAIT = 0.01                 # ...or at most this long after the first one (s)
SEND_CACHE = 16 << 20             # bytes a sender keeps read: in flight + read ahead, per transfer
MAX_PENDING_WRITES = 8 << 20      # bytes received but not yet written, per node (else dropped, unacked)
PART_DIR = ".chatp2p-partial"      # part files' own directory in the downloads dir
SYNC_BYTES = 32 << 20             # fdatasync the .part (in the background) and record the chunk map
                                  # this often: writeback keeps up, so the final fsync is short...
SYNC_INTERVAL = 1.0               # ...or after this many seconds with unsynced data
ACK_EVERY = 8                     # DATA packets per FILE_ACK at most (at once when out of order)...
ACK_BYTES = 256 << 10             # ...or this many bytes (4 datagrams of 64 KiB): an ACK costs both
                                  # sides a sealed datagram and a pass of loss/rate bookkeeping
ACK_DELAY = 0.001                 # s: a lone DATA packet is acknowledged after this
BURST = 16                        # datagrams the pump sends for one link before looking around...
BURST_BYTES = 256 << 10           # ...or this many bytes (4 of 64 KiB, ~0.4 ms of work): between two
                                  # turns the loop serves the API and chat
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


def _reason(exc: OSError) -> str:
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


# -- blocking helpers: run in gevent's thread pool only ------------------------------------------
def _open_source(path: str, chunk_size: int) -> tuple[int, int, int, bytes]:
    """(fd, size, mtime_ns, tag) of a file to send; OSError with a clear reason otherwise."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise OSError(errno.EISDIR if stat.S_ISDIR(info.st_mode) else errno.EINVAL,
                          "not a regular file")
        first = os.pread(fd, min(chunk_size, info.st_size), 0)
        tag = source_tag(info.st_size, info.st_mtime_ns, hashlib.sha256(first).digest())
        return fd, info.st_size, info.st_mtime_ns, tag
    except BaseException:
        os.close(fd)
        raise


def _read_block(fd: int, offset: int, length: int, hasher) -> bytes:
    data = os.pread(fd, length, offset)
    if hasher is not None and len(data) == length:
        hasher.update(data)
    return data


def _write_runs(fd: int, runs: list[tuple[int, list]]) -> None:
    """Write each run (offset, buffers) with one pwritev.

    Hashing is done after, from the page cache (`_hash_file`): reading back 4 MiB costs two
    calls, hashing datagram-sized pieces as they are written would cost one per piece, and each
    call hands the GIL back and forth with the event loop."""
    for offset, buffers in runs:
        position = offset
        for start in range(0, len(buffers), 1024):  # IOV_MAX
            group = buffers[start:start + 1024]
            want = sum(len(b) for b in group)
            done = os.pwritev(fd, group, position)
            if done < want:  # short write (rare): finish with the rest joined
                rest = b"".join(group)[done:]
                while rest:
                    n = os.pwrite(fd, rest, position + done)
                    rest, done = rest[n:], done + n
            position += want


def _write_and_hash(fd: int, runs: list[tuple[int, list]], hasher, start: int, end: int) -> int:
    """One hand-off to the thread pool per batch: write the runs, then hash [start, end)."""
    if runs:
        _write_runs(fd, runs)
    return _hash_file(fd, start, end, hasher) if end > start else start


def _hash_file(fd: int, start: int, end: int, hasher) -> int:
    """Hash [start, end) of the .part, read back (from the page cache, usually)."""
    position = start
    while position < end:
        data = os.pread(fd, min(HASH_BLOCK, end - position), position)
        if not data:
            break
        hasher.update(data)
        position += len(data)
    return position


def part_path_for(downloads_dir: str, tid: bytes) -> str:
    """Where an incoming transfer's bytes wait: a directory of its own in the downloads dir,
    out of reach of offered names (which are bare names), so that no file received earlier
    can stand in for a part file."""
    return os.path.join(downloads_dir, PART_DIR, f"{tid.hex()}.part")


def _open_part(part_path: str, new: bool) -> tuple[int, int]:
    """(fd, current size) of a part file, creating its directories (0700) if needed. A new one
    is created exclusively (a stale file of that name, left by a crash, is replaced first), so
    no earlier content survives into it; a resumed one is reopened and its size checked."""
    os.makedirs(os.path.dirname(os.path.dirname(part_path)), mode=0o700, exist_ok=True)
    os.makedirs(os.path.dirname(part_path), mode=0o700, exist_ok=True)
    flags = os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW
    if new:
        try:
            fd = os.open(part_path, flags | os.O_EXCL, 0o600)
        except FileExistsError:
            os.unlink(part_path)
            fd = os.open(part_path, flags | os.O_EXCL, 0o600)
    else:
        fd = os.open(part_path, flags, 0o600)
    return fd, os.fstat(fd).st_size


def _free_space(directory: str) -> int:
    os.makedirs(directory, mode=0o700, exist_ok=True)
    info = os.statvfs(directory)
    return info.f_bavail * info.f_frsize


def _finalize(fd: int, part_path: str, directory: str, name: str) -> str:
    """fsync the .part, give it its final name without ever replacing a file, fsync the dir."""
    os.fsync(fd)
    os.close(fd)
    for n in range(10000):
        candidate = os.path.join(directory, numbered_name(name, n))
        try:
            os.link(part_path, candidate)  # fails if the name exists: never overwrites
        except FileExistsError:
            continue
        except OSError as exc:
            if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV, errno.EMLINK):
                raise
            if os.path.lexists(candidate):  # no hard links here: check, then rename
                continue
            os.rename(part_path, candidate)
        else:
            os.unlink(part_path)
        break
    else:
        raise OSError(errno.EEXIST, "no free file name")
    dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return candidate


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
        self.contact_id: int = row["contact_id"]
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
        self.pending: list[tuple[int, memoryview]] = []
        self.pending_bytes = 0
        self.unsynced = 0
        self.synced_at = 0.0
        self.hasher = hashlib.sha256()
        self.hash_pos = 0
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
        self.ack_timer: Optional[gevent.Greenlet] = None
        self.answer_sent: dict[bytes, float] = {}  # tid -> last unsolicited state answer (rate limit)


# -- the manager ----------------------------------------------------------------------------------
class Transfers:
    """Every file transfer of one node; a LinkObserver of its Network."""

    def __init__(self, store: Store, network: Network, publish: Publish, downloads_dir: str,
                 auto_accept: bool = False, upload_limit: int = 0) -> None:
        self.store = store
        self.network = network
        self.publish = publish
        self.downloads_dir = os.path.abspath(os.path.expanduser(downloads_dir))
        self.auto_accept = auto_accept
        self.upload_limit = float(upload_limit)      # bytes/s for all sending, 0 = none
        self.counters = network.counters
        self.pool = gevent.get_hub().threadpool
        self.transfers: dict[str, Transfer] = {}
        self.by_tid: dict[tuple[bytes, bytes, str], Transfer] = {}   # (peer fp, tid, direction)
        self.channels: dict[bytes, Channel] = {}
        self.pending_bytes = 0
        self._upload_bucket = TokenBucket(rate=self.upload_limit, burst=0.0, now=time.monotonic(), tokens=0.0)
        self._refused: collections.OrderedDict[tuple[bytes, bytes], str] = collections.OrderedDict()
        self._refusal_events: dict[bytes, collections.deque] = {}
        self._finished: collections.OrderedDict[tuple[bytes, bytes, str], str] = collections.OrderedDict()
        self._wake = gevent.event.Event()
        self._stopping = False
        self._pump: Optional[gevent.Greenlet] = None
        network.observers.append(self)

    # -- life cycle -------------------------------------------------------------------------
    def start(self) -> None:
        """Load unfinished transfers and start the pump."""
        for row in reversed(self.store.transfers.recent((QUEUED, OFFERED, ACTIVE, PAUSED, FAILED), limit=100000)):
            try:
                contact = self.store.contacts.get_by_id(row["contact_id"])
            except Exception:
                continue
            transfer: Transfer
            if row["direction"] == "out":
                transfer = Outgoing(row, contact.fingerprint, contact.name)
            else:
                transfer = Incoming(row, contact.fingerprint, contact.name)
            self._register(transfer)
            if isinstance(transfer, Incoming) and transfer.state in (ACTIVE, PAUSED, FAILED) and transfer.part_path:
                self._reopen_part(transfer)
                if transfer.state in (ACTIVE, PAUSED):
                    self._ensure_writer(transfer)  # it re-hashes what the .part holds
        self._pump = gevent.spawn(self._pump_loop)

    def stop(self) -> None:
        """Flush what was received, record it, close files. Bounded: about a second at most."""
        self._stopping = True
        if self._pump is not None:
            self._pump.kill(block=False)
        workers = []
        for transfer in self.transfers.values():
            worker = transfer.reader if isinstance(transfer, Outgoing) else transfer.writer
            transfer.wake.set()
            if worker is not None:
                workers.append(worker)
        gevent.joinall(workers, timeout=1.5)
        for transfer in self.transfers.values():
            if isinstance(transfer, Incoming) and transfer.writer is None and transfer.fd is not None:
                self._close_fd(transfer)
            elif isinstance(transfer, Outgoing) and transfer.reader is None and transfer.fd is not None:
                self._close_fd(transfer)

    def _close_fd(self, transfer: Transfer) -> None:
        if transfer.fd is not None:
            try:
                os.close(transfer.fd)
            except OSError:
                pass
            transfer.fd = None

    def _register(self, transfer: Transfer) -> None:
        self.transfers[transfer.transfer_id] = transfer
        self.by_tid[(transfer.fingerprint, transfer.tid, transfer.direction)] = transfer

    def _save(self, transfer: Transfer, **fields) -> None:
        try:
            self.store.transfers.update(transfer.transfer_id, **fields)
        except Exception as exc:  # the transfer goes on; the log says why its state may lag
            log.warning("cannot record transfer %s: %s", transfer.transfer_id, exc)

    def _set_state(self, transfer: Transfer, state: str, stopped_by: Optional[str] = None,
                   error: Optional[str] = None, **fields) -> None:
        transfer.state, transfer.stopped_by = state, stopped_by
        if error is not None or state not in (FAILED,):
            transfer.error = error
        self._save(transfer, state=state, stopped_by=stopped_by, error=transfer.error, **fields)

    # -- API --------------------------------------------------------------------------------
    def send_file(self, contact: Contact, file_path: str, chunk_size: Optional[int],
                  transfer_id: Optional[str]) -> tuple[Outgoing, bool]:
        """Offer a file to a contact (queued if it is offline). (transfer, offered now)."""
        if contact.blocked:
            raise TransferError(f"{contact.name} is blocked: unblock the contact to send it files")
        transfer_id = self._check_new_id(transfer_id)
        chunk_size = DEFAULT_CHUNK if chunk_size is None else chunk_size
        if not MIN_CHUNK <= chunk_size <= MAX_CHUNK:
            raise InvalidTransferRequest(f"chunk_size must be between {MIN_CHUNK} and {MAX_CHUNK} bytes")
        path = os.path.expanduser(file_path)
        if not os.path.isabs(path):
            raise InvalidTransferRequest(f"file_path must be an absolute path, got {file_path!r}")
        try:
            name = check_file_name(os.path.basename(path))
        except UnsafeName as exc:
            raise InvalidTransferRequest(f"Cannot send {file_path}: {exc}") from None
        try:
            fd, size, _, tag = self.pool.apply(_open_source, (path, chunk_size))
        except OSError as exc:
            reason = f"Cannot read {file_path}: {_reason(exc)}"
            self.publish("file_transfer_failed", {"transfer_id": transfer_id, "peer": contact.name,
                                                  "direction": Direction.OUT, "file_name": name, "size": None,
                                                  "reason": reason})
            raise TransferError(reason) from None
        if size > MAX_FILE_SIZE:
            os.close(fd)
            raise TransferError(f"{file_path} is too large ({size} bytes, at most {MAX_FILE_SIZE})")
        try:
            row = self.store.transfers.add(transfer_id=transfer_id, contact_id=contact.id, direction="out",
                                          file_name=name, path=path, size=size, chunk_size=chunk_size,
                                          tag=tag, state=QUEUED)
        except DuplicateError as exc:
            os.close(fd)
            raise TransferError(str(exc)) from None
        transfer = Outgoing(row, contact.fingerprint, contact.name)
        transfer.fd = fd
        self._register(transfer)
        link = self.network.links.get(contact.fingerprint)
        if link is not None and link.connected:
            self._offer(link, transfer, time.monotonic())
            return transfer, True
        return transfer, False

    def _check_new_id(self, transfer_id: Optional[str]) -> str:
        if transfer_id is None or transfer_id == "":
            return uuid.uuid4().hex
        if len(transfer_id) > MAX_TRANSFER_ID_CHARS or any(ord(ch) < 32 or ord(ch) == 127 for ch in transfer_id):
            raise InvalidTransferRequest(f"transfer_id must be 1-{MAX_TRANSFER_ID_CHARS} printable characters")
        if transfer_id in self.transfers or self.store.transfers.get(transfer_id) is not None:
            raise TransferError(f"transfer_id {transfer_id!r} is already used")
        return transfer_id

    def get(self, transfer_id: str) -> Transfer:
        transfer = self.transfers.get(transfer_id)
        if transfer is None:
            row = self.store.transfers.get(transfer_id)
            if row is None:
                raise TransferNotFound(f"Transfer not found: {transfer_id}")
            raise TransferError(f"Transfer {transfer_id} is {row['state']}")
        return transfer

    def accept(self, transfer_id: str, save_as: Optional[str]) -> Incoming:
        transfer = self.get(transfer_id)
        if not isinstance(transfer, Incoming) or transfer.state != OFFERED:
            raise TransferError(f"Transfer {transfer_id} is not an offer waiting for an answer "
                                f"(it is {transfer.direction}, {transfer.state})")
        if save_as:
            try:
                name = check_file_name(save_as)
            except UnsafeName as exc:
                raise InvalidTransferRequest(f"save_as must be a bare file name: {exc}") from None
            if name != save_as:
                raise InvalidTransferRequest(f"save_as must be a bare file name that is valid everywhere, "
                                    f"for example {name!r}")
            transfer.name = name
        try:
            free = self.pool.apply(_free_space, (self.downloads_dir,))
        except OSError as exc:
            raise TransferError(f"Cannot use the downloads dir {self.downloads_dir}: {_reason(exc)}") from None
        if free < transfer.size:
            raise TransferError(f"Not enough space in {self.downloads_dir}: the file needs {transfer.size} bytes, "
                                f"{free} are free")
        transfer.part_path = part_path_for(self.downloads_dir, transfer.tid)
        try:
            transfer.fd, _ = self.pool.apply(_open_part, (transfer.part_path, True))
        except OSError as exc:
            raise TransferError(f"Cannot write in {self.downloads_dir}: {_reason(exc)}") from None
        self._set_state(transfer, ACTIVE, file_name=transfer.name, part_path=transfer.part_path)
        self._start_incoming(transfer)
        return transfer

    def reject(self, transfer_id: str) -> Incoming:
        transfer = self.get(transfer_id)
        if not isinstance(transfer, Incoming) or transfer.state != OFFERED:
            raise TransferError(f"Transfer {transfer_id} is not an offer waiting for an answer")
        self._set_state(transfer, REJECTED, LOCAL)
        self._answer(transfer, Answer.REJECT, "rejected by the receiver")
        self._forget(transfer)
        return transfer

    def cancel(self, transfer_id: str) -> Transfer:
        transfer = self.get(transfer_id)
        if transfer.state in TERMINAL:
            raise TransferError(f"Transfer {transfer_id} is already {transfer.state}")
        self._set_state(transfer, CANCELLED, LOCAL, "cancelled")
        if isinstance(transfer, Outgoing):
            self._halt(transfer, Halt.CANCELLED, "cancelled by the sender")
        else:
            self._answer(transfer, Answer.CANCELLED, "cancelled by the receiver")
            self._discard_part(transfer)
        self.publish("file_transfer_failed", self._event(transfer, reason="cancelled"))
        self._forget(transfer)
        return transfer

    def pause(self, transfer_id: str) -> Transfer:
        transfer = self.get(transfer_id)
        if transfer.state not in (QUEUED, OFFERED, ACTIVE):
            raise TransferError(f"Transfer {transfer_id} cannot be paused: it is {transfer.state}")
        self._set_state(transfer, PAUSED, LOCAL)
        if isinstance(transfer, Outgoing):
            self._stop_sending(transfer)
            self._halt(transfer, Halt.PAUSED, "paused by the sender")
        else:
            self._answer(transfer, Answer.PAUSED)
        self.publish("file_transfer_paused", self._event(transfer, by=LOCAL))
        return transfer

    def resume(self, transfer_id: str) -> Transfer:
        transfer = self.get(transfer_id)
        if transfer.state == PAUSED and transfer.stopped_by == PEER:
            raise TransferError(f"Transfer {transfer_id} was paused by {transfer.peer}: only they can resume it")
        if transfer.state not in (PAUSED, FAILED):
            raise TransferError(f"Transfer {transfer_id} is not paused or failed (it is {transfer.state})")
        now = time.monotonic()
        link = self.network.links.get(transfer.fingerprint)
        connected = link is not None and link.connected
        if isinstance(transfer, Outgoing):
            self._set_state(transfer, QUEUED, error=None)
            if connected:
                self._offer(link, transfer, now)  # type: ignore[arg-type]
        else:
            if transfer.part_path is None:
                raise TransferError(f"Transfer {transfer_id} has no partial file to resume")
            if transfer.fd is None:
                self._reopen_part(transfer)
            self._set_state(transfer, ACTIVE, error=None)
            self._start_incoming(transfer)
        self.publish("file_transfer_resumed", self._event(transfer))
        return transfer

    def list(self) -> list[TransferView]:
        now = time.monotonic()
        views = [t.view(now) for t in self.transfers.values()]
        seen = set(self.transfers)
        for row in self.store.transfers.recent(limit=200):
            if row["transfer_id"] not in seen:
                try:
                    peer = self.store.contacts.get_by_id(row["contact_id"]).name
                except Exception:
                    peer = None
                views.append({"transfer_id": row["transfer_id"], "peer": peer, "direction": Direction(row["direction"]),
                              "file_name": row["file_name"], "size": row["size"], "path": row["path"],
                              "state": TransferState(row["state"]),
                              "bytes": row["size"] if row["state"] == COMPLETED else 0,
                              "rate": 0, "eta": None, "sha256": row["sha256"], "error": row["error"],
                              "stopped_by": Side(row["stopped_by"]) if row["stopped_by"] else None,
                              "wire_bytes": 0})
        return views

    def contact_removed(self, fingerprint: bytes) -> None:
        """The contact is gone (its rows went with it): drop its transfers from memory."""
        for transfer in [t for t in self.transfers.values() if t.fingerprint == fingerprint]:
            if isinstance(transfer, Outgoing):
                self._stop_sending(transfer)
            self._forget(transfer)

    def _forget(self, transfer: Transfer) -> None:
        """A finished transfer leaves memory (its row stays): stop its workers, close its file."""
        if isinstance(transfer, Outgoing):
            self._stop_sending(transfer)
        self.transfers.pop(transfer.transfer_id, None)
        self.by_tid.pop((transfer.fingerprint, transfer.tid, transfer.direction), None)
        self._finished[(transfer.fingerprint, transfer.tid, transfer.direction)] = transfer.state
        while len(self._finished) > MAX_REFUSED_REMEMBERED:
            self._finished.popitem(last=False)
        self._release_fd(transfer)

    def _event(self, transfer: Transfer, **extra) -> TransferRef:
        """The fields every file event shares (contract.TransferRef), plus the event's own."""
        data: TransferRef = {"transfer_id": transfer.transfer_id, "peer": transfer.peer,
                             "direction": transfer.direction, "file_name": transfer.name, "size": transfer.size}
        data.update(extra)  # type: ignore[typeddict-item]
        return data

    # -- LinkObserver -----------------------------------------------------------------------
    def link_up(self, link: Link) -> None:
        now = time.monotonic()
        self.channels[link.fingerprint] = Channel(link, now)
        for transfer in list(self.transfers.values()):
            if transfer.fingerprint != link.fingerprint:
                continue
            if isinstance(transfer, Outgoing):
                transfer.accepted = transfer.answered = False
                if transfer.state in (QUEUED, OFFERED, ACTIVE):
                    gevent.spawn(self._offer, link, transfer, now)  # it reads the file: not here
            elif transfer.state == ACTIVE:
                self._ensure_writer(transfer)
                self._answer(transfer, Answer.ACCEPT)
                transfer.accept_pending = True
                transfer.control_sent, transfer.control_tries = now, 1

    def path_changed(self, link: Link) -> None:
        """The session moved to a validated new address: the datagram size probed on the old
        path does not hold there, nor does its bandwidth. Back to 1200-byte datagrams and a
        fresh congestion controller; the probe searches the new path again."""
        channel = self.channels.get(link.fingerprint)
        if channel is None:
            return
        now = time.monotonic()
        channel.max_datagram = wire.MAX_DATAGRAM
        channel.bbr = Bbr(wire.MAX_DATAGRAM, now)
        channel.probe_id = channel.probe_size = channel.probe_tries = channel.ptos = channel.check_id = 0
        channel.probe_done = False
        channel.probe_after = now
        self.counters["transfer_path_changes"] += 1

    def link_down(self, link: Link) -> None:
        channel = self.channels.pop(link.fingerprint, None)
        if channel is not None and channel.ack_timer is not None:
            channel.ack_timer.kill(block=False)
        for transfer in self.transfers.values():
            if transfer.fingerprint == link.fingerprint and isinstance(transfer, Outgoing):
                transfer.accepted = transfer.answered = False
                if transfer.state == ACTIVE:
                    transfer.state = OFFERED  # in memory: it resumes with the next session

    def tick(self, now: float) -> None:
        for transfer in list(self.transfers.values()):
            link = self.network.links.get(transfer.fingerprint)
            connected = link is not None and link.connected
            if connected:
                self._control_timers(link, transfer, now)  # type: ignore[arg-type]
            if transfer.state == ACTIVE and now - transfer.meter.published_at >= PROGRESS_INTERVAL:
                done = transfer.done_bytes()
                transfer.meter.sample(now, done)
                if done != transfer.meter.published_bytes:
                    transfer.meter.published_at, transfer.meter.published_bytes = now, done
                    rate = transfer.meter.rate(now)
                    progress: FileTransferProgress = self._event(  # type: ignore[assignment]
                        transfer, bytes=done, rate=round(rate),
                        eta=round((transfer.size - done) / rate, 1) if rate > 0 else None)
                    self.publish("file_transfer_progress", progress)
        for channel in self.channels.values():
            if channel.senders and channel.link.connected:
                self._probe(channel, now)
                if log.isEnabledFor(logging.DEBUG) and int(now * 2) != int((now - 0.02) * 2):
                    bbr, rec = channel.bbr, channel.recovery
                    log.debug("to %s: %s bw %.1f MiB/s min_rtt %.2f ms srtt %.2f ms cwnd %d KiB in flight %d KiB "
                              "pacing %.1f MiB/s mtu %d hi %s pto %d", channel.link.name, bbr.mode,
                              bbr.btl_bw / 2**20, (bbr.min_rtt or 0) * 1e3, (rec.rtt.srtt or 0) * 1e3, bbr.cwnd >> 10,
                              rec.bytes_in_flight >> 10, bbr.pacing_rate / 2**20, channel.max_datagram,
                              bbr.inflight_hi, channel.ptos)

    def _control_timers(self, link: Link, transfer: Transfer, now: float) -> None:
        due = now - transfer.control_sent >= min(CONTROL_MAX_RTO, CONTROL_RTO * 2 ** max(transfer.control_tries - 1, 0))
        if not due:
            return
        if isinstance(transfer, Outgoing):
            if transfer.state == OFFERED and not transfer.answered:
                self._send_control(link, [to_raw(self._offer_record(transfer))])
            elif transfer.state == ACTIVE and transfer.accepted and not transfer.need and transfer.digest is not None:
                self._send_control(link, [to_raw(End(transfer.tid, transfer.size, transfer.digest))])
            else:
                return
        elif transfer.state == ACTIVE and transfer.accept_pending:
            self._send_control(link, [to_raw(AnswerRecord(transfer.tid, Answer.ACCEPT, transfer.have_chunks()))])
        else:
            return
        transfer.control_sent = now
        transfer.control_tries += 1

    def records(self, link: Link, records: list) -> None:
        channel = self.channels.get(link.fingerprint)
        if channel is None:
            return
        now = time.monotonic()
        for raw in records:
            if not isinstance(raw, RawRecord) or raw.rtype not in FILE_TYPES:
                continue
            try:
                record = decode_file_record(raw)
            except WireError:
                self.counters["dropped_file_record"] += 1
                continue
            if isinstance(record, Data):
                self._on_data(channel, link, record, now)
            elif isinstance(record, AckRecord):
                self._on_ack(channel, record, now)
            elif isinstance(record, Offer):
                self._on_offer(link, record, now)
            elif isinstance(record, AnswerRecord):
                self._on_answer(link, record, now)
            elif isinstance(record, End):
                self._on_end(link, record)
            elif isinstance(record, HaltRecord):
                self._on_halt(link, record)
            elif isinstance(record, Probe):
                if channel.rx_unacked:  # what came before the probe is acknowledged before it
                    self._send_ack(channel, now)
                self._send_control(link, [to_raw(ProbeAck(record.probe_id, record.size))])
            elif isinstance(record, ProbeAck):
                self._on_probe_ack(channel, record)
        if channel.rx_unacked:
            if channel.ack_now or channel.rx_unacked >= ACK_EVERY or channel.rx_unacked_bytes >= ACK_BYTES:
                self._send_ack(channel, now)
            elif channel.ack_timer is None:
                channel.ack_timer = gevent.spawn_later(ACK_DELAY, self._ack_timeout, channel)

    # -- control records --------------------------------------------------------------------
    def _send_control(self, link: Link, records: list) -> None:
        self.network.send_records(link, records)

    def _offer_record(self, transfer: Outgoing) -> Offer:
        return Offer(transfer.tid, transfer.size, transfer.chunk_size, transfer.tag, transfer.transfer_id,
                     transfer.name)

    def _offer(self, link: Link, transfer: Outgoing, now: float) -> None:
        """(Re)offer: check the source is still the same file first (reopening it if needed)."""
        try:
            fd, size, _, tag = self.pool.apply(_open_source, (transfer.path, transfer.chunk_size))
        except OSError as exc:
            self._fail(transfer, f"cannot read {transfer.path}: {_reason(exc)}", LOCAL)
            return
        if tag != transfer.tag or transfer.fd is None:
            if tag != transfer.tag:
                log.info("source of transfer %s changed: it starts over", transfer.transfer_id)
                if size > MAX_FILE_SIZE:
                    os.close(fd)
                    self._fail(transfer, "the source file grew too large", LOCAL)
                    return
                transfer.size, transfer.tag = size, tag
                self._save(transfer, size=size, tag=tag)
                self._stop_sending(transfer)  # an ACCEPT for the old version does not count
            if transfer.reader is not None:
                transfer.release = True  # the reader closes the old file when it is done
                transfer.wake.set()
            else:
                self._close_fd(transfer)
            transfer.fd = fd
            transfer.reset_source()
        else:
            os.close(fd)
        if transfer.accepted or transfer.state in TERMINAL or (transfer.state == PAUSED and transfer.stopped_by == LOCAL):
            return  # the receiver already answered this session, or the user acted meanwhile
        transfer.answered = False
        if transfer.state != OFFERED:
            self._set_state(transfer, OFFERED)
        log.info("offering %s (%s, %d bytes) to %s", transfer.transfer_id, transfer.name, transfer.size, link.name)
        self._send_control(link, [to_raw(self._offer_record(transfer))])
        transfer.control_sent, transfer.control_tries = now, 1

    def _answer(self, transfer: Incoming, code: Answer, reason: str = "") -> None:
        link = self.network.links.get(transfer.fingerprint)
        if link is None or not link.connected:
            return
        have = transfer.have_chunks() if code == Answer.ACCEPT else ()
        self._send_control(link, [to_raw(AnswerRecord(transfer.tid, code, have, reason))])

    def _halt(self, transfer: Outgoing, code: Halt, reason: str) -> None:
        link = self.network.links.get(transfer.fingerprint)
        if link is not None and link.connected:
            self._send_control(link, [to_raw(HaltRecord(transfer.tid, code, reason))])

    def _state_answer(self, transfer: Incoming) -> AnswerRecord:
        """What the receiver says about a transfer it knows, whatever the question."""
        state = transfer.state
        if state == OFFERED:
            return AnswerRecord(transfer.tid, Answer.PENDING)
        if state == ACTIVE:
            return AnswerRecord(transfer.tid, Answer.ACCEPT, transfer.have_chunks())
        if state == PAUSED:
            return AnswerRecord(transfer.tid, Answer.PAUSED)
        if state == COMPLETED:
            return AnswerRecord(transfer.tid, Answer.COMPLETE)
        if state == REJECTED:
            return AnswerRecord(transfer.tid, Answer.REJECT, reason="rejected by the receiver")
        if state == CANCELLED:
            return AnswerRecord(transfer.tid, Answer.CANCELLED, reason="cancelled by the receiver")
        return AnswerRecord(transfer.tid, Answer.FAILED, reason=(transfer.error or "failed")[:200])

    # -- receiver: offers -------------------------------------------------------------------
    def _on_offer(self, link: Link, offer: Offer, now: float) -> None:
        transfer = self.by_tid.get((link.fingerprint, offer.tid, "in"))
        log.info("offer %s from %s: %s", offer.transfer_id[:MAX_TRANSFER_ID_CHARS], link.name,
                 transfer.state if transfer is not None else "new")
        if transfer is None and (link.fingerprint, offer.tid) not in self._refused:
            row = self._known_incoming(link, offer)
            if row is not None:  # finished earlier: answer from the store
                self._send_control(link, [to_raw(self._row_answer(offer.tid, row))])
                return
        if isinstance(transfer, Incoming):
            if offer.tag != transfer.tag or offer.size != transfer.size:
                self._source_changed(transfer, offer)
            if transfer.state == PAUSED and transfer.stopped_by == PEER:
                self._set_state(transfer, ACTIVE)
                self._start_incoming(transfer)
            elif transfer.state == FAILED and transfer.stopped_by == PEER and transfer.part_path:
                if transfer.fd is None:
                    self._reopen_part(transfer)
                self._set_state(transfer, ACTIVE, error=None)
                self._start_incoming(transfer)
            else:
                self._send_control(link, [to_raw(self._state_answer(transfer))])
            return
        refused = self._refused.get((link.fingerprint, offer.tid))
        if refused is not None:
            self._send_control(link, [to_raw(AnswerRecord(offer.tid, Answer.FAILED, reason=refused))])
            return
        reason = self._check_offer(link, offer)
        if reason is not None:
            self._refuse(link, offer, reason)
            return
        try:
            name = check_file_name(offer.name)
            row = self.store.transfers.add(transfer_id=offer.transfer_id, contact_id=link.contact_id,
                                          direction="in", file_name=name, size=offer.size,
                                          chunk_size=offer.chunk_size, tag=offer.tag, state=OFFERED)
        except (UnsafeName, DuplicateError) as exc:
            self._refuse(link, offer, str(exc))
            return
        transfer = Incoming(row, link.fingerprint, link.name)
        self._register(transfer)
        self.counters["file_offers"] += 1
        self.publish("file_offer", self._event(transfer, chunk_size=transfer.chunk_size))
        contact = self.store.contacts.get_by_id(link.contact_id) if link.contact_id is not None else None
        if self.auto_accept and contact is not None and contact.verified:
            try:
                self.accept(transfer.transfer_id, None)
                return
            except TransferError as exc:
                log.warning("cannot auto-accept %s: %s", transfer.transfer_id, exc)
        self._send_control(link, [to_raw(AnswerRecord(offer.tid, Answer.PENDING))])

    def _finished_answer(self, link: Link, tid: bytes) -> AnswerRecord:
        """The answer about a transfer no longer in memory (finished this run, or unknown)."""
        state = self._finished.get((link.fingerprint, tid, "in"))
        if state == COMPLETED:
            return AnswerRecord(tid, Answer.COMPLETE)
        if state == REJECTED:
            return AnswerRecord(tid, Answer.REJECT, reason="rejected by the receiver")
        if state == CANCELLED:
            return AnswerRecord(tid, Answer.CANCELLED, reason="cancelled")
        return AnswerRecord(tid, Answer.FAILED, reason="unknown transfer")

    def _known_incoming(self, link: Link, offer: Offer) -> Optional[dict]:
        if not offer.transfer_id or transfer_wire_id(offer.transfer_id) != offer.tid:
            return None
        row = self.store.transfers.get(offer.transfer_id)
        if row is None or row["direction"] != "in" or row["contact_id"] != link.contact_id:
            return None
        return row

    def _row_answer(self, tid: bytes, row: dict) -> AnswerRecord:
        state = row["state"]
        if state == COMPLETED:
            return AnswerRecord(tid, Answer.COMPLETE)
        if state == REJECTED:
            return AnswerRecord(tid, Answer.REJECT, reason="rejected by the receiver")
        if state == CANCELLED:
            return AnswerRecord(tid, Answer.CANCELLED, reason="cancelled")
        return AnswerRecord(tid, Answer.FAILED, reason=(row["error"] or state)[:200])

    def _check_offer(self, link: Link, offer: Offer) -> Optional[str]:
        """Why an offer must be refused, or None."""
        if link.is_stranger:
            return "not a contact: offers are accepted from contacts only"
        if not offer.transfer_id or len(offer.transfer_id) > MAX_TRANSFER_ID_CHARS \
                or any(ord(ch) < 32 or ord(ch) == 127 for ch in offer.transfer_id):
            return "invalid transfer id"
        if transfer_wire_id(offer.transfer_id) != offer.tid:
            return "transfer id does not match its wire id"
        if offer.size > MAX_FILE_SIZE:
            return f"file too large ({offer.size} bytes, at most {MAX_FILE_SIZE})"
        if not MIN_CHUNK <= offer.chunk_size <= MAX_CHUNK:
            return f"chunk size {offer.chunk_size} out of bounds ({MIN_CHUNK}-{MAX_CHUNK})"
        try:
            check_file_name(offer.name)
        except UnsafeName as exc:
            return str(exc)
        if offer.transfer_id in self.transfers or self.store.transfers.get(offer.transfer_id) is not None:
            return "transfer id already in use"
        waiting = [t for t in self.transfers.values() if isinstance(t, Incoming) and t.state == OFFERED]
        if sum(1 for t in waiting if t.fingerprint == link.fingerprint) >= MAX_OFFERS_PER_PEER:
            return f"too many offers waiting for an answer (at most {MAX_OFFERS_PER_PEER} per contact)"
        if len(waiting) >= MAX_OFFERS:
            return f"too many offers waiting for an answer (at most {MAX_OFFERS})"
        return None

    def _refuse(self, link: Link, offer: Offer, reason: str) -> None:
        """Answer FAILED; tell the user (at most a few times a minute per peer); remember it."""
        self.counters["file_offers_refused"] += 1
        key = (link.fingerprint, offer.tid)
        self._refused[key] = reason
        while len(self._refused) > MAX_REFUSED_REMEMBERED:
            self._refused.popitem(last=False)
        self._send_control(link, [to_raw(AnswerRecord(offer.tid, Answer.FAILED, reason=reason[:200]))])
        now = time.monotonic()
        recent = self._refusal_events.setdefault(link.fingerprint, collections.deque())
        while recent and now - recent[0] > 60:
            recent.popleft()
        if len(recent) >= REFUSAL_EVENTS_PER_MINUTE:
            self.counters["file_refusal_events_suppressed"] += 1
            return
        recent.append(now)
        log.warning("refused a file offer from %s: %s", link.name, reason)
        self.publish("file_transfer_failed", {
            "transfer_id": offer.transfer_id[:MAX_TRANSFER_ID_CHARS], "peer": link.name, "direction": Direction.IN,
            "file_name": offer.name[:255], "size": offer.size, "reason": f"offer refused: {reason}"})

    def _source_changed(self, transfer: Incoming, offer: Offer) -> None:
        """The sender's file changed since it was offered: start again from nothing."""
        log.info("transfer %s: the source changed, starting over", transfer.transfer_id)
        transfer.size, transfer.tag = offer.size, offer.tag
        transfer.have, transfer.written = RangeSet(), RangeSet()
        transfer.pending.clear()
        self.pending_bytes -= transfer.pending_bytes
        transfer.pending_bytes = 0
        transfer.hasher, transfer.hash_pos, transfer.expected = hashlib.sha256(), 0, None
        if transfer.fd is not None:
            try:
                os.ftruncate(transfer.fd, 0)
            except OSError:
                pass
        self._save(transfer, size=offer.size, tag=offer.tag, have="")

    # -- receiver: data ---------------------------------------------------------------------
    def _start_incoming(self, transfer: Incoming) -> None:
        now = time.monotonic()
        if transfer.started_at is None:
            transfer.started_at = now
            self.publish("file_transfer_started", self._event(transfer))
        transfer.accept_pending = True
        transfer.control_sent, transfer.control_tries = now, 1
        self._answer(transfer, Answer.ACCEPT)
        self._ensure_writer(transfer)

    def _ensure_writer(self, transfer: Incoming) -> None:
        if transfer.fd is not None and (transfer.writer is None or transfer.writer.dead):
            transfer.writer = gevent.spawn(self._writer, transfer)

    def _reopen_part(self, transfer: Incoming) -> None:
        """After a restart: open the .part and trust only what it really holds."""
        assert transfer.part_path is not None
        try:
            transfer.fd, size = self.pool.apply(_open_part, (transfer.part_path, False))
        except OSError as exc:
            log.warning("cannot reopen %s: %s", transfer.part_path, exc)
            transfer.have, transfer.written = RangeSet(), RangeSet()
            return
        if size > transfer.size:  # never more than the file: what lies beyond is not ours
            self.pool.apply(os.ftruncate, (transfer.fd, transfer.size))
        if size < transfer.size:
            transfer.have.remove(size, transfer.size)
            transfer.written.remove(size, transfer.size)

    def _on_data(self, channel: Channel, link: Link, data: Data, now: float) -> None:
        transfer = self.by_tid.get((link.fingerprint, data.tid, "in"))
        accepted = True
        if not isinstance(transfer, Incoming) or transfer.state != ACTIVE:
            self.counters["file_data_unexpected"] += 1
            last = channel.answer_sent.get(data.tid, 0.0)
            if now - last > 0.2:  # tell the sender, at most 5 times a second per transfer
                channel.answer_sent[data.tid] = now
                if isinstance(transfer, Incoming):
                    self._send_control(link, [to_raw(self._state_answer(transfer))])
                else:
                    self._send_control(link, [to_raw(self._finished_answer(link, data.tid))])
        else:
            length = len(data.data)
            end = data.offset + length
            transfer.accept_pending = False
            transfer.wire_bytes += length
            if end > transfer.size:
                self._fail(transfer, f"protocol violation: data beyond the end of the file "
                                     f"({end} > {transfer.size} bytes)", LOCAL, keep_part=False)
                self._answer(transfer, Answer.FAILED, "data beyond the end of the file")
            elif length and not transfer.have.contains(data.offset, end):
                if self.pending_bytes + length > MAX_PENDING_WRITES:
                    accepted = False  # the disk is behind: not acknowledged, so it comes again
                    self.counters["file_data_backlog_drops"] += 1
                else:
                    was = transfer.pending_bytes
                    for start, stop in transfer.have.complement(data.offset, end):
                        transfer.pending.append((start, data.data[start - data.offset:stop - data.offset]))
                        transfer.have.add(start, stop)
                        transfer.pending_bytes += stop - start
                        self.pending_bytes += stop - start
                    # The writer gathers a batch: wake it for the first bytes, a full batch, the last.
                    if not was or transfer.pending_bytes >= WRITE_BATCH or transfer.have.total >= transfer.size:
                        transfer.wake.set()
            else:
                self.counters["file_data_duplicate"] += 1
        if accepted:
            rx = channel.rx
            last = rx.last()
            if last is not None and data.pn != last[1]:
                channel.ack_now = True  # a gap or a late packet: tell the sender at once
            rx.add(data.pn, data.pn + 1)
            if len(rx) > MAX_ACK_RANGES:
                rx.keep_last(MAX_ACK_RANGES)
            if data.pn > channel.rx_largest:
                channel.rx_largest, channel.rx_largest_time = data.pn, now
            channel.rx_unacked += 1
            channel.rx_unacked_bytes += len(data.data)

    def _send_ack(self, channel: Channel, now: float) -> None:
        if channel.ack_timer is not None:
            channel.ack_timer.kill(block=False)
            channel.ack_timer = None
        channel.rx_unacked = channel.rx_unacked_bytes = 0
        channel.ack_now = False
        ranges = tuple((start, end - 1) for start, end in reversed(list(channel.rx)))[:MAX_ACK_RANGES]
        if not ranges:
            return
        delay = max(0, int((now - channel.rx_largest_time) * 1e6))
        window = max(0, MAX_PENDING_WRITES - self.pending_bytes)
        body = AckRecord(ranges, min(delay, 0xFFFFFFFF), window).encode()
        self.network.send_payloads(channel.link, [wire.RECORD_HEADER.pack(FileRecordType.ACK, len(body)) + body])

    def _ack_timeout(self, channel: Channel) -> None:
        channel.ack_timer = None
        if channel.rx_unacked and channel.link.connected:
            self._send_ack(channel, time.monotonic())

    def _on_end(self, link: Link, end: End) -> None:
        transfer = self.by_tid.get((link.fingerprint, end.tid, "in"))
        if not isinstance(transfer, Incoming):
            self._send_control(link, [to_raw(self._finished_answer(link, end.tid))])
            return
        if transfer.state != ACTIVE:
            self._send_control(link, [to_raw(self._state_answer(transfer))])
            return
        if end.size != transfer.size:
            self._fail(transfer, "protocol violation: END gives another size", LOCAL, keep_part=False)
            self._answer(transfer, Answer.FAILED, "END size does not match the offer")
            return
        transfer.expected = end.sha256
        transfer.wake.set()

    def _on_halt(self, link: Link, halt: HaltRecord) -> None:
        transfer = self.by_tid.get((link.fingerprint, halt.tid, "in"))
        if not isinstance(transfer, Incoming) or transfer.state in TERMINAL:
            return
        if halt.code == Halt.PAUSED:
            if transfer.state == ACTIVE:
                self._set_state(transfer, PAUSED, PEER)
                self.publish("file_transfer_paused", self._event(transfer, by=PEER))
        elif halt.code == Halt.CANCELLED:
            self._set_state(transfer, CANCELLED, PEER, "cancelled by the sender")
            self._discard_part(transfer)
            self.publish("file_transfer_failed", self._event(transfer, reason="cancelled by the sender"))
            self._forget(transfer)
        else:
            self._fail(transfer, f"the sender failed: {halt.reason}", PEER)

    def _writer(self, transfer: Incoming) -> None:
        """Writes, hashes and syncs one incoming transfer's data; finishes it."""
        try:
            while not self._stopping and transfer.state in (ACTIVE, PAUSED) and transfer.fd is not None:
                if not transfer.pending and transfer.written.prefix_end(0) <= transfer.hash_pos:
                    transfer.wake.wait(SYNC_INTERVAL)
                    transfer.wake.clear()
                if (transfer.pending and transfer.pending_bytes < WRITE_BATCH
                        and transfer.have.total < transfer.size and not self._stopping):
                    # Gather a batch: every hand-off to a thread costs the event loop a GIL
                    # round trip, so a few MiB go at once (the ACK window allows 16).
                    transfer.wake.clear()
                    transfer.wake.wait(WRITE_WAIT)
                    transfer.wake.clear()
                self._write_pending(transfer)
                if transfer.fd is None or transfer.state not in (ACTIVE, PAUSED):
                    break
                if transfer.unsynced >= SYNC_BYTES and (transfer.syncer is None or transfer.syncer.dead):
                    # Without this a steady flow never reaches the sync below (there is always
                    # more to write), and the whole file waits for the final fsync.
                    transfer.syncer = gevent.spawn(self._background_sync, transfer)
                if transfer.pending or transfer.written.prefix_end(0) > transfer.hash_pos:
                    continue  # more to write or hash: no sync or waiting yet
                now = time.monotonic()
                if transfer.unsynced and (transfer.unsynced >= SYNC_BYTES or now - transfer.synced_at >= SYNC_INTERVAL):
                    self._join_syncer(transfer)
                    self._sync(transfer)
                if (transfer.state == ACTIVE and transfer.expected is not None and not transfer.pending
                        and transfer.written.total == transfer.size and transfer.hash_pos == transfer.size):
                    self._finish_incoming(transfer)
                    return
            if self._stopping and transfer.fd is not None:
                self._write_pending(transfer)
                self._join_syncer(transfer)
                if transfer.unsynced:
                    self._sync(transfer)
        except OSError as exc:
            self._fail(transfer, f"cannot write {transfer.part_path}: {_reason(exc)}", LOCAL)
        finally:
            self._join_syncer(transfer)  # it uses the file: done before the file is closed
            transfer.writer = None
            if transfer.transfer_id not in self.transfers or self._stopping or transfer.release:
                transfer.release = False
                self._close_fd(transfer)

    def _write_pending(self, transfer: Incoming) -> None:
        """Write what is pending and hash what then continues the hashed prefix, in one
        hand-off to the thread pool."""
        if transfer.fd is None:
            return
        runs: list[tuple[int, list]] = []
        size = 0
        if transfer.pending:
            batch, transfer.pending = sorted(transfer.pending, key=lambda piece: piece[0]), []
            size = sum(len(view) for _, view in batch)
            transfer.pending_bytes -= size
            self.pending_bytes -= size
            run_end = -1
            for offset, view in batch:
                if offset == run_end:
                    runs[-1][1].append(view)
                else:
                    runs.append((offset, [view]))
                run_end = offset + len(view)
        before = transfer.written
        written = before.copy() if runs else before
        for offset, views in runs:
            written.add(offset, offset + sum(len(v) for v in views))
        hasher, start = transfer.hasher, transfer.hash_pos
        frontier = min(written.prefix_end(0), start + HASH_STEP)
        if not runs and frontier <= start:
            return
        position = self.pool.apply(_write_and_hash, (transfer.fd, runs, hasher, start, frontier))
        if runs and transfer.written is before:  # else the source changed meanwhile: start over
            transfer.written = written
            transfer.unsynced += size
        if hasher is transfer.hasher and transfer.hash_pos == start:
            transfer.hash_pos = position

    def _sync(self, transfer: Incoming) -> None:
        """Make the written bytes durable, then (only then) record the chunks they complete.
        Bytes written while the sync runs count as unsynced: the next sync covers them."""
        chunks = chunk_ranges(transfer.written, transfer.chunk_size, transfer.size)
        if transfer.fd is None:
            return
        transfer.unsynced = 0
        self.pool.apply(os.fdatasync, (transfer.fd,))
        transfer.synced_at = time.monotonic()
        self._save(transfer, have=format_ranges(chunks))

    def _background_sync(self, transfer: Incoming) -> None:
        try:
            self._sync(transfer)
        except OSError as exc:
            self._fail(transfer, f"cannot write {transfer.part_path}: {_reason(exc)}", LOCAL)

    @staticmethod
    def _join_syncer(transfer: Incoming) -> None:
        syncer = transfer.syncer
        if syncer is not None and syncer is not gevent.getcurrent():
            syncer.join()

    def _finish_incoming(self, transfer: Incoming) -> None:
        # The part file holds exactly the declared size before the hash decides: bytes beyond
        # it, whatever put them there, must not reach the verified file.
        assert transfer.fd is not None
        try:
            self.pool.apply(os.ftruncate, (transfer.fd, transfer.size))
        except OSError as exc:
            self._fail(transfer, f"cannot write {transfer.part_path}: {_reason(exc)}", LOCAL)
            return
        digest = transfer.hasher.digest()
        if digest != transfer.expected:
            self._fail(transfer, "SHA-256 mismatch: the bytes received are not the file sent", LOCAL,
                       keep_part=False)
            self._answer(transfer, Answer.FAILED, "SHA-256 mismatch")
            return
        self._join_syncer(transfer)
        fd, transfer.fd = transfer.fd, None
        assert fd is not None and transfer.part_path is not None
        try:
            path = self.pool.apply(_finalize, (fd, transfer.part_path, self.downloads_dir, transfer.name))
        except OSError as exc:
            self._fail(transfer, f"cannot save {transfer.name}: {_reason(exc)}", LOCAL)
            return
        transfer.path, transfer.sha256 = path, digest.hex()
        self._set_state(transfer, COMPLETED, path=path, sha256=transfer.sha256,
                        have=format_ranges(chunk_ranges(transfer.written, transfer.chunk_size, transfer.size)))
        self._answer(transfer, Answer.COMPLETE)
        elapsed = time.monotonic() - (transfer.started_at or time.monotonic())
        self.counters["files_received"] += 1
        self.publish("file_received", self._event(transfer, path=path, sha256=transfer.sha256))
        self.publish("file_transfer_completed", self._event(transfer, path=path, sha256=transfer.sha256,
                                                             seconds=round(elapsed, 3), wire_bytes=transfer.wire_bytes))
        self._forget(transfer)

    def _release_fd(self, transfer: Transfer) -> None:
        """Close the transfer's file now, or (if a worker may be using it) when the worker ends:
        closing under a thread's feet could make it write into a file opened later."""
        worker = transfer.reader if isinstance(transfer, Outgoing) else transfer.writer
        if worker is None or worker.dead:
            self._close_fd(transfer)
        else:
            transfer.release = True
            transfer.wake.set()

    def _discard_part(self, transfer: Incoming) -> None:
        self._release_fd(transfer)
        if transfer.part_path:
            try:
                os.unlink(transfer.part_path)
            except OSError:
                pass

    def _fail(self, transfer: Transfer, reason: str, by: str, keep_part: bool = True) -> None:
        if transfer.state in TERMINAL or transfer.state == FAILED:
            return
        log.warning("transfer %s failed: %s", transfer.transfer_id, reason)
        self._set_state(transfer, FAILED, by, reason)
        transfer.wake.set()
        if isinstance(transfer, Outgoing):
            self._stop_sending(transfer)
            if by == LOCAL:
                self._halt(transfer, Halt.FAILED, reason[:200])
        elif not keep_part:
            self._discard_part(transfer)
            transfer.have, transfer.written = RangeSet(), RangeSet()
            transfer.part_path = None
            self._save(transfer, have="", part_path=None)
        else:
            # What was received but not written (a write that failed: disk full) is lost:
            # `have` (what ACCEPT claims on resume) must not count it.
            self.pending_bytes -= transfer.pending_bytes
            transfer.pending.clear()
            transfer.pending_bytes = 0
            transfer.have = transfer.written.copy()
        self.publish("file_transfer_failed", self._event(transfer, reason=reason))

    # -- sender -----------------------------------------------------------------------------
    def _on_answer(self, link: Link, answer: AnswerRecord, now: float) -> None:
        transfer = self.by_tid.get((link.fingerprint, answer.tid, "out"))
        if not isinstance(transfer, Outgoing):
            if answer.code == Answer.ACCEPT:  # something we no longer send: say so
                self._send_control(link, [to_raw(HaltRecord(answer.tid, Halt.CANCELLED, "unknown transfer"))])
            return
        transfer.answered = True
        code = answer.code
        if code == Answer.PENDING:
            return
        if code == Answer.ACCEPT:
            revivable = (transfer.state in (QUEUED, OFFERED, ACTIVE)
                         or (transfer.state in (PAUSED, FAILED) and transfer.stopped_by == PEER))
            if transfer.accepted or not revivable or transfer.fd is None:
                return
            have = chunks_to_bytes(((first, last + 1) for first, last in answer.have), transfer.chunk_size,
                                   transfer.size)
            transfer.restart_session(have)
            transfer.accepted = True
            log.info("%s accepted %s: %d of %d bytes to send", link.name, transfer.transfer_id,
                     transfer.need.total, transfer.size)
            transfer.control_tries = 0  # END goes out (and is retransmitted) once all is delivered
            if transfer.state != ACTIVE:
                self._set_state(transfer, ACTIVE)
            if transfer.started_at is None:
                transfer.started_at = now
                self.publish("file_transfer_started", self._event(transfer))
            channel = self.channels.get(link.fingerprint)
            if channel is not None and transfer not in channel.senders:
                channel.senders.append(transfer)
            if transfer.reader is None or transfer.reader.dead:
                transfer.reader = gevent.spawn(self._reader, transfer)
            transfer.wake.set()
            self._wake.set()
        elif code == Answer.PAUSED:
            if transfer.state in (OFFERED, ACTIVE):
                self._stop_sending(transfer)
                self._set_state(transfer, PAUSED, PEER)
                self.publish("file_transfer_paused", self._event(transfer, by=PEER))
        elif code == Answer.COMPLETE:
            if transfer.state in (OFFERED, ACTIVE, PAUSED, FAILED):
                self._stop_sending(transfer)
                sha = transfer.digest.hex() if transfer.digest is not None else None
                transfer.sha256 = sha
                self._set_state(transfer, COMPLETED, sha256=sha)
                transfer.need = RangeSet()
                self.counters["files_sent"] += 1
                elapsed = now - (transfer.started_at or now)
                self.publish("file_transfer_completed", self._event(transfer, path=transfer.path, sha256=sha,
                                                                     seconds=round(elapsed, 3),
                                                                     wire_bytes=transfer.wire_bytes))
                self._forget(transfer)
        elif code == Answer.REJECT:
            self._stop_sending(transfer)
            self._set_state(transfer, REJECTED, PEER, f"rejected by {transfer.peer}")
            self.publish("file_transfer_failed", self._event(transfer, reason=f"rejected by {transfer.peer}"))
            self._forget(transfer)
        elif code == Answer.CANCELLED:
            self._stop_sending(transfer)
            self._set_state(transfer, CANCELLED, PEER, f"cancelled by {transfer.peer}")
            self.publish("file_transfer_failed", self._event(transfer, reason=f"cancelled by {transfer.peer}"))
            self._forget(transfer)
        elif code == Answer.FAILED:
            if transfer.state not in TERMINAL and transfer.state != FAILED:
                self._fail(transfer, f"{transfer.peer}: {answer.reason or 'failed'}", PEER)

    def _stop_sending(self, transfer: Outgoing) -> None:
        transfer.accepted = False
        channel = self.channels.get(transfer.fingerprint)
        if channel is not None:
            if transfer in channel.senders:
                channel.senders.remove(transfer)
            channel.recovery.forget(lambda item: item[0] is not transfer)
        transfer.blocks.clear()
        transfer.cache_bytes = 0
        transfer.wake.set()

    def _reader(self, transfer: Outgoing) -> None:
        """Reads (and hashes, in order) the source for one outgoing transfer."""
        try:
            while not self._stopping and transfer.transfer_id in self.transfers:
                if (transfer.state != ACTIVE or not transfer.accepted or transfer.fd is None
                        or transfer.cache_bytes >= SEND_CACHE or transfer.read_pos >= transfer.size):
                    if transfer.read_pos >= transfer.size and transfer.digest is None and transfer.hash_pos >= transfer.size:
                        transfer.digest = transfer.hasher.digest()
                        self._wake.set()
                    transfer.wake.wait(1.0)
                    transfer.wake.clear()
                    continue
                start = transfer.read_pos  # block-aligned, and never past hash_pos
                if start < transfer.hash_pos:  # behind the hash: read only the blocks still needed
                    found = transfer.need.next_from(start)
                    if found is None or found[0] >= transfer.hash_pos:
                        transfer.read_pos = transfer.hash_pos
                        continue
                    start = transfer.read_pos = max(start, (found[0] // READ_BLOCK) * READ_BLOCK)
                end = min(start + READ_BLOCK, transfer.size)
                index = start // READ_BLOCK
                hash_it = start == transfer.hash_pos
                wanted = transfer.need.overlaps(start, end) and index not in transfer.blocks
                if not wanted and not hash_it:
                    transfer.read_pos = end
                    continue
                gen, hasher = transfer.gen, transfer.hasher
                data = self.pool.apply(_read_block, (transfer.fd, start, end - start, hasher if hash_it else None))
                if len(data) != end - start:
                    self._fail(transfer, "the source file changed during the transfer (it is shorter)", LOCAL)
                    return
                if hash_it and hasher is transfer.hasher:
                    transfer.hash_pos = end
                    if end >= transfer.size:
                        transfer.digest = hasher.digest()
                if gen != transfer.gen:
                    continue
                transfer.read_pos = end
                if transfer.need.overlaps(start, end) and index not in transfer.blocks:
                    transfer.blocks[index] = data
                    transfer.cache_bytes += len(data)
                self._wake.set()
        except OSError as exc:
            self._fail(transfer, f"cannot read {transfer.path}: {_reason(exc)}", LOCAL)
        finally:
            transfer.reader = None
            if transfer.transfer_id not in self.transfers or self._stopping or transfer.release:
                transfer.release = False
                self._close_fd(transfer)

    def _on_ack(self, channel: Channel, ack: AckRecord, now: float) -> None:
        recovery = channel.recovery
        channel.peer_window = ack.window
        top = max((last for _, last in ack.ranges), default=-1)
        if top > channel.acked_top:  # large datagrams reach the peer, even if they were late
            channel.acked_top = top  # (declared lost by a probe timeout): no black hole
            channel.ptos = 0
        acked, lost = recovery.on_ack(ack.ranges, ack.delay_us / 1e6, now)
        if not acked and not lost:
            return
        rtt = now - acked[-1].sent if acked else None
        channel.bbr.on_ack(acked, lost, rtt, recovery.bytes_in_flight, now)
        if acked:
            channel.ptos = 0
        for packet in acked:
            transfer, gen, offset, length = packet.item
            if gen == transfer.gen and transfer.accepted:
                if transfer.delivered(offset, length):
                    transfer.wake.set()
        for packet in lost:
            self._lost(packet)
        self._wake.set()

    def _lost(self, packet: SentPacket) -> None:
        transfer, gen, offset, length = packet.item
        self.counters["file_packets_lost"] += 1
        if gen == transfer.gen and transfer.accepted:
            transfer.lost(offset, length)

    def _on_probe_ack(self, channel: Channel, ack: ProbeAck) -> None:
        if channel.check_id and ack.probe_id == channel.check_id and ack.size == wire.MAX_DATAGRAM:
            if channel.ptos >= 3 and channel.max_datagram > wire.MAX_DATAGRAM:
                log.info("path to %s lost large datagrams: back to %d bytes", channel.link.name, wire.MAX_DATAGRAM)
                self.counters["file_mtu_fallbacks"] += 1
                channel.max_datagram = wire.MAX_DATAGRAM
                channel.bbr.mss = wire.MAX_DATAGRAM
                channel.probe_done, channel.probe_size = False, 0
                channel.probe_after = time.monotonic() + PROBE_RETRY_AFTER
            return
        if ack.probe_id != channel.probe_id or ack.size != channel.probe_size:
            return
        channel.max_datagram = max(channel.max_datagram, ack.size)
        channel.bbr.mss = channel.max_datagram
        channel.probe_size = 0
        log.debug("path to %s carries %d-byte datagrams", channel.link.name, channel.max_datagram)
        self._probe(channel, time.monotonic())

    def _probe(self, channel: Channel, now: float) -> None:
        """PLPMTUD-style search: padded probes up the ladder; a size is used once acknowledged."""
        timeout = max(0.1, 2 * channel.link.rtt.rto)
        if channel.probe_size:
            if now - channel.probe_sent < timeout:
                return
            if channel.probe_tries >= PROBE_TRIES:
                channel.probe_size = 0
                channel.probe_done = True
                return
        else:
            if channel.probe_done or now < channel.probe_after:
                return
            bigger = [size for size in PROBE_SIZES if size > channel.max_datagram]
            if not bigger:
                channel.probe_done = True
                return
            channel.probe_size, channel.probe_tries = bigger[0], 0
            channel.probe_id = (channel.probe_id + 1) & 0xFFFFFFFF
        channel.probe_tries += 1
        channel.probe_sent = now
        self.network.send_records(channel.link, [to_raw(Probe(channel.probe_id, channel.probe_size))],
                                  max_datagram=channel.probe_size, pad=True)

    def _maybe_end(self, channel: Channel, transfer: Outgoing, now: float) -> None:
        if transfer.accepted and not transfer.need and transfer.digest is not None and transfer.control_tries == 0:
            self._send_control(channel.link, [to_raw(End(transfer.tid, transfer.size, transfer.digest))])
            transfer.control_sent, transfer.control_tries = now, 1

    # -- the pump ---------------------------------------------------------------------------
    def _pump_loop(self) -> None:
        while not self._stopping:
            self._wake.clear()
            try:
                wait = self._pump_once(time.monotonic())
            except Exception:
                log.exception("file pump failed")
                wait = 0.05
            if wait == 0.0:
                gevent.idle()
            else:
                self._wake.wait(wait)

    def _pump_once(self, now: float) -> Optional[float]:
        """Send what pacing and windows allow on every link; seconds until worth trying again."""
        wait: Optional[float] = None
        for channel in list(self.channels.values()):
            if not channel.senders or not channel.link.connected:
                continue
            deadline = channel.recovery.deadline()
            if deadline is not None and now >= deadline:
                self._on_timeout(channel, now)
            for transfer in list(channel.senders):
                if transfer.accepted and not transfer.need and transfer.digest is not None:
                    self._maybe_end(channel, transfer, now)
            result = self._send_burst(channel, now)
            if result is not None:
                wait = result if wait is None else min(wait, result)
            deadline = channel.recovery.deadline()
            if deadline is not None:
                left = max(deadline - now, 0.0005)
                wait = left if wait is None else min(wait, left)
        return wait

    def _on_timeout(self, channel: Channel, now: float) -> None:
        lost, probe_timeout = channel.recovery.on_timeout(now)
        if probe_timeout:
            channel.ptos += 1
            channel.bbr.on_timeout(channel.ptos)
            self.counters["file_probe_timeouts"] += 1
            if channel.ptos >= 3 and channel.max_datagram > wire.MAX_DATAGRAM:
                # A black hole for large datagrams (a route change), or a peer that is not
                # running (a loaded machine, a pause)? A small PROBE tells: if it is answered
                # while DATA still is not, large datagrams are lost (`_on_probe_ack` falls back).
                channel.check_id = 0x80000000 | (channel.check_id + 1) & 0x7FFFFFFF
                self.network.send_records(channel.link, [to_raw(Probe(channel.check_id, wire.MAX_DATAGRAM))],
                                          max_datagram=wire.MAX_DATAGRAM, pad=True)
        else:
            channel.bbr.on_ack([], lost, None, channel.recovery.bytes_in_flight, now)
        for packet in lost:
            self._lost(packet)

    def _send_burst(self, channel: Channel, now: float) -> Optional[float]:
        link = channel.link
        bbr, recovery = channel.bbr, channel.recovery
        size = channel.max_datagram
        capacity = data_capacity(size)
        rate = bbr.pacing_rate
        pacing, upload = channel.pacing, self._upload_bucket
        pacing.rate = rate
        pacing.burst = max(4.0 * size, rate * 0.004)  # timers fire late: allow up to 4 ms of catching up
        pacing.refill(now)
        if self.upload_limit:
            upload.burst = max(4.0 * size, self.upload_limit * 0.01)
            upload.refill(now)
        for _ in range(max(1, min(BURST, BURST_BYTES // size))):
            if recovery.bytes_in_flight + size > bbr.cwnd:
                self.counters["file_wait_cwnd"] += 1
                return None  # an ACK will wake the pump
            if recovery.bytes_in_flight + size > max(channel.peer_window, 2 * size):
                self.counters["file_wait_receiver"] += 1
                return None  # the receiver's disk is behind: an ACK will open the window
            if pacing.tokens < size:
                self.counters["file_wait_pacing"] += 1
                return pacing.wait_for(size)
            if self.upload_limit and upload.tokens < size:
                return upload.wait_for(size)
            piece = self._next_piece(channel, capacity)
            if piece is None:
                self.counters["file_wait_disk"] += 1
                channel.idle = True
                return None  # a reader or an ACK will wake the pump
            transfer, offset, view = piece
            length = len(view)
            pn = channel.next_pn
            channel.next_pn += 1
            payload_size = length + wire.DATA_OVERHEAD + wire.RECORD_HEADER_LEN + 32
            packet = SentPacket(pn, payload_size, now, (transfer, transfer.gen, offset, length))
            bbr.on_sent(packet, recovery.bytes_in_flight, channel.idle, now)
            channel.idle = False
            recovery.on_sent(packet)
            if not self._send_data(link, transfer.tid, pn, offset, view):
                return None
            transfer.wire_bytes += length
            pacing.tokens -= payload_size
            if self.upload_limit:
                upload.tokens -= payload_size
        return 0.0

    def _send_data(self, link: Link, tid: bytes, pn: int, offset: int, view: memoryview) -> bool:
        """One DATA record alone in a datagram, built with one concatenation: per-datagram
        work is what limits Python peers (record objects would copy the bytes twice more)."""
        return self.network.send_payloads(link, [data_record_header(tid, pn, offset, len(view)) + view])

    def _next_piece(self, channel: Channel, capacity: int) -> Optional[tuple[Outgoing, int, memoryview]]:
        senders = channel.senders
        count = len(senders)
        for i in range(count):
            transfer = senders[(channel.rr + i) % count]
            if transfer.state != ACTIVE or not transfer.accepted:
                continue
            piece = transfer.next_piece(capacity)
            if piece is not None:
                channel.rr = (channel.rr + i + 1) % count
                if transfer.cursor >= transfer.size or transfer.cache_bytes < SEND_CACHE // 2:
                    transfer.wake.set()
                return transfer, piece[0], piece[1]
        return None
