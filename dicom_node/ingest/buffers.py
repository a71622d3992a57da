"""Received instances in page-aligned memory, and writes of them that bypass the page cache.

An :class:`InstanceBuffer` holds one instance's Part 10 bytes (file meta + data set) after a reserved
first block. The receiver reads the data set straight from the socket into it; the ingest journal
writes its record head into the reserved block and the whole record to disk with one ``O_DIRECT``
write. The buffer then goes straight back to a pool for the next instance (fresh memory costs a page
fault and a cleared page per 4 KiB); the materializer later reads consecutive records back from the
journal with large ``O_DIRECT`` reads and writes the instance files from there, again with
``O_DIRECT`` (all but a partial last block). The bytes are copied from the kernel once and never
again in user space, and the writes leave (almost) no dirty pages for the kernel to flush later.

``O_DIRECT`` needs the memory address, file offset and length aligned to the device's logical block
size; :data:`BLOCK` (4 KiB) covers every common disk. Where a file system refuses ``O_DIRECT``
(tmpfs, some network file systems) the same writes go through the page cache instead.
"""

from __future__ import annotations

import errno
import fcntl
import itertools
import mmap
import os
import socket
import sys
import uuid
from collections import deque
from pathlib import Path

from dicom_node.store import Bytes

BLOCK = 4096
HEAD_ROOM = BLOCK  # the reserved first block: the journal's record head
INITIAL_CAPACITY = 8 << 20  # virtual: pages are only backed once written
RECV_CHUNK = 16 << 20  # a huge declared length is read (and the buffer grown) this much at a time


PAGE = mmap.PAGESIZE
# Faulting a buffer's pages in with one madvise call, before the socket's bytes are copied into them,
# costs about half of taking one page fault per 4 KiB page during the copy (Linux 5.14+; else off).
_populate_write: int | None = getattr(mmap, "MADV_POPULATE_WRITE", 23) if sys.platform.startswith("linux") else None


def _anonymous(size: int) -> mmap.mmap:
    """Private anonymous memory (Python's default, shared, is backed by shmem and slower to fault in).

    Without transparent huge pages: each first touch would clear 2 MiB, most of it never used.
    """
    mapped = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    if hasattr(mmap, "MADV_NOHUGEPAGE"):
        mapped.madvise(mmap.MADV_NOHUGEPAGE)
    return mapped


def aligned_zeros(size: int) -> mmap.mmap:
    """``size`` bytes of zeros (a whole number of blocks) at a page-aligned address."""
    return _anonymous(round_up(size))


def round_up(n: int) -> int:
    """``n`` rounded up to a whole number of blocks."""
    return -(-n // BLOCK) * BLOCK


# Mappings of released buffers, reused: their pages are already backed, so a new instance costs no
# page faults and no page clearing (on a virtual machine, first touches of memory are slow too).
_POOL: deque[tuple[mmap.mmap, int]] = deque()  # (mapping, bytes of it already backed from its start)
POOL_MAX = 32
POOL_RESIDENT_MAX = 2 << 20  # only mappings that held at most this much go back to the pool


class InstanceBuffer:
    """One instance's Part 10 bytes in page-aligned anonymous memory, after :data:`HEAD_ROOM` bytes.

    Memory is returned when the buffer is garbage-collected. :meth:`release` hands it back at once
    for reuse: call it only when no view of the buffer is left.
    """

    __slots__ = ("_backed", "_mm", "length")

    def __init__(self, capacity: int = INITIAL_CAPACITY) -> None:
        size = HEAD_ROOM + round_up(max(capacity, 1))
        mapped = None
        self._backed = 0  # bytes from the mapping's start known to have their pages (page multiple)
        if size <= HEAD_ROOM + INITIAL_CAPACITY:
            try:
                mapped, self._backed = _POOL.pop()
            except IndexError:
                size = HEAD_ROOM + INITIAL_CAPACITY
        self._mm: mmap.mmap | None = mapped or _anonymous(size)
        self.length = 0  # Part 10 bytes held

    @classmethod
    def from_bytes(cls, data: Bytes) -> InstanceBuffer:
        """A buffer holding a copy of ``data``."""
        buf = cls(len(data))
        buf.append(data)
        return buf

    @property
    def _map(self) -> mmap.mmap:
        if self._mm is None:
            raise ValueError("instance buffer already released")
        return self._mm

    def _reserve(self, more: int) -> None:
        needed = HEAD_ROOM + round_up(self.length + more)
        if needed <= len(self._map):
            return
        bigger = _anonymous(max(needed, 2 * len(self._map)))
        bigger[: HEAD_ROOM + self.length] = self._map[: HEAD_ROOM + self.length]
        self._mm = bigger
        self._backed = (HEAD_ROOM + self.length) // PAGE * PAGE

    def _back(self, end: int) -> None:
        """Fault in the mapping's pages up to ``end`` in one call, ahead of writing them."""
        global _populate_write
        if end <= self._backed:
            return
        end = min(-(-end // PAGE) * PAGE, len(self._map))
        if _populate_write is not None:
            try:
                self._map.madvise(_populate_write, self._backed, end - self._backed)
            except (OSError, ValueError):  # an older kernel: the copies take the page faults
                _populate_write = None
        self._backed = end

    def append(self, data: Bytes) -> None:
        """Add ``data`` to the Part 10 bytes."""
        self._reserve(len(data))
        start = HEAD_ROOM + self.length
        self._back(start + len(data))
        self._map[start : start + len(data)] = data
        self.length += len(data)

    def recv(self, sock: socket.socket, n: int) -> None:
        """Read exactly ``n`` more bytes from ``sock`` into the buffer (ConnectionError if it closes)."""
        while n > 0:
            step = min(n, RECV_CHUNK)  # a lying length must not reserve memory before the bytes arrive
            self._reserve(step)
            start = HEAD_ROOM + self.length
            self._back(start + step)
            with memoryview(self._map) as whole, whole[start : start + step] as view:
                got = 0
                while got < step:
                    k = sock.recv_into(view[got:], step - got, socket.MSG_WAITALL)
                    if k == 0:
                        raise ConnectionError("peer closed the connection")
                    got += k
            self.length += step
            n -= step

    def view(self) -> memoryview:
        """The Part 10 bytes (release the view, or drop it, before growing the buffer)."""
        return memoryview(self._map)[HEAD_ROOM : HEAD_ROOM + self.length]

    def head(self) -> mmap.mmap:
        """The whole mapping: the reserved block at 0, the Part 10 bytes from :data:`HEAD_ROOM`."""
        return self._map

    def padded(self, start: int) -> memoryview:
        """Bytes from ``start`` (block-aligned) to the end of the data, zero-padded to whole blocks."""
        end = HEAD_ROOM + self.length
        padded_end = start + round_up(end - start)
        self._map[end:padded_end] = bytes(padded_end - end)
        return memoryview(self._map)[start:padded_end]

    def release(self) -> None:
        """Give the memory back for reuse by the next buffer (no view of it may be held any more)."""
        mapped, self._mm = self._mm, None
        if (
            mapped is not None
            and len(mapped) == HEAD_ROOM + INITIAL_CAPACITY
            and HEAD_ROOM + self.length <= POOL_RESIDENT_MAX
            and len(_POOL) < POOL_MAX
        ):
            _POOL.append((mapped, self._backed))


def open_direct(path: Path, flags: int, mode: int = 0o644) -> tuple[int, bool]:
    """``os.open`` with ``O_DIRECT`` where the file system allows it; returns (fd, direct)."""
    direct = getattr(os, "O_DIRECT", 0)
    if direct:
        try:
            return os.open(path, flags | direct, mode), True
        except OSError as exc:
            if exc.errno != errno.EINVAL:
                raise
    return os.open(path, flags, mode), False


def pwrite_direct(fd: int, direct: bool, data: memoryview, offset: int) -> tuple[int, bool]:
    """Write ``data`` at ``offset``; if the kernel refuses it unbuffered, drop ``O_DIRECT`` and retry.

    Returns (bytes written, whether the descriptor is still unbuffered).
    """
    try:
        return os.pwritev(fd, [data], offset), direct
    except OSError as exc:
        if not direct or exc.errno != errno.EINVAL:
            raise
    fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_DIRECT)
    return os.pwritev(fd, [data], offset), False


def pread_direct(fd: int, direct: bool, target: memoryview, offset: int) -> tuple[int, bool]:
    """Fill ``target`` from ``offset`` (fewer bytes only at the end of the file), unbuffered if the
    kernel takes it so; returns (bytes read, whether the descriptor is still unbuffered)."""
    got = 0
    while got < len(target):
        try:
            with target[got:] as rest:
                k = os.preadv(fd, [rest], offset + got)
        except OSError as exc:
            if not direct or exc.errno != errno.EINVAL:
                raise
            fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_DIRECT)
            direct = False
            continue
        if k == 0:
            break
        got += k
    return got, direct


_tmp_names = itertools.count()


def write_file(path: Path, data: memoryview) -> int:
    """Write ``data`` to ``path`` through a temporary name, without a flush; returns the size.

    ``data`` should start at a block-aligned address (an :class:`InstanceBuffer`'s view, a journal
    read): its whole blocks are then written unbuffered where possible, leaving no dirty pages behind,
    and the last partial block through the page cache (padding it and truncating the file back would
    read that block from the disk again). The caller's checkpoint (``syncfs``) makes names, sizes and
    that last block durable. The folder is created when the temporary file cannot be, for want of it.
    """
    folder = path.parent
    tmp = folder / f".{path.name}.{os.getpid()}-{next(_tmp_names)}.tmp"
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL
    try:
        fd, direct = open_direct(tmp, flags)
    except FileNotFoundError:
        folder.mkdir(parents=True, exist_ok=True)
        fd, direct = open_direct(tmp, flags)
    except FileExistsError:  # left behind by an earlier process that had our pid
        tmp = folder / f".{path.name}.{uuid.uuid4().hex}.tmp"
        fd, direct = open_direct(tmp, flags)
    size = len(data)
    try:
        try:
            written = 0
            whole = size // BLOCK * BLOCK if direct else 0
            if whole:
                with data[:whole] as blocks:
                    written, direct = pwrite_direct(fd, direct, blocks, 0)
            if written == whole and whole < size:
                if direct:
                    fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_DIRECT)
                with data[whole:] as rest:
                    written += os.pwrite(fd, rest, whole)
            if written != size:
                raise OSError(errno.EIO, f"short write ({written} of {size} bytes)")
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return size
