"""Keeping one received instance: validate, make it durable, record it, answer.

This is the whole receive path minus the network, so it can be exercised directly. Both receivers
call :meth:`Ingestor.keep` with the bytes exactly as the peer encoded them (file meta prepended) and
answer with the status it returns. Pixel data is never decoded: headers are parsed up to the pixel
data only, and the pixel data's length is checked against the image size.

Two durability modes (``node.durability``), both answering Success only once the instance is on
stable storage:

* ``journal`` (default): the bytes are appended to the ingest journal and fdatasync'd (one flush,
  shared by concurrent associations); a materializer thread then writes the instance files and their
  rows in batches, once the traffic pauses, and a checkpoint retires journal segments once files and
  rows are durable. After a crash, the journal is replayed on start. See :mod:`dicom_node.journal`.

Duplicates (``node.duplicate_policy``): a copy of an instance whose first copy is still being
journaled waits for that append; under keep-first, a copy of an instance already indexed is found
by the materializer (one query per batch), so the hot path never asks the database.
* ``file``: the instance file is written, fsync'd, renamed into place, its folder fsync'd and its row
  committed, all before the answer (three flushes per instance).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import Counter
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from sqlalchemy import Engine, insert, select, update
from sqlalchemy.engine import Connection

from dicom_node.buffers import Bytes, InstanceBuffer, write_file
from dicom_node.config import DuplicatePolicy, NodeConfig
from dicom_node.db import instances, now, series, studies
from dicom_node.db.engine import connect, log_event, reader, record_event
from dicom_node.journal import Journal, Record, syncfs
from dicom_node.net.header import Header, read_header
from dicom_node.store import InvalidUID, Store, check_uid, write_atomic

log = logging.getLogger(__name__)

SUCCESS = 0x0000
OUT_OF_RESOURCES = 0xA700  # Refused: out of resources
CANNOT_UNDERSTAND = 0xC000  # Error: cannot understand
DUPLICATE_SOP = 0x0111  # Failure: duplicate SOP instance (reject policy)
PROCESSING_FAILURE = 0x0110
DUPLICATE_KEPT_FIRST = "duplicate SOP instance kept as first received"

CHECKPOINT_EVERY_S = 2.0
BATCH = 256
IDLE_S = 0.05  # materialize once no C-STORE arrived for this long...
BACKLOG_BYTES = 256 << 20  # ...or once this much waits in memory
QUEUE_BYTES = 1 << 30  # receivers wait (their senders wait for the answer) while this much waits


@dataclass(frozen=True)
class Outcome:
    """What happened to one instance: the DIMSE status and, on failure, why."""

    status: int
    reason: str = ""
    sop_uid: str | None = None


@dataclass
class _Pending:
    """Copies of one SOP instance journaled, or being journaled, and not yet materialized."""

    copies: int = 0  # journaled or being journaled
    duplicates: int = 0  # copies answered as duplicates, added to the row on materialization
    failed: bool = False  # the owner's append failed and no copy is left: waiting copies try again
    settled: threading.Event = field(default_factory=threading.Event)  # the owner's append finished


class Ingestor:
    """Keeps instances for a receiver: one call per C-STORE, safe to call from many threads.

    ``journal_name`` names this receiver's journal folder (one per receiver process). Call
    :meth:`close` on shutdown to materialize and checkpoint everything pending.
    """

    def __init__(self, config: NodeConfig, engine: Engine, store: Store, journal_name: str = "r0") -> None:
        self.config = config
        self.engine = engine
        self.store = store
        self.reader = reader(engine)
        self.journal: Journal | None = None
        self._pending: dict[str, _Pending] = {}  # journaled (or being journaled), not yet materialized
        self._pending_lock = threading.Lock()
        self._in_flight = 0  # appends under way
        self._queued = 0  # journaled, waiting for (or in) the materializer
        self._queued_bytes = 0  # their size: receivers wait while it is over QUEUE_BYTES
        self._room = threading.Condition(self._pending_lock)
        self._retired = 0  # journal segments up to this one are retired
        self._last_keep = 0.0  # when the last instance was journaled (monotonic)
        self._unmaterialized = False  # a batch failed: keep every journal segment until a restart replays it
        self._queue: queue.Queue[Record | None] = queue.Queue(maxsize=2000)
        self._worker: threading.Thread | None = None
        self.writer = engine
        if config.node.durability == "journal":
            # Rows of journaled instances become durable at the journal checkpoint (syncfs), not per commit.
            if engine.url.get_backend_name() == "sqlite":
                self.writer = connect(
                    engine.url.render_as_string(hide_password=False), migrate=False, synchronous="NORMAL"
                )
            self.journal = Journal(store.root / "journal" / journal_name)
            self._replay()
            self._worker = threading.Thread(target=self._materialize_forever, name="materializer", daemon=True)
            self._worker.start()

    # -- the receive path ----------------------------------------------------------------------------------
    def keep(self, received: InstanceBuffer | Bytes, *, calling_ae: str, called_ae: str, address: str = "") -> Outcome:
        """Validate one instance and make it durable; returns the status to answer with.

        ``received`` is the Part 10 bytes, best in an :class:`InstanceBuffer` (the native receiver reads
        the network into one; other bytes are copied into one). The buffer belongs to the ingestor.
        """
        buf = received if isinstance(received, InstanceBuffer) else InstanceBuffer.from_bytes(received)
        try:
            with buf.view() as data:
                header = read_header(data)
                if header.pixel_offset >= 0:
                    check_pixel_data(data, header.pixel_offset, header.transfer_syntax, header.native_pixel_bytes)
            meta = describe(header, calling_ae, called_ae)
        except (InvalidUID, ValueError) as exc:
            return self._refuse(CANNOT_UNDERSTAND, "rejected", str(exc), calling_ae, address)
        sop_uid = meta["sop_uid"]
        free = self.store.free_mb()
        if free < self.config.node.min_free_disk_mb:
            reason = f"free disk {free:.0f} MiB is under the {self.config.node.min_free_disk_mb} MiB watermark"
            return self._refuse(OUT_OF_RESOURCES, "disk_full", reason, calling_ae, address, sop_uid=sop_uid)

        policy = self.config.node.duplicate_policy
        if self.journal is None:
            if policy is not DuplicatePolicy.OVERWRITE and self._recorded([sop_uid]):
                return self._duplicate(sop_uid, calling_ae, address, None)
            return self._keep_file(meta, buf, calling_ae, address)
        if policy is DuplicatePolicy.OVERWRITE:
            return self._keep_journaled(meta, buf, calling_ae, address, self._claim(sop_uid, share=True)[0])
        # Another copy being journaled right now decides: once it is durable this one is a duplicate;
        # if it failed, this one is journaled instead. Keep-first copies of instances already in the
        # index are found by the materializer, a batch at a time: no index lookup on the hot path.
        while True:
            entry, owner = self._claim(sop_uid)
            if owner:
                break
            entry.settled.wait()
            if not entry.failed:
                return self._duplicate(sop_uid, calling_ae, address, entry)
        try:
            indexed = policy is DuplicatePolicy.REJECT and bool(self._recorded([sop_uid]))
        except BaseException:  # the database refused: give the place up, or every later copy would wait
            self._settle(sop_uid, entry, failed=True)
            raise
        if indexed:
            self._settle(sop_uid, entry, failed=True)  # nothing journaled: waiting copies look again
            return self._duplicate(sop_uid, calling_ae, address, None)
        return self._keep_journaled(meta, buf, calling_ae, address, entry)

    def _claim(self, sop_uid: str, *, share: bool = False) -> tuple[_Pending, bool]:
        """The pending entry of ``sop_uid`` and whether this copy owns it (creates it, or ``share``s it)."""
        with self._pending_lock:
            entry = self._pending.get(sop_uid)
            if entry is not None and not share:
                return entry, False
            if entry is None:
                entry = self._pending[sop_uid] = _Pending()
            entry.copies += 1
            return entry, True

    def _settle(self, sop_uid: str, entry: _Pending, *, failed: bool) -> None:
        """The owner's append finished; a failed one gives its place up."""
        with self._pending_lock:
            if failed:
                entry.copies -= 1
                entry.failed = entry.copies == 0
                if entry.failed and self._pending.get(sop_uid) is entry:
                    del self._pending[sop_uid]
        entry.settled.set()

    def _duplicate(self, sop_uid: str, calling_ae: str, address: str, entry: _Pending | None) -> Outcome:
        """Count a copy of a kept instance; refuse it under the reject policy."""
        self._count_duplicate(sop_uid, entry)
        if self.config.node.duplicate_policy is DuplicatePolicy.REJECT:
            return self._refuse(
                DUPLICATE_SOP, "duplicate", "SOP instance already stored", calling_ae, address, sop_uid=sop_uid
            )
        self._log_duplicate(sop_uid, calling_ae)
        return Outcome(SUCCESS, "duplicate", sop_uid)

    def _recorded(self, sop_uids: list[str]) -> set[str]:
        """Those of ``sop_uids`` the index holds."""
        with self.reader.connect() as conn:
            return set(conn.execute(select(instances.c.sop_uid).where(instances.c.sop_uid.in_(sop_uids))).scalars())

    def _log_duplicate(self, sop_uid: str, calling_ae: str) -> None:
        log_event(self.engine, "duplicate", DUPLICATE_KEPT_FIRST, calling_ae=calling_ae, sop_uid=sop_uid)

    def _count_duplicate(self, sop_uid: str, entry: _Pending | None) -> None:
        with self._pending_lock:
            if entry is not None and self._pending.get(sop_uid) is entry:
                entry.duplicates += 1  # added to the row when the first copy is materialized
                return
        with self.engine.begin() as conn:
            conn.execute(
                update(instances).where(instances.c.sop_uid == sop_uid).values(duplicates=instances.c.duplicates + 1)
            )

    def _keep_journaled(
        self, meta: dict[str, Any], buf: InstanceBuffer, calling_ae: str, address: str, entry: _Pending
    ) -> Outcome:
        assert self.journal is not None
        sop_uid = meta["sop_uid"]
        with self._room:
            while self._queued_bytes > QUEUE_BYTES:  # the materializer is behind: hold the sender back
                self._room.wait(timeout=1.0)
            self._in_flight += 1
            self._queued_bytes += buf.length
        try:
            try:
                segment, offset = self.journal.append_at(meta, buf)
            except OSError as exc:
                self._settle(sop_uid, entry, failed=True)
                self._unqueue(buf.length)
                return self._refuse(
                    OUT_OF_RESOURCES,
                    "write_failed",
                    f"cannot write journal: {exc.strerror or exc}",
                    calling_ae,
                    address,
                    sop_uid=sop_uid,
                )
            except BaseException:
                self._settle(sop_uid, entry, failed=True)
                self._unqueue(buf.length)
                raise
            self._settle(sop_uid, entry, failed=False)
            self._last_keep = time.monotonic()
            with self._pending_lock:
                self._queued += 1
            # The materializer reads the bytes back from the journal: the buffer's memory, already
            # backed by pages, goes straight to the next instance instead of waiting in the queue.
            length = buf.length
            buf.release()
            self._queue.put(Record(meta, None, segment, offset, length))
        finally:
            with self._pending_lock:
                self._in_flight -= 1
        return Outcome(SUCCESS, "", sop_uid)

    def _keep_file(self, meta: dict[str, Any], buf: InstanceBuffer, calling_ae: str, address: str) -> Outcome:
        path, relative = self.store.instance_location(meta["study_uid"], meta["series_uid"], meta["sop_uid"])
        existed = path.exists()
        try:
            with buf.view() as data:
                size = write_atomic(path, [data])
        except OSError as exc:
            return self._refuse(
                OUT_OF_RESOURCES,
                "write_failed",
                f"cannot write instance: {exc.strerror}",
                calling_ae,
                address,
                sop_uid=meta["sop_uid"],
            )
        try:
            with self.engine.begin() as conn:
                self._record(conn, [(meta, relative, size)])
        except Exception as exc:  # the database refused: the peer must resend, so it must not see Success
            log.exception("cannot record instance")
            if not existed:
                path.unlink(missing_ok=True)
            return self._refuse(
                PROCESSING_FAILURE,
                "db_failed",
                f"cannot record instance: {exc}",
                calling_ae,
                address,
                sop_uid=meta["sop_uid"],
            )
        return Outcome(SUCCESS, "", meta["sop_uid"])

    # -- materializing journaled instances -----------------------------------------------------------------
    def _materialize(self, records: list[Record], *, replay: bool = False) -> None:
        """Write files and rows for journaled records, in journal order.

        Keep-first (and reject): an instance the index already holds keeps its first copy, and the
        journaled one counts as a duplicate. Overwrite: the journaled copy replaces it. A replay
        re-applies records idempotently: a record already indexed (materialized before the crash)
        gets its file back if that did not reach the disk.
        """
        overwrite = self.config.node.duplicate_policy is DuplicatePolicy.OVERWRITE
        known = self._recorded([rec.meta["sop_uid"] for rec in records]) if replay or not overwrite else set()
        rows = []
        late: list[dict[str, Any]] = []  # duplicates of instances stored before they arrived
        contents = (
            self.journal.read_records(records) if self.journal is not None else ((rec, rec.data) for rec in records)
        )
        with closing(contents):  # in journal order: a later copy of an instance wins
            for rec, data in contents:
                m = rec.meta
                path, relative = self.store.instance_location(m["study_uid"], m["series_uid"], m["sop_uid"])
                size = rec.length
                if m["sop_uid"] in known and not overwrite:
                    if replay:
                        if not path.exists() or path.stat().st_size != size:
                            write_file(path, data)
                    else:
                        late.append(m)
                else:
                    if not (replay and path.exists() and path.stat().st_size == size and not overwrite):
                        write_file(path, data)
                    rows.append((m, relative, size))
        for rec in records:
            if rec.buffer is not None:
                rec.buffer.release()
        with self.writer.begin() as conn:
            self._record(conn, rows, skip_known=replay and not overwrite)
            for m in late:  # in this batch's transaction: a re-sent study is one commit, not one per copy
                record_event(conn, "duplicate", DUPLICATE_KEPT_FIRST, calling_ae=m["calling_ae"], sop_uid=m["sop_uid"])
            duplicates: Counter[str] = Counter(m["sop_uid"] for m in late)
            if not replay:
                with self._pending_lock:
                    for rec in records:
                        uid = rec.meta["sop_uid"]
                        entry = self._pending.get(uid)
                        if entry is not None:
                            entry.copies -= 1
                            if entry.copies <= 0:
                                del self._pending[uid]
                                duplicates[uid] += entry.duplicates
            for sop_uid, count in duplicates.items():
                if count:
                    conn.execute(
                        update(instances)
                        .where(instances.c.sop_uid == sop_uid)
                        .values(duplicates=instances.c.duplicates + count)
                    )
        if not replay and self.journal is not None:
            for segment, count in Counter(rec.segment for rec in records).items():
                self.journal.materialized(segment, count)

    def _materialize_safely(self, batch: list[Record]) -> None:
        try:
            self._materialize(batch)
        except Exception:  # the journal still holds them: the next start replays them
            self._unmaterialized = True
            log.exception("materializing %d journaled instance(s) failed; they stay in the journal", len(batch))
        finally:
            with self._pending_lock:
                self._queued -= len(batch)
            self._unqueue(sum(rec.length for rec in batch))

    def _unqueue(self, size: int) -> None:
        with self._room:
            self._queued_bytes -= size
            self._room.notify_all()

    def _materialize_forever(self) -> None:
        assert self.journal is not None
        last_checkpoint = time.monotonic()
        dirty = False
        while True:
            try:
                first = self._queue.get(timeout=0.5)
            except queue.Empty:
                first = None
                if dirty and time.monotonic() - last_checkpoint > CHECKPOINT_EVERY_S:
                    self._checkpoint()
                    last_checkpoint, dirty = time.monotonic(), False
                continue
            if first is None:  # close() asks us to stop
                self._checkpoint()
                return
            batch = [first]
            stop = False
            # Wait for a pause in the traffic (or a full backlog): file writes and rows then never
            # compete with the receiving threads for the interpreter while a study streams in.
            backlog = first.length
            while backlog < BACKLOG_BYTES and len(batch) < 8 * BATCH:
                quiet = time.monotonic() - self._last_keep
                try:
                    item = self._queue.get(timeout=max(IDLE_S - quiet, 0.001))
                except queue.Empty:
                    if time.monotonic() - self._last_keep >= IDLE_S:
                        break
                    continue
                if item is None:
                    stop = True
                    break
                batch.append(item)
                backlog += item.length
            for start in range(0, len(batch), BATCH):
                self._materialize_safely(batch[start : start + BATCH])
            dirty = True
            if stop:
                self._checkpoint()
                return
            if time.monotonic() - last_checkpoint > CHECKPOINT_EVERY_S:  # sustained traffic
                self._checkpoint()
                last_checkpoint, dirty = time.monotonic(), False

    def _checkpoint(self) -> None:
        """Retire the journal segments whose records are all materialized and durable.

        Runs under traffic too: segments are closed by a rotation, and those that no append can
        still reach and whose records are all materialized are retired after a file system flush.
        """
        assert self.journal is not None
        try:
            closed = self.journal.rotate()
            done = self.journal.retirable(closed)
            log.debug("checkpoint: segments up to %d closed, %d materialized, %d retired", closed, done, self._retired)
            if done <= self._retired:
                return
            self._sync_all()
            if self._unmaterialized:
                log.error("journal segments kept: some instances could not be materialized (replayed on restart)")
                return
            self.journal.retire(done)
            self._retired = done
        except Exception:  # the journal keeps its segments; the next checkpoint tries again
            log.exception("journal checkpoint failed")

    def _sync_all(self) -> None:
        """Flush the instance files and, for SQLite, the database file system too."""
        syncfs(self.store.root)
        database = self.writer.url.database if self.writer.url.get_backend_name() == "sqlite" else None
        if database and Path(database).parent.stat().st_dev != self.store.root.stat().st_dev:
            syncfs(Path(database).parent)

    def _replay(self) -> None:
        assert self.journal is not None
        batch: list[Record] = []
        count = 0
        for rec in self.journal.replay():
            batch.append(rec)
            if len(batch) >= BATCH:
                self._materialize(batch, replay=True)
                count += len(batch)
                batch = []
        if batch:
            self._materialize(batch, replay=True)
            count += len(batch)
        if count:
            log.warning("replayed %d journaled instance(s) after an unclean stop", count)
        self._sync_all()
        self.journal.retire(self.journal.current - 1)

    def flush(self, timeout: float = 30.0) -> bool:
        """Wait until every journaled instance has its file and row; False on timeout."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._pending_lock:
                if not self._pending and not self._in_flight and not self._queued:
                    return True
            time.sleep(0.02)
        return False

    def close(self) -> None:
        """Materialize and checkpoint everything pending, then stop the materializer."""
        if self._worker is not None:
            self._queue.put(None)
            self._worker.join(timeout=60)
            self._worker = None
        if self.journal is not None:
            self.journal.close()
            self.journal = None
            if self.writer is not self.engine:
                self.writer.dispose()

    # -- rows ----------------------------------------------------------------------------------------------
    def _record(
        self, conn: Connection, rows: list[tuple[dict[str, Any], str, int]], *, skip_known: bool = False
    ) -> None:
        """Rows for a batch of kept instances: a few statements per study and series, not per instance.

        ``rows`` holds (meta from :func:`describe`, path relative to the store, size). An instance that
        is already recorded is updated in place (the overwrite policy), or skipped with ``skip_known``
        (journal replay). An instance of a series that was already routed opens a new revision of it.
        """
        latest: dict[str, tuple[dict[str, Any], str, int]] = {}
        for row in rows:  # the same instance twice in one batch: the later one wins
            latest[row[0]["sop_uid"]] = row
        known = {
            r.sop_uid: r.id
            for r in conn.execute(
                select(instances.c.sop_uid, instances.c.id).where(instances.c.sop_uid.in_(list(latest)))
            )
        }
        if skip_known:
            latest = {uid: row for uid, row in latest.items() if uid not in known}
        if not latest:
            return
        by_study: dict[str, list[dict[str, Any]]] = {}
        by_series: dict[str, list[dict[str, Any]]] = {}
        for m, _, _ in latest.values():
            m.setdefault("received_at", now())
            by_study.setdefault(m["study_uid"], []).append(m)
            by_series.setdefault(m["series_uid"], []).append(m)

        for study_uid, metas in by_study.items():
            t = max(float(m["received_at"]) for m in metas)
            found = conn.execute(select(studies.c.id).where(studies.c.study_uid == study_uid).with_for_update()).first()
            if found is None:
                first = metas[0]
                conn.execute(
                    insert(studies).values(
                        study_uid=study_uid,
                        patient_id=first.get("patient_id"),
                        accession=first.get("accession"),
                        first_seen=t,
                        last_seen=t,
                    )
                )
            else:
                conn.execute(update(studies).where(studies.c.id == found.id).values(last_seen=t))

        revisions: dict[str, int] = {}
        for series_uid, metas in by_series.items():
            t = max(float(m["received_at"]) for m in metas)
            new = sum(m["sop_uid"] not in known for m in metas)
            current = conn.execute(
                select(series.c.id, series.c.state, series.c.revision)
                .where(series.c.series_uid == series_uid)
                .with_for_update()
            ).first()
            if current is None:
                first = metas[0]
                revisions[series_uid] = 1
                conn.execute(
                    insert(series).values(
                        series_uid=series_uid,
                        study_uid=first["study_uid"],
                        modality=first.get("modality"),
                        description=first.get("description"),
                        calling_ae=first["calling_ae"],
                        called_ae=first["called_ae"],
                        instance_count=new,
                        first_seen=t,
                        last_seen=t,
                        state="receiving",
                        revision=1,
                    )
                )
            else:
                # An instance after the series was routed starts a new revision: new jobs, not a silent drop.
                revisions[series_uid] = current.revision if current.state == "receiving" else current.revision + 1
                conn.execute(
                    update(series)
                    .where(series.c.id == current.id)
                    .values(
                        instance_count=series.c.instance_count + new,
                        last_seen=t,
                        state="receiving",
                        revision=revisions[series_uid],
                    )
                )

        inserts: list[dict[str, Any]] = []
        updates: list[tuple[int, dict[str, Any]]] = []
        for uid, (m, relative, size) in latest.items():
            values = dict(
                series_uid=m["series_uid"],
                study_uid=m["study_uid"],
                sop_class_uid=m["sop_class"],
                transfer_syntax=m["transfer_syntax"],
                path=relative,
                size=size,
                received_at=float(m["received_at"]),
                revision=revisions[m["series_uid"]],
                calling_ae=m["calling_ae"],
            )
            if uid in known:
                updates.append((known[uid], values))
            else:
                inserts.append(dict(sop_uid=uid, duplicates=0, **values))
        if inserts:
            conn.execute(insert(instances), inserts)
        for row_id, values in updates:
            conn.execute(update(instances).where(instances.c.id == row_id).values(**values))

    def _refuse(
        self, status: int, kind: str, reason: str, calling_ae: str, address: str, *, sop_uid: str | None = None
    ) -> Outcome:
        log.warning("C-STORE from %s (%s) refused with 0x%04X: %s", calling_ae, address, status, reason)
        log_event(
            self.engine,
            kind,
            reason,
            level="WARNING",
            calling_ae=calling_ae,
            sop_uid=sop_uid,
            status=f"0x{status:04X}",
            address=address,
        )
        return Outcome(status, reason, sop_uid)


def describe(header: Header, calling_ae: str, called_ae: str) -> dict[str, Any]:
    """The validated identity of an instance and what its rows need (raises InvalidUID)."""
    return {
        "sop_uid": check_uid(header.sop_uid, "SOPInstanceUID"),
        "series_uid": check_uid(header.series_uid, "SeriesInstanceUID"),
        "study_uid": check_uid(header.study_uid, "StudyInstanceUID"),
        "sop_class": check_uid(header.sop_class or header.meta_sop_class, "SOPClassUID"),
        "transfer_syntax": check_uid(header.transfer_syntax, "TransferSyntaxUID"),
        "calling_ae": calling_ae,
        "called_ae": called_ae,
        "received_at": now(),
        "patient_id": header.patient_id[:64] or None,
        "accession": header.accession[:64] or None,
        "modality": header.modality[:16] or None,
        "description": header.description[:128] or None,
    }


PIXEL_TAGS = (b"\xe0\x7f\x10\x00", b"\x7f\xe0\x00\x10")
SEQUENCE_DELIMITER = b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"
ITEM = b"\xfe\xff\x00\xe0"


def check_pixel_data(data: Bytes, offset: int, syntax: str, expected: int) -> None:
    """Raise ValueError if the Pixel Data element at ``offset`` is shorter than it says or must be.

    ``expected`` is the native size from Rows x Columns x samples x frames x bits (0 if unknown);
    encapsulated pixel data must hold whole items up to its sequence delimiter.
    """
    if offset >= len(data) or data[offset : offset + 4] not in PIXEL_TAGS:
        return  # no pixel data (SR, presentation state...) or another element follows
    order: Literal["big", "little"] = "big" if syntax == "1.2.840.10008.1.2.2" else "little"
    if syntax == "1.2.840.10008.1.2":  # implicit VR: tag, 4-byte length
        length, start = int.from_bytes(data[offset + 4 : offset + 8], order), offset + 8
    else:  # explicit VR OB/OW: tag, VR, 2 reserved bytes, 4-byte length
        length, start = int.from_bytes(data[offset + 8 : offset + 12], order), offset + 12
    if length == 0xFFFFFFFF:
        check_fragments(data, start)
        return
    available = len(data) - start
    if length > available:
        raise ValueError(f"truncated data set: pixel data declares {length} bytes, {available} present")
    if expected and length < expected:
        raise ValueError(f"truncated data set: pixel data holds {length} bytes, the image needs {expected}")


def check_fragments(data: Bytes, pos: int) -> None:
    """Walk encapsulated pixel data from ``pos``: items (FFFE,E000) until the delimiter (FFFE,E0DD)."""
    while pos + 8 <= len(data):
        tag = bytes(data[pos : pos + 4])
        length = int.from_bytes(data[pos + 4 : pos + 8], "little")
        if tag == SEQUENCE_DELIMITER[:4]:
            return
        if tag != ITEM:
            raise ValueError("malformed encapsulated pixel data: expected an item or the sequence delimiter")
        pos += 8 + length
    raise ValueError("truncated data set: encapsulated pixel data has no sequence delimiter")
