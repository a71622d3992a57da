"""Instance and result files on disk: validated UIDs to paths, atomic durable writes.

A file is durable when :func:`write_atomic` returns: written to a temporary name in the target
folder, fsync'd, renamed into place, and the folder fsync'd. UIDs are validated before they are
used in a path, so nothing a peer sends can escape the storage root.
"""

from __future__ import annotations

import os
import re
import shutil
import time
import uuid
from collections.abc import Iterable
from pathlib import Path

Bytes = bytes | bytearray | memoryview  # what a chunk may be (the receive buffers hand out memoryviews)

UID_PATTERN = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")
UID_LENIENT = re.compile(r"^[0-9]+(\.[0-9]+)*$")


class InvalidUID(ValueError):
    """A UID that is empty, too long or not made of dot-separated digits."""


def check_uid(value: object, what: str) -> str:
    """Return ``value`` as a clean UID string or raise :class:`InvalidUID` naming ``what``.

    Components with leading zeros are accepted (real modalities send them); anything but digits and
    dots is refused, which also rules out path traversal.
    """
    text = str(value or "").strip().rstrip("\x00").strip()
    if not text:
        raise InvalidUID(f"{what} is empty")
    if len(text) > 64:
        raise InvalidUID(f"{what} is longer than 64 characters")
    if not UID_LENIENT.match(text):
        raise InvalidUID(f"{what} is not a valid UID: {text[:80]!r}")
    return text


class Store:
    """The storage root: ``instances/<study>/<series>/<sop>.dcm`` and ``results/<job>/<sop>.dcm``."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).resolve()
        self._free = 0.0
        self._free_at = -1e9
        (self.root / "instances").mkdir(parents=True, exist_ok=True)
        (self.root / "results").mkdir(parents=True, exist_ok=True)

    def instance_path(self, study_uid: str, series_uid: str, sop_uid: str) -> Path:
        """Where an instance lives; all three UIDs must be valid."""
        return self.instance_location(study_uid, series_uid, sop_uid)[0]

    def instance_location(self, study_uid: str, series_uid: str, sop_uid: str) -> tuple[Path, str]:
        """Where an instance lives, and that path relative to the root (as :meth:`relative` gives it),
        built from the validated UIDs without asking the file system."""
        relative = "/".join(
            (
                "instances",
                check_uid(study_uid, "StudyInstanceUID"),
                check_uid(series_uid, "SeriesInstanceUID"),
                check_uid(sop_uid, "SOPInstanceUID") + ".dcm",
            )
        )
        return self.root / relative, relative

    def result_path(self, job_id: int, sop_uid: str) -> Path:
        """Where a result object of ``job_id`` lives."""
        return self.root / "results" / str(int(job_id)) / (check_uid(sop_uid, "SOPInstanceUID") + ".dcm")

    def relative(self, path: Path) -> str:
        """``path`` relative to the root, as stored in the database."""
        return str(path.resolve().relative_to(self.root))

    def absolute(self, relative: str) -> Path:
        """The absolute path of a database-relative path (refuses anything outside the root)."""
        path = (self.root / relative).resolve()
        if not path.is_relative_to(self.root):
            raise ValueError(f"path {relative!r} escapes the storage root")
        return path

    def free_mb(self, max_age_s: float = 1.0) -> float:
        """Free space on the storage file system, in MiB (re-read at most every ``max_age_s``)."""
        t = time.monotonic()
        if t - self._free_at > max_age_s:
            self._free = shutil.disk_usage(self.root).free / (1024 * 1024)
            self._free_at = t
        return self._free

    def free_bytes(self) -> int:
        """Free space on the storage file system now, in bytes (one ``statvfs``, never cached)."""
        return shutil.disk_usage(self.root).free


def write_atomic(path: Path, chunks: Iterable[Bytes], *, sync: bool = True) -> int:
    """Write ``chunks`` to ``path`` durably; returns the number of bytes written.

    Readers never see a partial file: the bytes go to a temporary name beside ``path``, are
    fsync'd, renamed over ``path``, and the folder entry is fsync'd too. With ``sync=False`` the
    flushes are left to the caller (the ingest journal's checkpoint syncs the whole file system).
    """
    folder = path.parent
    created = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".{path.name}.{uuid.uuid4().hex}.tmp"
    size = 0
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        with os.fdopen(fd, "wb") as fh:
            for chunk in chunks:
                fh.write(chunk)
                size += len(chunk)
            fh.flush()
            if sync:
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if not sync:
        return size
    fsync_dir(folder)
    if created:
        fsync_dir(folder.parent)
        fsync_dir(folder.parent.parent)
    return size


def fsync_dir(folder: Path) -> None:
    """Make the entries of ``folder`` (created, renamed, removed files) durable."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
