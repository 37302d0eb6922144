"""The receiver's blocking file helpers on a real file: what a sync made durable (and was
hashed) leaves the page cache, read back with mincore(2), and nothing above it does."""

import ctypes
import ctypes.util
import hashlib
import mmap
import os
import sys
import tempfile

import pytest

from chatp2p_core.services.transfer.disk import sync_and_release, write_and_hash
from chatp2p_core.services.transfer.model import RELEASE_ALIGN

MIB = 1 << 20
PAGE = mmap.PAGESIZE
work = None


MEMORY_FILESYSTEMS = {"tmpfs", "ramfs"}  # their pages are the data: nothing to release


def filesystem_type(path: str) -> str:
    """The type of the filesystem `path` is on (the longest mount point above it)."""
    path, best, kind = os.path.realpath(path), "", ""
    with open("/proc/self/mounts") as mounts:
        for line in mounts:
            fields = line.split()
            point = fields[1].replace("\\040", " ")
            if (path == point or path.startswith(point.rstrip("/") + "/")) and len(point) >= len(best):
                best, kind = point, fields[2]
    return kind


def setup_module():
    global work
    if not sys.platform.startswith("linux"):
        pytest.skip("not Linux: the page-cache release uses posix_fadvise and this test reads residency with mincore(2)")
    # A disk-backed directory: /tmp is a tmpfs on many systems (Debian 13 among them).
    candidates = [tempfile.gettempdir(), "/var/tmp", os.path.dirname(os.path.abspath(__file__))]
    on_disk = [d for d in candidates if os.access(d, os.W_OK) and filesystem_type(d) not in MEMORY_FILESYSTEMS]
    if not on_disk:
        pytest.skip(f"no writable disk-backed directory among {candidates}: on a tmpfs the cached pages are the data and cannot be released")
    work = tempfile.TemporaryDirectory(prefix="chatp2p-disk-", dir=on_disk[0])


def teardown_module():
    if work is not None:
        work.cleanup()


def resident(fd: int, size: int) -> list[bool]:
    """Per page of the file's first `size` bytes: is it in the page cache? (Mapping the file
    reads nothing in; mincore only looks.)"""
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long)
    libc.mincore.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p)
    libc.munmap.argtypes = (ctypes.c_void_p, ctypes.c_size_t)
    address = libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
    assert address not in (None, ctypes.c_void_p(-1).value), os.strerror(ctypes.get_errno())
    try:
        pages = (ctypes.c_ubyte * ((size + PAGE - 1) // PAGE))()
        assert libc.mincore(address, size, pages) == 0, os.strerror(ctypes.get_errno())
        return [bool(page & 1) for page in pages]
    finally:
        libc.munmap(address, size)


def written_part(size: int) -> tuple[int, bytes]:
    """A .part written and hashed as the receiver's writer does: (fd, its bytes)."""
    data = os.urandom(size)
    fd = os.open(os.path.join(work.name, f"part-{size}-{os.urandom(4).hex()}"), os.O_RDWR | os.O_CREAT, 0o600)
    hasher = hashlib.sha256()
    pieces = [memoryview(data)[offset:offset + 1400] for offset in range(0, size, 1400)]
    position, hasher = write_and_hash(fd, [(0, pieces)], hasher, 0, size)
    assert position == size and hasher.digest() == hashlib.sha256(data).digest()
    return fd, data


def test_a_sync_releases_the_durable_hashed_prefix_and_keeps_the_rest():
    size = 8 * MIB
    fd, data = written_part(size)
    try:
        assert all(resident(fd, size)), "just written: all in the page cache"
        # What was hashed up to 5.5 MiB: released up to the 5 MiB boundary, never beyond.
        released = sync_and_release(fd, 0, 5 * MIB + MIB // 2)
        assert released == 5 * MIB
        pages = resident(fd, size)
        boundary = released // PAGE
        assert not any(pages[:boundary]), "the durable, hashed prefix left the page cache"
        assert all(pages[boundary:]), "what lies above it is still cached (it may be read back)"
        # Nothing is lost: the bytes read back (from the disk) are the ones written.
        assert os.pread(fd, size, 0) == data
        # The next sync goes on from there; a prefix shorter than the alignment releases nothing.
        assert sync_and_release(fd, released, released + RELEASE_ALIGN - 1) == released
        assert sync_and_release(fd, released, size) == size
    finally:
        os.close(fd)


def test_release_alignment_is_whole_pages():
    assert RELEASE_ALIGN % PAGE == 0
