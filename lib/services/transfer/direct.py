"""The receiver's streaming write: bytes that continue the hashed prefix are hashed and written
from one aligned buffer with O_DIRECT, around the page cache. Blocking: thread pool only.

Why: a received file is written once and not read again by us. Through the page cache every
4 KiB page is allocated, copied into, written back, then released (`sync_and_release`), and the
hash reads it all back; in a VM whose host reclaims free guest memory, a page never used before
costs microseconds more. A direct write from a reused buffer skips all of that: the receiver
spent about 10 % less CPU per GiB on a 1500-byte path (bench/bench_transfer.py).

What the stage does not take (data after a gap, a filesystem that refuses O_DIRECT) goes
through the page cache as before (`disk.write_runs`) and is hashed by reading it back."""

from __future__ import annotations

import contextlib
import errno
import mmap
import os
from typing import Callable, Optional

ALIGN = 4096            # offsets, lengths and the buffer of a direct write: a multiple of this
STAGE_BYTES = 2 << 20   # the buffer: a direct write goes out each time it is full (and at the end of a batch)
GROUP_BYTES = 128 << 10  # pieces joined before they are copied into it (below malloc's mmap threshold)

# What open(O_DIRECT) or a direct write says when the filesystem or device will not do it.
REFUSALS = {errno.EINVAL, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EPERM}

Runs = list[tuple[int, list]]


def open_direct(path: str) -> int:
    """A second descriptor on the .part that writes around the page cache."""
    if not hasattr(os, "O_DIRECT"):
        raise OSError(errno.EOPNOTSUPP, "no O_DIRECT on this system")
    return os.open(path, os.O_WRONLY | os.O_DIRECT | os.O_CLOEXEC | os.O_NOFOLLOW)


class DirectStage:
    """One incoming transfer's aligned buffer. It holds the file's bytes [base, base + fill):
    `base` is a multiple of ALIGN, and every byte held is already hashed and in the file
    (the last partial block through the page cache, rewritten directly once it is whole).

    Used by one writer at a time (the transfer's writer hands it to the pool); `retired` once
    the filesystem refuses direct I/O, after which the caller's page-cache path does all."""

    def __init__(self, path: str, capacity: int = STAGE_BYTES,
                 opener: Callable[[str], int] = open_direct) -> None:
        assert capacity % ALIGN == 0 and capacity >= 2 * ALIGN
        self.path = path
        self.capacity = capacity
        self.opener = opener
        self.fd: Optional[int] = None
        self.buffer: Optional[mmap.mmap] = None  # page-aligned, as O_DIRECT wants
        self.view: Optional[memoryview] = None
        self.base = 0
        self.fill = 0
        self.hashed = 0            # bytes of the buffer already hashed (the rest: new this batch)
        self.primed = False        # the buffer holds what it says (false until the first use)
        self.retired = False
        self.refusal: Optional[str] = None  # why the filesystem refused, once it did
        self.direct_bytes = 0      # written directly, in all

    def take(self, fd: int, runs: Runs, hasher, start: int) -> tuple[Runs, int]:
        """Write and hash the run that continues the hashed prefix `start` (runs are sorted;
        at most the first one does). Returns the runs left to the page-cache path and where
        the hashed prefix now ends."""
        if self.retired or not runs or runs[0][0] != start or not self._prime(fd, start):
            return runs, start
        try:
            return self._take(fd, runs, hasher, start)
        except BaseException:
            self.primed = False  # what the buffer holds may not be in the file: read back next time
            raise

    def _take(self, fd: int, runs: Runs, hasher, start: int) -> tuple[Runs, int]:
        pieces = runs[0][1]
        count = len(pieces)
        index, offset = 0, start  # the next piece, and where it begins in the file
        while index < count:
            # Datagram-sized pieces are joined (one copy in C) up to GROUP_BYTES, then copied
            # into the buffer at once: a Python step per piece cost more than the copy.
            end, size = index + 1, len(pieces[index])
            while end < count and size < GROUP_BYTES:
                size += len(pieces[end])
                end += 1
            group = pieces[index] if end - index == 1 else b"".join(pieces[index:end])
            try:
                self._add(group, hasher)
            except OSError as exc:
                if exc.errno not in REFUSALS:
                    raise
                done = self._retire(fd, exc)  # all the buffer held: hashed and written
                rest = pieces[end:]
                if done < offset + len(group):  # refused before the group was all copied
                    rest = [memoryview(group)[done - offset:], *rest]
                return ([(done, rest)] if rest else []) + runs[1:], done
            index, offset = end, offset + len(group)
        try:
            self._drain(hasher)
        except OSError as exc:
            if exc.errno not in REFUSALS:
                raise
            return runs[1:], self._retire(fd, exc)
        if self.fill:  # the last partial block: in the file now, directly later when whole
            _write_all(fd, self.view[:self.fill], self.base)
        return runs[1:], self.base + self.fill

    def close(self) -> None:
        if self.fd is not None:
            with contextlib.suppress(OSError):
                os.close(self.fd)
            self.fd = None
        if self.buffer is not None:
            try:
                self.view.release()
                self.buffer.close()
            except BufferError:  # a slice still held (by an error's traceback): freed with it
                pass
            self.buffer = self.view = None
        self.primed = False

    # -- inside -----------------------------------------------------------------------------
    def _prime(self, fd: int, start: int) -> bool:
        """Ready to continue at `start`: the direct descriptor open and the buffer holding the
        bytes of start's block that come before it (read back when the buffer does not)."""
        if self.fd is None:
            try:
                self.fd = self.opener(self.path)
            except OSError as exc:
                if exc.errno not in REFUSALS:
                    raise
                self.retired, self.refusal = True, os.strerror(exc.errno)
                return False
            self.buffer = mmap.mmap(-1, self.capacity)
            self.view = memoryview(self.buffer)
        if self.primed and self.base + self.fill == start:
            return True
        base = start - start % ALIGN
        head = os.pread(fd, start - base, base)
        if len(head) != start - base:  # the file is shorter than its hashed prefix: not ours to fix
            self.primed = False
            return False
        self.buffer[:len(head)] = head
        self.base, self.fill, self.hashed, self.primed = base, len(head), len(head), True
        return True

    def _add(self, piece, hasher) -> None:
        size = len(piece)
        fill = self.fill
        if size <= self.capacity - fill:  # the usual: a datagram's bytes fit
            self.buffer[fill:fill + size] = piece
            self.fill = fill + size
            if self.fill == self.capacity:
                self._drain(hasher)
            return
        view = memoryview(piece)
        while view:
            n = min(self.capacity - self.fill, len(view))
            self.buffer[self.fill:self.fill + n] = view[:n]
            self.fill += n
            view = view[n:]
            if self.fill == self.capacity:
                self._drain(hasher)

    def _drain(self, hasher) -> None:
        """Hash what is new, write the whole blocks directly, keep the partial one."""
        if self.hashed < self.fill:
            hasher.update(self.view[self.hashed:self.fill])
            self.hashed = self.fill
        whole = self.fill - self.fill % ALIGN
        if whole:
            _write_all(self.fd, self.view[:whole], self.base)
            self.direct_bytes += whole
            tail = self.fill - whole
            if tail:
                self.buffer.move(0, whole, tail)
            self.base, self.fill, self.hashed = self.base + whole, tail, tail

    def _retire(self, fd: int, exc: OSError) -> int:
        """The filesystem refused a direct write: what the buffer holds goes through the page
        cache (hashed first if it was not), and the stage is not used again. Returns where
        the hashed prefix ends."""
        self.retired, self.refusal = True, os.strerror(exc.errno or errno.EINVAL)
        end = self.base + self.fill
        if self.fill:  # `_drain` hashes before it writes: all of it is hashed already
            _write_all(fd, self.view[:self.fill], self.base)
        self.close()
        return end


def _write_all(fd: int, data: memoryview, offset: int) -> None:
    while data:
        n = os.pwrite(fd, data, offset)
        data, offset = data[n:], offset + n
