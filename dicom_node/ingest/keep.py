"""Keeping one validated instance: the duplicates policy, the two durability modes, the answer.

Both modes (``node.durability``) answer Success only once the instance is on stable storage:

* ``journal`` (default): the bytes are appended to the ingest journal and fdatasync'd (one flush,
  shared by concurrent associations); the :class:`~dicom_node.ingest.materialize.Materializer` then
  writes the instance files and their rows. See :mod:`dicom_node.ingest.journal`.
* ``file``: the instance file is written, fsync'd, renamed into place, its folder fsync'd and its row
  committed, all before the answer (three flushes per instance).

Duplicates (``node.duplicate_policy``): a copy of an instance whose first copy is still being
journaled waits for that append; under keep-first, a copy of an instance already indexed is found
by the materializer (one query per batch), so the hot path never asks the database.
"""

from __future__ import annotations

import errno
import logging
from dataclasses import dataclass

from sqlalchemy import Engine

from dicom_node.config import DuplicatePolicy, NodeConfig
from dicom_node.db.engine import record_event
from dicom_node.db.errors import describe_error
from dicom_node.ingest.buffers import InstanceBuffer
from dicom_node.ingest.index import Index, Meta, record
from dicom_node.ingest.materialize import Materializer, Pending, disk_bytes
from dicom_node.net.dimse import DUPLICATE_SOP_INSTANCE, OUT_OF_RESOURCES, PROCESSING_FAILURE, SUCCESS
from dicom_node.store import Store, write_atomic

log = logging.getLogger(__name__)

MIB = 1024 * 1024


@dataclass(frozen=True)
class Outcome:
    """What happened to one instance: the DIMSE status and, on failure, why."""

    status: int
    reason: str = ""
    sop_uid: str | None = None


class Keeper:
    """Makes validated instances durable and says what to answer; safe to call from many threads."""

    def __init__(self, config: NodeConfig, engine: Engine, store: Store, index: Index) -> None:
        self.config = config
        self.engine = engine
        self.store = store
        self.index = index

    # -- durability "journal" --------------------------------------------------------------------------
    def keep_journaled(
        self, meta: Meta, buf: InstanceBuffer, calling_ae: str, address: str, materializer: Materializer
    ) -> Outcome:
        """Journal the instance unless it is a duplicate, and hand it to ``materializer``."""
        backlog = materializer.backlog
        sop_uid = meta["sop_uid"]
        policy = self.config.node.duplicate_policy
        if policy is DuplicatePolicy.OVERWRITE:
            return self._append(meta, buf, calling_ae, address, materializer, backlog.claim(sop_uid, share=True)[0])
        # Another copy being journaled right now decides: once it is durable this one is a duplicate;
        # if it failed, this one is journaled instead. Keep-first copies of instances already in the
        # index are found by the materializer, a batch at a time: no index lookup on the hot path.
        while True:
            entry, owner = backlog.claim(sop_uid)
            if owner:
                break
            entry.settled.wait()
            if not entry.failed:
                counted = backlog.count_duplicate(sop_uid, entry)
                return self._duplicate(sop_uid, calling_ae, address, counted=counted)
        try:
            indexed = policy is DuplicatePolicy.REJECT and bool(self.index.recorded([sop_uid]))
        except BaseException:  # the database refused: give the place up, or every later copy would wait
            backlog.settle(sop_uid, entry, failed=True)
            raise
        if indexed:
            backlog.settle(sop_uid, entry, failed=True)  # nothing journaled: waiting copies look again
            return self._duplicate(sop_uid, calling_ae, address)
        return self._append(meta, buf, calling_ae, address, materializer, entry)

    def _append(
        self,
        meta: Meta,
        buf: InstanceBuffer,
        calling_ae: str,
        address: str,
        materializer: Materializer,
        entry: Pending,
    ) -> Outcome:
        """Append to the journal (durable when it returns) and hand the record over."""
        backlog, journal = materializer.backlog, materializer.journal
        assert journal is not None
        sop_uid = meta["sop_uid"]
        size, owed = buf.length, disk_bytes(buf.length)
        # The watermark counts what is acknowledged but not yet written as files: their bytes are owed.
        free = self.store.free_bytes()
        if not backlog.reserve(owed, free - self.config.node.min_free_disk_mb * MIB):
            backlog.settle(sop_uid, entry, failed=True)
            buf.release()
            reason = (
                f"free disk {free / MIB:.0f} MiB less {backlog.owed() / MIB:.0f} MiB acknowledged and not yet "
                f"written would be under the {self.config.node.min_free_disk_mb} MiB watermark"
            )
            return self.refuse(OUT_OF_RESOURCES, "disk_full", reason, calling_ae, address, sop_uid=sop_uid)
        backlog.enter(size)
        try:
            try:
                segment, offset = journal.append_at(meta, buf)
            except OSError as exc:
                backlog.settle(sop_uid, entry, failed=True)
                backlog.unqueue(size)
                backlog.paid(owed)
                full = exc.errno in (errno.ENOSPC, errno.EDQUOT)
                return self.refuse(
                    OUT_OF_RESOURCES,
                    "disk_full" if full else "write_failed",
                    f"cannot write journal: {exc.strerror or exc}",
                    calling_ae,
                    address,
                    sop_uid=sop_uid,
                )
            except BaseException:
                backlog.settle(sop_uid, entry, failed=True)
                backlog.unqueue(size)
                backlog.paid(owed)
                raise
            backlog.settle(sop_uid, entry, failed=False)
            materializer.hand_over(meta, segment, offset, buf)
        finally:
            backlog.leave()
        return Outcome(SUCCESS, "", sop_uid)

    # -- durability "file" -----------------------------------------------------------------------------
    def keep_file(self, meta: Meta, buf: InstanceBuffer, calling_ae: str, address: str) -> Outcome:
        """Write the instance file and its row, both durable, unless it is a duplicate."""
        sop_uid = meta["sop_uid"]
        if self.config.node.duplicate_policy is not DuplicatePolicy.OVERWRITE and self.index.recorded([sop_uid]):
            return self._duplicate(sop_uid, calling_ae, address)
        path, relative = self.store.instance_location(meta["study_uid"], meta["series_uid"], sop_uid)
        existed = path.exists()
        try:
            with buf.view() as data:
                size = write_atomic(path, [data])
        except OSError as exc:
            return self.refuse(
                OUT_OF_RESOURCES,
                "write_failed",
                f"cannot write instance: {exc.strerror}",
                calling_ae,
                address,
                sop_uid=sop_uid,
            )
        try:
            with self.engine.begin() as conn:
                overwrite = self.config.node.duplicate_policy is DuplicatePolicy.OVERWRITE
                raced = record(conn, [(meta, relative, size)], on_known="overwrite" if overwrite else "duplicate")
        except Exception as exc:  # the database refused: the peer must resend, so it must not see Success
            error = describe_error(exc)  # no traceback: its message could carry the row's patient data
            log.error("cannot record instance: %s", error)
            if not existed:
                path.unlink(missing_ok=True)
            return self.refuse(
                PROCESSING_FAILURE,
                "db_failed",
                f"cannot record instance: {error}",
                calling_ae,
                address,
                sop_uid=sop_uid,
            )
        if raced and self.config.node.duplicate_policy is not DuplicatePolicy.OVERWRITE:
            return self._duplicate(sop_uid, calling_ae, address)  # another process recorded a copy first
        return Outcome(SUCCESS, "", sop_uid)

    # -- answers ---------------------------------------------------------------------------------------
    def _duplicate(self, sop_uid: str, calling_ae: str, address: str, *, counted: bool = False) -> Outcome:
        """Count a copy of a kept instance (unless ``counted`` on its pending entry); refuse it under the
        reject policy."""
        if not counted:
            self.index.count_duplicate(sop_uid)
        if self.config.node.duplicate_policy is DuplicatePolicy.REJECT:
            return self.refuse(
                DUPLICATE_SOP_INSTANCE, "duplicate", "SOP instance already stored", calling_ae, address, sop_uid=sop_uid
            )
        self.index.log_duplicate(sop_uid, calling_ae)
        return Outcome(SUCCESS, "duplicate", sop_uid)

    def refuse(
        self, status: int, kind: str, reason: str, calling_ae: str, address: str, *, sop_uid: str | None = None
    ) -> Outcome:
        """Log (one line, no traceback) and record why an instance is refused; the outcome answers with
        ``status``. An event the database cannot take (it may be on the full disk) is noted on that line."""
        unrecorded = ""
        try:
            with self.engine.begin() as conn:
                record_event(
                    conn,
                    kind,
                    reason,
                    level="WARNING",
                    calling_ae=calling_ae,
                    sop_uid=sop_uid,
                    status=f"0x{status:04X}",
                    address=address,
                )
        except Exception as exc:  # the refusal is answered all the same
            unrecorded = f" (event not recorded: {describe_error(exc)})"
        log.warning("C-STORE from %s (%s) refused with 0x%04X: %s%s", calling_ae, address, status, reason, unrecorded)
        return Outcome(status, reason, sop_uid)
