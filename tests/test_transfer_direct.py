"""The receiver's streaming write (`DirectStage`): the run that continues the hashed prefix is
hashed from an aligned buffer and written with O_DIRECT; anything else goes through the page
cache. On real files: whatever the arrival order, batching, restarts or a filesystem that
refuses direct I/O, the .part ends up holding exactly the file and the hash is the file's."""

import errno
import hashlib
import os
import random
import sys
import tempfile

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from chatp2p_core.codec.filecodec import RangeSet
from chatp2p_core.services.transfer import direct
from chatp2p_core.services.transfer.direct import ALIGN, DirectStage
from chatp2p_core.services.transfer.disk import write_and_hash

from poll import wait_for
from test_transfer import direct_io_works
from test_transfer_disk import MEMORY_FILESYSTEMS, filesystem_type

work = None
DIRECT_WORKS = False  # does the directory's filesystem take O_DIRECT? (tmpfs before Linux 6.6 does not)


def setup_module():
    global work, DIRECT_WORKS
    if not sys.platform.startswith("linux"):
        pytest.skip("not Linux: the direct write path is for Linux (elsewhere the stage retires at once)")
    candidates = [tempfile.gettempdir(), "/var/tmp", os.path.dirname(os.path.abspath(__file__))]
    writable = [d for d in candidates if os.access(d, os.W_OK)]
    on_disk = [d for d in writable if filesystem_type(d) not in MEMORY_FILESYSTEMS]
    # The first directory whose filesystem takes O_DIRECT; else one that does not (the stage
    # then retires at once, and the tests check that everything still arrives).
    chosen = next((d for d in [*on_disk, *writable] if direct_io_works(d)), writable[0])
    work = tempfile.TemporaryDirectory(prefix="chatp2p-direct-", dir=chosen)
    DIRECT_WORKS = direct_io_works(work.name)


def stage_opener():
    """The stage's second descriptor: O_DIRECT where the filesystem takes it, else a plain one.
    The failure tests below inject the kernel's answers into the stage's writes, so they run
    either way."""
    if DIRECT_WORKS:
        return direct.open_direct
    return lambda path: os.open(path, os.O_WRONLY | os.O_CLOEXEC | os.O_NOFOLLOW)


def teardown_module():
    if work is not None:
        work.cleanup()


class Receiver:
    """The receiver writer's use of `write_and_hash`, as `Receiving._write_pending` does it:
    pending pieces sorted and joined into runs, the written ranges, the hashed prefix moving at
    most `step` past what the stage took."""

    def __init__(self, size: int, capacity: int = 4 * ALIGN, step: int = 3 * ALIGN, opener=direct.open_direct):
        self.size = size
        self.path = os.path.join(work.name, f"part-{os.urandom(6).hex()}")
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        self.capacity, self.step, self.opener = capacity, step, opener
        self.stage = DirectStage(self.path, capacity, opener)
        self.written = RangeSet()
        self.hasher = hashlib.sha256()
        self.hash_pos = 0
        self.direct_bytes = 0

    def batch(self, pieces: list[tuple[int, bytes]]) -> None:
        runs: list[tuple[int, list]] = []
        run_end = -1
        written = self.written.copy()
        for start, data in sorted(pieces):
            written.add(start, start + len(data))
            if start == run_end:
                runs[-1][1].append(data)
            else:
                runs.append((start, [data]))
            run_end = start + len(data)
        frontier = min(written.prefix_end(0), self.hash_pos + self.step)
        self.hash_pos, self.hasher = write_and_hash(self.fd, runs, self.hasher, self.hash_pos, frontier, self.stage)
        self.written = written  # only once written: a failed batch is received again

    def restart(self) -> None:
        """The writer's file closed and opened again (a pause, a restart): a new stage, which
        must read back the partial block it continues."""
        self.direct_bytes += self.stage.direct_bytes
        self.stage.close()
        self.stage = DirectStage(self.path, self.capacity, self.opener)

    def finish(self) -> bytes:
        while self.hash_pos < self.size:  # what the writer does while caught up: hash the rest
            before = self.hash_pos
            self.batch([])
            assert self.hash_pos > before, "the hashed prefix must move on once everything is written"
        self.direct_bytes += self.stage.direct_bytes
        self.stage.close()
        with open(self.path, "rb") as part:
            content = part.read()
        os.close(self.fd)
        os.unlink(self.path)
        return content


def cut(data: bytes, sizes: list[int]) -> list[tuple[int, bytes]]:
    pieces, offset, i = [], 0, 0
    while offset < len(data):
        n = sizes[i % len(sizes)]
        pieces.append((offset, data[offset:offset + n]))
        offset, i = offset + n, i + 1
    return pieces


def test_an_in_order_stream_is_written_directly_and_hashed_from_the_buffer():
    data = os.urandom(300_001)  # not a whole number of blocks: the last one goes through the cache
    receiver = Receiver(len(data), capacity=16 * ALIGN, step=1 << 30)
    pieces = cut(data, [1400, 1372, 5000])
    for first in range(0, len(pieces), 37):
        receiver.batch(pieces[first:first + 37])
        # After every batch everything written is hashed (nothing left to read back) and in the file.
        assert receiver.hash_pos == receiver.written.prefix_end(0)
        assert os.pread(receiver.fd, receiver.hash_pos, 0) == data[:receiver.hash_pos]
    stage = receiver.stage
    assert receiver.finish() == data
    assert receiver.hasher.digest() == hashlib.sha256(data).digest()
    if DIRECT_WORKS:
        assert receiver.direct_bytes == len(data) - len(data) % ALIGN, "all whole blocks went out directly"
        assert not stage.retired
    else:
        assert receiver.direct_bytes == 0 and stage.retired


def test_data_after_a_gap_goes_through_the_page_cache_and_the_stream_resumes_after_it():
    data = os.urandom(200_000)
    receiver = Receiver(len(data), capacity=8 * ALIGN, step=16 * ALIGN)
    pieces = cut(data, [1400])
    lost = pieces[20:25]
    receiver.batch(pieces[:20])
    receiver.batch(pieces[25:60])  # after the gap: not the stage's (it does not continue the prefix)
    assert receiver.hash_pos == 20 * 1400
    receiver.batch(lost)           # the gap filled: the stage takes it, the rest is read back
    assert receiver.hash_pos == 60 * 1400
    before = receiver.stage.direct_bytes
    for first in range(60, len(pieces), 10):
        receiver.batch(pieces[first:first + 10])  # the stream, through the stage again
        assert receiver.hash_pos == receiver.written.prefix_end(0)
    assert receiver.finish() == data
    assert receiver.hasher.digest() == hashlib.sha256(data).digest()
    if DIRECT_WORKS:
        assert receiver.direct_bytes - before > len(data) - 61 * 1400 - 2 * ALIGN


def test_a_new_stage_continues_a_partial_block_written_before_it():
    data = os.urandom(100_000)
    receiver = Receiver(len(data), capacity=4 * ALIGN, step=1 << 30)
    pieces = cut(data, [1000])
    receiver.batch(pieces[:7])     # 7000 bytes: the second block is partial, in the file
    receiver.restart()
    receiver.batch(pieces[7:])     # the new stage reads back the block's first 2904 bytes
    assert receiver.finish() == data
    assert receiver.hasher.digest() == hashlib.sha256(data).digest()


def test_a_filesystem_that_refuses_direct_io_at_open_leaves_the_page_cache_path():
    def refuse(path: str) -> int:
        raise OSError(errno.EINVAL, "Invalid argument")

    data = os.urandom(50_000)
    receiver = Receiver(len(data), opener=refuse)
    stage = receiver.stage
    for first in range(0, 50_000, 9000):
        receiver.batch([(first, data[first:first + 9000])])
    assert stage.retired and stage.refusal and stage.fd is None
    assert receiver.finish() == data
    assert receiver.hasher.digest() == hashlib.sha256(data).digest()


@pytest.mark.parametrize("refused_write", [1, 2, 5])
def test_a_direct_write_refused_midway_loses_nothing(monkeypatch, refused_write):
    """The kernel refuses the n-th direct write (EINVAL): what the buffer held and the rest of
    the run go through the page cache, the hash is unchanged, later batches too."""
    real = direct._write_all
    calls = {"direct": 0}

    def write_all(fd, data, offset):
        stage_fds = {receiver.stage.fd}
        if fd in stage_fds:
            calls["direct"] += 1
            if calls["direct"] == refused_write:
                raise OSError(errno.EINVAL, "Invalid argument")
        return real(fd, data, offset)

    monkeypatch.setattr(direct, "_write_all", write_all)
    data = os.urandom(120_000)
    receiver = Receiver(len(data), capacity=2 * ALIGN, step=1 << 30, opener=stage_opener())
    stage = receiver.stage
    receiver.batch([(0, data[:70_000])])  # one large piece: refused while it is being copied
    receiver.batch([(70_000, data[70_000:])])
    assert stage.retired and calls["direct"] == refused_write
    assert receiver.finish() == data
    assert receiver.hasher.digest() == hashlib.sha256(data).digest()


def test_a_full_disk_fails_the_batch_and_leaves_the_hash_where_it_was(monkeypatch):
    """A full disk is the transfer's failure (the writer fails it with the reason), not a
    reason to retry through the page cache; and what was hashed before the write failed does
    not count: after the space is freed, the same bytes come again and the hash is the file's."""
    real = direct._write_all
    disk_full = True

    def write_all(fd, data, offset):
        if disk_full and fd == receiver.stage.fd and offset >= 4 * ALIGN:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(fd, data, offset)

    monkeypatch.setattr(direct, "_write_all", write_all)
    data = os.urandom(20 * ALIGN + 123)
    receiver = Receiver(len(data), capacity=2 * ALIGN, step=1 << 30, opener=stage_opener())
    receiver.batch([(0, data[:3 * ALIGN + 10])])
    with pytest.raises(OSError) as raised:
        receiver.batch([(3 * ALIGN + 10, data[3 * ALIGN + 10:12 * ALIGN])])
    assert raised.value.errno == errno.ENOSPC
    assert receiver.hash_pos == 3 * ALIGN + 10 and not receiver.stage.retired
    disk_full = False  # space freed, the transfer resumed: the batch is received again
    receiver.batch([(3 * ALIGN + 10, data[3 * ALIGN + 10:12 * ALIGN])])
    receiver.batch([(12 * ALIGN, data[12 * ALIGN:])])
    assert receiver.finish() == data
    assert receiver.hasher.digest() == hashlib.sha256(data).digest()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(size=st.integers(1, 60_000), sizes=st.lists(st.integers(1, 9000), min_size=1, max_size=6),
       seed=st.integers(0, 2**32 - 1), capacity_blocks=st.integers(2, 6), step_blocks=st.integers(1, 8))
def test_any_arrival_order_and_batching_writes_the_file_and_its_hash(size, sizes, seed, capacity_blocks, step_blocks):
    """Pieces in a shuffled-but-mostly-forward order (as loss and resends give), cut into
    batches at random, with restarts of the stage between some: the file and its SHA-256."""
    rng = random.Random(seed)
    data = rng.randbytes(size)
    receiver = Receiver(size, capacity=capacity_blocks * ALIGN, step=step_blocks * ALIGN)
    pieces = cut(data, sizes)
    for i in range(len(pieces) - 1):  # local disorder: swap neighbours now and then
        if rng.random() < 0.2:
            pieces[i], pieces[i + 1] = pieces[i + 1], pieces[i]
    if rng.random() < 0.3 and len(pieces) > 3:  # a lost piece, resent at the end
        pieces.append(pieces.pop(rng.randrange(len(pieces) - 1)))
    while pieces:
        take = rng.randint(1, 12)
        receiver.batch(pieces[:take])
        pieces = pieces[take:]
        if rng.random() < 0.15:
            receiver.restart()
    assert receiver.finish() == data
    assert receiver.hasher.digest() == hashlib.sha256(data).digest()


# -- the node's receiver: at most MAX_DIRECT_STAGES buffers at once ----------------------------------
class InlinePool:
    """The thread pool's `apply`, run inline (the blocking file work is the same)."""

    @staticmethod
    def apply(func, args=()):
        return func(*args)


def node_receiver():
    """The node's `Receiving` on its own: inline pool, no store (what it records is not the
    question here)."""
    import collections

    from chatp2p_core.services.transfer.receiver import Receiving

    class Receiver(Receiving):
        def __init__(self):
            self.transfers, self.channels = {}, {}
            self.pending_bytes = 0
            self.counters = collections.Counter()
            self.pool = InlinePool()
            self._stopping = False

        def _save(self, transfer, **fields):
            pass

    return Receiver()


def open_incoming(receiver, count: int, size: int) -> tuple[list, list[bytes]]:
    """`count` ACTIVE incoming transfers of `size` random bytes each, their .part open."""
    from chatp2p_core.services.transfer.model import ACTIVE, Incoming

    transfers, datas = [], []
    for n in range(count):
        path = os.path.join(work.name, f"node-{n}-{os.urandom(4).hex()}.part")
        row = {"transfer_id": f"{n:032x}", "contact_id": 1, "file_name": "f.bin", "path": None, "size": size,
               "chunk_size": 1 << 16, "tag": b"", "state": ACTIVE.value, "stopped_by": None, "sha256": None,
               "error": None, "part_path": path, "have": ""}
        transfer = Incoming(row, b"f" * 32, "Bob")
        transfer.fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        receiver.transfers[transfer.transfer_id] = transfer
        transfers.append(transfer)
        datas.append(os.urandom(size))
    return transfers, datas


def deliver(receiver, transfer, data: bytes, start: int, stop: int) -> None:
    receiver._queue(transfer, start, stop, [data[start:stop]])
    receiver._write_pending(transfer)


def check_and_close(transfers, datas: list[bytes], size: int) -> None:
    for transfer, data in zip(transfers, datas):
        assert transfer.hash_pos == size and transfer.hasher.digest() == hashlib.sha256(data).digest()
        assert os.pread(transfer.fd, size + 1, 0) == data
        if transfer.stage is not None:
            transfer.stage.close()
        os.close(transfer.fd)


def test_at_most_max_direct_stages_transfers_hold_a_buffer_and_a_freed_one_is_taken_again():
    from chatp2p_core.services.transfer.model import MAX_DIRECT_STAGES

    receiver = node_receiver()
    size = 64 * ALIGN
    transfers, datas = open_incoming(receiver, MAX_DIRECT_STAGES + 1, size)
    for transfer, data in zip(transfers, datas):
        deliver(receiver, transfer, data, 0, size // 2)
    staged = [t for t in transfers if t.stage is not None]
    assert len(staged) == MAX_DIRECT_STAGES and transfers[-1].stage is None
    first = transfers[0]
    receiver._release_stage(first)  # its file closed (finished, failed): the buffer is freed
    for transfer, data in zip(transfers[1:], datas[1:]):
        deliver(receiver, transfer, data, size // 2, size)
    assert transfers[-1].stage is not None, "the freed buffer went to the transfer without one"
    deliver(receiver, first, datas[0], size // 2, size)
    assert first.stage is None  # all taken again: through the page cache
    check_and_close(transfers, datas, size)


def test_a_paused_or_quiet_transfer_gives_its_buffer_to_one_that_moves(monkeypatch):
    """A paused transfer's writer, once caught up, frees its direct-write buffer at once; an
    active one whose data stopped frees it after a quiet SYNC_INTERVAL. The transfer without a
    buffer takes it, and the paused one, resumed, still ends with the exact file and hash."""
    import gevent

    from chatp2p_core.services.transfer import receiver as receiving
    from chatp2p_core.services.transfer.model import ACTIVE, MAX_DIRECT_STAGES, PAUSED

    monkeypatch.setattr(receiving, "SYNC_INTERVAL", 3600.0)  # nothing is quiet for long enough yet
    receiver = node_receiver()
    size = 64 * ALIGN + 1000  # a partial block at the end of each half
    half = 32 * ALIGN + 500
    transfers, datas = open_incoming(receiver, MAX_DIRECT_STAGES + 2, size)
    for transfer, data in zip(transfers, datas):
        deliver(receiver, transfer, data, 0, half)
    paused, quiet, waiting = transfers[0], transfers[1], transfers[-2:]
    assert paused.stage is not None and quiet.stage is not None and all(t.stage is None for t in waiting)

    paused.state = PAUSED
    writers = [gevent.spawn(receiver._writer, transfer) for transfer in (paused, quiet)]
    try:
        wait_for(lambda: paused.stage is None, message="the paused transfer's buffer freed", sleep=gevent.sleep)
        assert quiet.stage is not None, "an active transfer keeps its buffer while data may come"
        gevent.kill(writers.pop())
        monkeypatch.setattr(receiving, "SYNC_INTERVAL", 0.05)  # now the quiet wait ends (a sync with it)
        writers.append(gevent.spawn(receiver._writer, quiet))
        wait_for(lambda: quiet.stage is None, message="the quiet transfer's buffer freed", sleep=gevent.sleep)
        assert paused.state == PAUSED and quiet.state == ACTIVE and paused.fd is not None and quiet.fd is not None
    finally:
        gevent.killall(writers)
    for transfer, data in zip(waiting, datas[-2:]):
        deliver(receiver, transfer, data, half, size)
        assert transfer.stage is not None, "a freed buffer went to a transfer without one"

    paused.state = ACTIVE  # resumed: the rest through whatever slot is free, the file exact
    for transfer, data in zip(transfers[:-2], datas[:-2]):
        deliver(receiver, transfer, data, half, size)
    check_and_close(transfers, datas, size)
