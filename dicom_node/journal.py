"""The ingest journal: the receiver's durability point, with group fsync.

Writing a new file, fsync'ing it, renaming it and fsync'ing its folder, then committing a row, costs
three synchronous flushes per instance (about 14 ms here). The journal makes an instance durable with
one: its bytes are appended to a preallocated segment file and ``fdatasync``'d (one flush covers every
association that appended meanwhile). Only then does the receiver answer Success. A background
materializer then writes the instance file and its database row, in batches; a checkpoint
(``syncfs`` of the storage file system + a durable database commit) retires whole segments. After a
crash, :meth:`Journal.replay` yields every record of every unretired segment, and the ingestor
re-materializes them idempotently: nothing that got Success is lost.

Record layout: ``b"DNJ1"``, header length (u32), CRC-32 of header + data (u32), data length (u64),
JSON header, data. A torn record at the tail of a segment (a crash mid-append, never acknowledged)
fails its length or CRC check and is ignored.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import logging
import os
import struct
import threading
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

MAGIC = b"DNJ1"
HEAD = struct.Struct("<4sIIQ")
SEGMENT_BYTES = 256 * 1024 * 1024


@dataclass
class Record:
    """One journaled instance: its metadata and its Part 10 bytes."""

    meta: dict[str, Any]
    data: bytes
    segment: int = 0


def syncfs(path: Path) -> None:
    """Flush every dirty page of the file system holding ``path`` (``os.sync`` where syncfs is missing)."""
    libc_name = ctypes.util.find_library("c")
    libc = ctypes.CDLL(libc_name, use_errno=True) if libc_name else None
    if libc is not None and hasattr(libc, "syncfs"):
        fd = os.open(path, os.O_RDONLY)
        try:
            if libc.syncfs(fd) == 0:
                return
        finally:
            os.close(fd)
    os.sync()


class Journal:
    """Append-only segments under one folder; safe for concurrent appenders in one process."""

    def __init__(self, folder: str | Path, segment_bytes: int = SEGMENT_BYTES) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.segment_bytes = segment_bytes
        self._lock = threading.Lock()
        self._synced = threading.Condition(self._lock)
        self._syncing = False
        self._written = 0  # bytes appended to the current segment
        self._durable = 0  # bytes of the current segment known to be on disk
        existing = self.segments()
        self.current = (existing[-1] + 1) if existing else 1
        self._fd = self._open(self.current)

    def segments(self) -> list[int]:
        """Numbers of the segment files present, oldest first."""
        return sorted(int(p.stem.split("-")[1]) for p in self.folder.glob("seg-*.log"))

    def _path(self, number: int) -> Path:
        return self.folder / f"seg-{number:08d}.log"

    def _open(self, number: int) -> int:
        fd = os.open(self._path(number), os.O_WRONLY | os.O_CREAT, 0o644)
        try:
            os.posix_fallocate(fd, 0, self.segment_bytes)  # no size change on append: fdatasync skips metadata
        except OSError:
            pass
        dir_fd = os.open(self.folder, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
        return fd

    def append(self, meta: dict[str, Any], data: bytes) -> int:
        """Append one record and return once it is on stable storage; returns its segment number."""
        header = json.dumps(meta, separators=(",", ":")).encode()
        crc = zlib.crc32(data, zlib.crc32(header))
        parts = [HEAD.pack(MAGIC, len(header), crc, len(data)), header, data]
        size = sum(len(p) for p in parts)
        with self._lock:
            if self._written + size > self.segment_bytes and self._written > 0:
                self._rotate_locked()
            segment = self.current
            written = os.pwritev(self._fd, parts, self._written)  # no copy of the data into one buffer
            if written != size:
                raise OSError(f"short write to the journal ({written} of {size} bytes)")
            self._written += size
            end = self._written
            # Group commit: one fdatasync covers every append that happened before it started.
            while self._durable < end and self.current == segment:
                if self._syncing:
                    self._synced.wait()
                    continue
                self._syncing = True
                target, fd = self._written, self._fd
                self._lock.release()
                try:
                    os.fdatasync(fd)
                finally:
                    self._lock.acquire()
                    self._syncing = False
                    if self.current == segment:
                        self._durable = max(self._durable, target)
                    self._synced.notify_all()
        return segment

    def _rotate_locked(self) -> None:
        while self._syncing:
            self._synced.wait()
        os.fdatasync(self._fd)
        os.close(self._fd)
        self.current += 1
        self._fd = self._open(self.current)
        self._written = self._durable = 0

    def rotate(self) -> int:
        """Close the current segment if it holds anything; returns the newest closed segment number."""
        with self._lock:
            if self._written:
                self._rotate_locked()
            return self.current - 1

    def retire(self, up_to: int) -> None:
        """Delete segments numbered below or equal to ``up_to`` (never the one being written)."""
        for number in self.segments():
            if number <= up_to and number != self.current:
                self._path(number).unlink(missing_ok=True)

    def replay(self) -> Iterator[Record]:
        """Every intact record of every segment on disk, oldest first."""
        for number in self.segments():
            yield from self._read(number)

    def _read(self, number: int) -> Iterator[Record]:
        with open(self._path(number), "rb") as fh:
            while True:
                head = fh.read(HEAD.size)
                if len(head) < HEAD.size:
                    return
                magic, header_len, crc, data_len = HEAD.unpack(head)
                if magic != MAGIC:
                    return  # preallocated zeros: the end of what was written
                header = fh.read(header_len)
                data = fh.read(data_len)
                if len(header) != header_len or len(data) != data_len or zlib.crc32(data, zlib.crc32(header)) != crc:
                    log.warning("journal segment %d ends with a torn record (never acknowledged); ignored", number)
                    return
                yield Record(json.loads(header), data, number)

    def close(self) -> None:
        with self._lock:
            os.close(self._fd)
