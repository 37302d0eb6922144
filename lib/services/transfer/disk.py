"""Blocking file work of transfers: run in gevent's thread pool only."""

from __future__ import annotations

import errno
import hashlib
import os
import stat
from typing import Optional

from ...codec.filecodec import numbered_name, source_tag

from .direct import DirectStage

from .model import HASH_BLOCK, PART_DIR, RELEASE_ALIGN


# -- blocking helpers: run in gevent's thread pool only ------------------------------------------
def open_source(path: str, chunk_size: int) -> tuple[int, int, int, bytes]:
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


def read_block(fd: int, offset: int, length: int, hasher) -> bytes:
    data = os.pread(fd, length, offset)
    if hasher is not None and len(data) == length:
        hasher.update(data)
    return data


def write_runs(fd: int, runs: list[tuple[int, list]]) -> None:
    """Write each run (offset, buffers) with one pwritev, through the page cache.

    Its bytes are hashed after, read back (`hash_file`): reading back 4 MiB costs two calls,
    hashing datagram-sized pieces as they are written would cost one per piece, and each call
    hands the GIL back and forth with the event loop. (The steady flow does not come here: the
    run that continues the hashed prefix is hashed and written by the `DirectStage`.)"""
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


def write_and_hash(fd: int, runs: list[tuple[int, list]], hasher, start: int, end: int,
                   stage: Optional[DirectStage] = None):
    """One hand-off to the thread pool per batch: the run that continues the hashed prefix
    `start` through the stage (hashed from its buffer, written directly), the others through
    the page cache; then hash what was written up to `end` and not hashed yet.

    Returns (where the hashed prefix ends, the hash state there): a copy of `hasher`, so that
    a write that fails midway (a full disk) leaves the caller's prefix and hash as they were,
    to go on from after a resume."""
    hasher = hasher.copy()
    position = start
    if stage is not None and runs and start < runs[0][0] <= end:
        # The hashed prefix lags behind the flow it continues (after a gap was filled): catch
        # up (read back) first, so that the stage takes the flow again.
        position = hash_file(fd, start, runs[0][0], hasher)
    if stage is not None:
        runs, position = stage.take(fd, runs, hasher, position)
    if runs:
        write_runs(fd, runs)
    if end > position:
        position = hash_file(fd, position, end, hasher)
    return position, hasher


def sync_and_release(fd: int, start: int, end: int) -> int:
    """fdatasync the .part, then drop its cached pages in [start, end): bytes already written,
    hashed and now durable, which nothing reads again. A received file streams through the
    page cache instead of filling it: the user's cache is not evicted for a one-time copy, and
    the next writes reuse pages just freed (taking never-used memory costs far more, most of
    all in a VM whose host reclaims free memory). Returns where the released prefix ends."""
    os.fdatasync(fd)
    end -= end % RELEASE_ALIGN
    if end > start and hasattr(os, "posix_fadvise"):
        os.posix_fadvise(fd, start, end - start, os.POSIX_FADV_DONTNEED)
        return end
    return start


def hash_file(fd: int, start: int, end: int, hasher) -> int:
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


def open_part(part_path: str, new: bool) -> tuple[int, int]:
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


def free_space(directory: str) -> int:
    os.makedirs(directory, mode=0o700, exist_ok=True)
    info = os.statvfs(directory)
    return info.f_bavail * info.f_frsize


def finalize(fd: int, part_path: str, directory: str, name: str) -> str:
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
