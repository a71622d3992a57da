"""The materializer: the thread that turns journal records into instance files and rows.

Once the keep path has journaled an instance and answered Success, it hands the record over
(:meth:`Materializer.hand_over`). The materializer waits for a pause in the traffic (or a full
backlog), reads the batch back from the journal and writes the instance files and their rows; a
checkpoint then flushes the file system and retires the journal segments whose records are all
materialized. On start, :meth:`Materializer.replay` re-applies whatever the journal still holds
after an unclean stop.

The :class:`Backlog` is what is journaled, or being journaled, and not yet materialized: per SOP
instance for the duplicates policy (a copy whose first copy is still being journaled waits for that
append), counted for :meth:`Backlog.idle`, and sized so that receivers wait while the materializer is
far behind.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import queue
import threading
import time
from collections import Counter
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import Engine, select

from dicom_node.config import DuplicatePolicy, NodeConfig
from dicom_node.db.engine import log_event, record_event
from dicom_node.db.errors import describe_error
from dicom_node.ingest.buffers import BLOCK, InstanceBuffer, round_up, write_file
from dicom_node.ingest.index import DUPLICATE_KEPT_FIRST, Index, Meta, OnKnown, Row, add_duplicates, record
from dicom_node.ingest.journal import Journal, Record
from dicom_node.ingest.pending import PendingSeries, receiver_id
from dicom_node.store import Store

log = logging.getLogger(__name__)

CHECKPOINT_EVERY_S = 2.0
BATCH = 256
IDLE_S = 0.05  # materialize once no C-STORE arrived for this long...
BACKLOG_BYTES = 256 << 20  # ...or once this much waits in memory
QUEUE_BYTES = 1 << 30  # receivers wait (their senders wait for the answer) while this much waits
RETRY_BASE_S, RETRY_MAX_S = 0.5, 30.0  # a failed batch is tried again after 0.5, 1, 2, ... 30 s
SET_ASIDE_RETRY_S = 30.0  # a record set aside (it fails alone while others succeed) is tried again this often


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


def disk_bytes(length: int) -> int:
    """The disk space an instance file of ``length`` bytes takes: whole blocks, and one more for its
    inode and folder entries (what the free-disk watermark counts as owed)."""
    return round_up(length) + BLOCK


@dataclass
class Pending:
    """Copies of one SOP instance journaled, or being journaled, and not yet materialized."""

    copies: int = 0  # journaled or being journaled
    duplicates: int = 0  # copies answered as duplicates, added to the row on materialization
    failed: bool = False  # the owner's append failed and no copy is left: waiting copies try again
    settled: threading.Event = field(default_factory=threading.Event)  # the owner's append finished


class Backlog:
    """What is journaled, or being journaled, and not yet materialized; safe to use from many threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pending: dict[str, Pending] = {}  # journaled (or being journaled), not yet materialized
        self._in_flight = 0  # appends under way
        self._queued = 0  # journaled, waiting for (or in) the materializer
        self._queued_bytes = 0  # their size: receivers wait while it is over QUEUE_BYTES
        self._owed_bytes = 0  # acknowledged (or being journaled) and not yet written as files: disk owed
        self._room = threading.Condition(self._lock)

    # -- per SOP instance: the duplicates policy -------------------------------------------------------
    def claim(self, sop_uid: str, *, share: bool = False) -> tuple[Pending, bool]:
        """The pending entry of ``sop_uid`` and whether this copy owns it (creates it, or ``share``s it)."""
        with self._lock:
            entry = self._pending.get(sop_uid)
            if entry is not None and not share:
                return entry, False
            if entry is None:
                entry = self._pending[sop_uid] = Pending()
            entry.copies += 1
            return entry, True

    def settle(self, sop_uid: str, entry: Pending, *, failed: bool) -> None:
        """The owner's append finished; a failed one gives its place up."""
        with self._lock:
            if failed:
                entry.copies -= 1
                entry.failed = entry.copies == 0
                if entry.failed and self._pending.get(sop_uid) is entry:
                    del self._pending[sop_uid]
        entry.settled.set()

    def count_duplicate(self, sop_uid: str, entry: Pending | None) -> bool:
        """Count a duplicate on ``entry`` if it is still pending (added to the row when its first copy is
        materialized); False if the index must count it."""
        with self._lock:
            if entry is not None and self._pending.get(sop_uid) is entry:
                entry.duplicates += 1
                return True
        return False

    def materialized(self, records: list[Record]) -> Counter[str]:
        """``records`` have their files and rows: the duplicates counted on entries now done, by SOP UID."""
        duplicates: Counter[str] = Counter()
        with self._lock:
            for rec in records:
                uid = rec.meta["sop_uid"]
                entry = self._pending.get(uid)
                if entry is not None:
                    entry.copies -= 1
                    if entry.copies <= 0:
                        del self._pending[uid]
                        duplicates[uid] += entry.duplicates
        return duplicates

    # -- counts and sizes: flushing and back-pressure --------------------------------------------------
    def enter(self, size: int) -> None:
        """An append of ``size`` bytes starts; waits while the materializer is :data:`QUEUE_BYTES` behind."""
        with self._room:
            while self._queued_bytes > QUEUE_BYTES:  # the materializer is behind: hold the sender back
                self._room.wait(timeout=1.0)
            self._in_flight += 1
            self._queued_bytes += size

    def journaled(self) -> None:
        """An append succeeded: its record waits for the materializer."""
        with self._lock:
            self._queued += 1

    def leave(self) -> None:
        """An append, successful or not, is over."""
        with self._lock:
            self._in_flight -= 1

    def unqueue(self, size: int) -> None:
        """``size`` bytes no longer wait: a failed append's, or a materialized batch's."""
        with self._room:
            self._queued_bytes -= size
            self._room.notify_all()

    def done(self, count: int, size: int) -> None:
        """A batch of ``count`` records (``size`` bytes) left the materializer, materialized or not."""
        with self._lock:
            self._queued -= count
        self.unqueue(size)

    # -- disk space owed: the free-disk watermark -------------------------------------------------------
    def reserve(self, size: int, limit: int) -> bool:
        """Count ``size`` bytes as owed to the disk unless the bytes owed would then exceed ``limit``
        (free space less the watermark); False (nothing counted) when they would."""
        with self._lock:
            if self._owed_bytes + size > limit:
                return False
            self._owed_bytes += size
            return True

    def paid(self, size: int) -> None:
        """``size`` owed bytes are written as files (or their append failed: never acknowledged)."""
        with self._lock:
            self._owed_bytes -= size

    def owed(self) -> int:
        """Bytes journaled, or being journaled, whose instance files are not written yet."""
        with self._lock:
            return self._owed_bytes

    def idle(self) -> bool:
        """Nothing is being journaled or waiting to be materialized."""
        with self._lock:
            return not self._pending and not self._in_flight and not self._queued


class Materializer:
    """Writes files and rows for journaled records, in batches, on a thread of its own.

    Call :meth:`replay` before :meth:`start`, and :meth:`close` on shutdown to materialize and
    checkpoint everything pending.
    """

    def __init__(
        self, config: NodeConfig, store: Store, writer: Engine, index: Index, journal: Journal, backlog: Backlog
    ) -> None:
        self.config = config
        self.store = store
        self.writer = writer  # rows become durable at the checkpoint (syncfs), not per commit
        self.index = index
        self.journal: Journal | None = journal
        self.backlog = backlog
        self.last_keep = 0.0  # when the last instance was journaled (monotonic)
        self._retired = 0  # journal segments up to this one are retired
        # Series with records waiting here, published for the stability sweep of any process.
        self.pending = PendingSeries(receiver_id(journal.folder), writer)
        self._failed: list[Record] = []  # records whose batch failed, in journal order: tried again first
        # Records that failed alone while the rest of their batch materialized: kept in the journal, their
        # series kept from routing, tried again alone every SET_ASIDE_RETRY_S; nothing waits behind them.
        self._set_aside: list[Record] = []
        self._set_aside_at = 0.0  # monotonic time of their next try
        self._failures = 0  # failed attempts in a row
        self._retry_at = 0.0  # monotonic time of the next attempt
        self._queue: queue.Queue[Record | None] = queue.Queue(maxsize=2000)
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="materializer", daemon=True)
        self._thread.start()

    def hand_over(self, meta: Meta, segment: int, offset: int, buf: InstanceBuffer) -> None:
        """Queue a record the journal just made durable (at ``offset`` of ``segment``).

        The materializer reads the bytes back from the journal: the buffer's memory, already backed by
        pages, goes straight to the next instance instead of waiting in the queue.
        """
        self.last_keep = time.monotonic()
        self.backlog.journaled()
        self.pending.add(meta)
        length = buf.length
        buf.release()
        self._queue.put(Record(meta, None, segment, offset, length))

    def close(self) -> None:
        """Materialize and checkpoint everything pending, stop the thread, close the journal."""
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join(timeout=60)
            self._thread = None
        if self.journal is not None:
            self.journal.close()
            self.journal = None

    # -- the thread ------------------------------------------------------------------------------------
    def _run(self) -> None:
        last_checkpoint = time.monotonic()
        dirty = False
        while True:
            wait = 0.5 if not self._failed else min(0.5, max(self._retry_at - time.monotonic(), 0.001))
            try:
                first = self._queue.get(timeout=wait)
            except queue.Empty:
                if self._failed and time.monotonic() >= self._retry_at:
                    self._attempt([])
                    dirty = True
                if self._set_aside and time.monotonic() >= self._set_aside_at:
                    self._retry_set_aside()
                    dirty = True
                if dirty and time.monotonic() - last_checkpoint > CHECKPOINT_EVERY_S:
                    self.checkpoint()
                    last_checkpoint, dirty = time.monotonic(), False
                continue
            if first is None:  # close() asks us to stop: one last try for failed records, then checkpoint
                self._attempt([], force=True)
                self._retry_set_aside()
                self.checkpoint()
                return
            self.pending.publish()
            batch, stop = self._gather(first)
            self._attempt(batch, force=stop)
            dirty = True
            if stop:
                self.checkpoint()
                return
            if time.monotonic() - last_checkpoint > CHECKPOINT_EVERY_S:  # sustained traffic
                self.checkpoint()
                last_checkpoint, dirty = time.monotonic(), False

    def _gather(self, first: Record) -> tuple[list[Record], bool]:
        """``first`` and the records queued after it until the traffic pauses (or the backlog is full).

        File writes and rows then never compete with the receiving threads for the interpreter while a
        study streams in. Returns the batch and whether :meth:`close` asked to stop meanwhile.
        """
        batch = [first]
        backlog = first.length
        while backlog < BACKLOG_BYTES and len(batch) < 8 * BATCH:
            quiet = time.monotonic() - self.last_keep
            try:
                item = self._queue.get(timeout=max(IDLE_S - quiet, 0.001))
            except queue.Empty:
                if time.monotonic() - self.last_keep >= IDLE_S:
                    break
                continue
            if item is None:
                return batch, True
            self.pending.publish()  # a no-op unless a series began waiting
            batch.append(item)
            backlog += item.length
        return batch, False

    def _attempt(self, batch: list[Record], *, force: bool = False) -> None:
        """Materialize the failed records (when their retry is due, or ``force``), then ``batch``.

        Journal order is kept: while failed records wait for their retry, new ones wait behind them.
        A chunk that fails is tried again one record at a time (:meth:`_isolate`): when some of its
        records materialize alone, those that still fail are set aside and the rest goes on. When none
        does (the database is down, say), the records stay in memory and in the journal and are tried
        again with exponential backoff while the node runs (and replayed by the next start if it stops
        first); the failure is logged without patient data, recorded as an event and noted on the
        series' pending marks, which keep the series from being routed until its rows exist.
        """
        try:
            self.pending.publish()
            if self._failed and not force and time.monotonic() < self._retry_at:
                self._failed.extend(batch)
                return
            todo, self._failed = self._failed + batch, []
            for start in range(0, len(todo), BATCH):
                chunk = todo[start : start + BATCH]
                try:
                    self.materialize(chunk)
                except Exception as exc:
                    retry = self._isolate(chunk)
                    if retry is None:
                        self._failed = todo[start:]
                        self._note_failure(chunk, exc)
                        return
                    if retry:  # failed alone on the disk, not for their own reason: retried with backoff
                        self._failed = retry + todo[start + BATCH :]
                        self._note_failure(retry, exc)
                        return
                    continue
                self._note_recovery()  # before the backlog can read idle (flush() returns on that)
                self.backlog.paid(sum(disk_bytes(rec.length) for rec in chunk))  # their files are written
                self._supersede(chunk)
            self._note_recovery()  # every chunk went through _isolate
        finally:
            self.backlog.done(len(batch), sum(rec.length for rec in batch))

    def _note_recovery(self) -> None:
        """After failed attempts, the first success: logged and recorded as an event, once."""
        if self._failures:
            log.warning("journaled instances materialized again after %d failed attempt(s)", self._failures)
            log_event(self.writer, "materialize_recovered", f"materialized after {self._failures} failed attempt(s)")
            self._failures = 0

    def _note_failure(self, chunk: list[Record], exc: Exception) -> None:
        self._failures += 1
        delay = min(RETRY_MAX_S, RETRY_BASE_S * 2 ** min(self._failures - 1, 16))
        self._retry_at = time.monotonic() + delay
        error = describe_error(exc)
        log.error(
            "materializing %d journaled instance(s) failed (%s); %d wait, tried again in %.1f s",
            len(chunk),
            error,
            len(self._failed),
            delay,
        )
        if self._failures == 1:  # one event per episode, not one per retry
            log_event(
                self.writer,
                "materialize_failed",
                f"{len(self._failed)} journaled instance(s) have no row yet, retrying: {error}",
                level="ERROR",
            )
        self.pending.failed([rec.meta for rec in chunk], error)

    # -- records that fail alone -----------------------------------------------------------------------
    def _alone(self, rec: Record, *, replay: bool = False) -> Exception | None:
        """Materialize ``rec`` by itself; the error if that failed. A record held in memory (a replayed
        one) keeps a copy of its bytes for the next try."""
        spare = None
        if rec.buffer is not None and not replay:  # a replay leaves the buffers to its caller
            with rec.buffer.view() as data:
                spare = InstanceBuffer.from_bytes(data)
        try:
            self.materialize([rec], replay=replay)
        except Exception as exc:
            if spare is not None:  # the bytes for the next try
                if rec.buffer is not None:
                    rec.buffer.release()
                rec.buffer = spare
            log.debug("materializing one journaled instance failed: %s", describe_error(exc))
            return exc
        if spare is not None:
            spare.release()
        return None

    def _isolate(self, chunk: list[Record]) -> list[Record] | None:
        """After ``chunk`` failed as a whole, materialize its records one at a time.

        None when every one fails (the cause is not theirs: the chunk is retried as a whole, with
        backoff). Else those that failed are tried once more, and the records that failed again with
        an OSError (a full disk, say: not their own
        reason either), to be retried with backoff; those that failed otherwise are set aside
        (:meth:`_set_aside_one`).
        """
        if len(chunk) < 2:
            return None
        failed: list[tuple[Record, Exception]] = []
        for rec in chunk:
            exc = self._alone(rec)
            if exc is None:
                self.backlog.paid(disk_bytes(rec.length))
            else:
                failed.append((rec, exc))
        if len(failed) == len(chunk):
            return None
        again: list[tuple[Record, Exception]] = []  # once more: the cause may have gone meanwhile
        for rec, _ in failed:
            exc = self._alone(rec)
            if exc is None:
                self.backlog.paid(disk_bytes(rec.length))
            else:
                again.append((rec, exc))
        failed = again
        for rec, exc in failed:
            if not isinstance(exc, OSError):
                self._set_aside_one(rec, exc)
        self._supersede([rec for rec in chunk if all(rec is not f for f, _ in failed)])
        return [rec for rec, exc in failed if isinstance(exc, OSError)]

    def _set_aside_one(self, rec: Record, exc: Exception) -> None:
        """Keep ``rec`` aside: in the journal (its segment is not retired), in memory for a retry every
        :data:`SET_ASIDE_RETRY_S`, and noted, without patient data, in the log, in an ``ingest_set_aside``
        event and on its series' pending mark, which keeps the series from being routed."""
        error = describe_error(exc)
        if not self._set_aside:
            self._set_aside_at = time.monotonic() + SET_ASIDE_RETRY_S
        self._set_aside.append(rec)
        log.error(
            "a journaled instance was set aside: materializing it alone failed (%s); it stays in the journal, "
            "its series waits, it is tried again every %.0f s",
            error,
            SET_ASIDE_RETRY_S,
        )
        log_event(
            self.writer,
            "ingest_set_aside",
            f"journaled instance set aside (kept in the journal, its series waits): {error}",
            level="ERROR",
            sop_uid=rec.meta["sop_uid"],
        )
        self.pending.failed([rec.meta], f"instance set aside: {error}")

    def _retry_set_aside(self) -> None:
        """Try each record set aside again, alone; those that materialize leave the list."""
        if not self._set_aside:
            return
        self.pending.publish()
        todo, self._set_aside = self._set_aside, []
        for rec in todo:
            exc = self._alone(rec)
            if exc is not None:
                self._set_aside.append(rec)
                continue
            self.backlog.paid(disk_bytes(rec.length))
            log.warning("a journaled instance set aside was materialized")
            log_event(
                self.writer,
                "set_aside_materialized",
                "a journaled instance set aside was materialized",
                sop_uid=rec.meta["sop_uid"],
            )
        self._set_aside_at = time.monotonic() + SET_ASIDE_RETRY_S

    def _supersede(self, done: list[Record]) -> None:
        """Under the overwrite policy, a record set aside whose instance a later copy in ``done`` has
        just materialized is over: the later copy wins, as it would have in journal order."""
        if not self._set_aside or self.config.node.duplicate_policy is not DuplicatePolicy.OVERWRITE:
            return
        newer = {rec.meta["sop_uid"] for rec in done}
        over = [rec for rec in self._set_aside if rec.meta["sop_uid"] in newer]
        if not over:
            return
        try:
            with self.writer.begin() as conn:
                released = self.pending.release(conn, (rec.meta for rec in over))
        except Exception as exc:  # tried again with the next batch that holds a later copy, or retried
            log.warning("cannot release superseded records: %s", describe_error(exc))
            return
        self.pending.settle(released)
        self.backlog.materialized(over)
        self._set_aside = [rec for rec in self._set_aside if all(rec is not o for o in over)]
        for rec in over:
            self.backlog.paid(disk_bytes(rec.length))
            if rec.buffer is not None:
                rec.buffer.release()
            if self.journal is not None:
                self.journal.materialized(rec.segment)

    # -- one batch -------------------------------------------------------------------------------------
    def materialize(self, records: list[Record], *, replay: bool = False) -> None:
        """Write files and rows for journaled records, in journal order.

        Keep-first (and reject): an instance the index already holds keeps its first copy, and the
        journaled one counts as a duplicate. Overwrite: the journaled copy replaces it. A replay
        re-applies records idempotently: a record already indexed (materialized before the crash)
        gets its file back if that did not reach the disk.
        """
        overwrite = self.config.node.duplicate_policy is DuplicatePolicy.OVERWRITE
        known = self.index.recorded([rec.meta["sop_uid"] for rec in records]) if replay or not overwrite else set()
        rows, late = self._write_files(records, known, overwrite=overwrite, replay=replay)
        with self.writer.begin() as conn:
            on_known: OnKnown = "overwrite" if overwrite else "skip" if replay else "duplicate"
            raced = record(conn, rows, on_known=on_known)
            if on_known == "duplicate":  # copies another receiver process recorded first
                late = late + raced
            for m in late:  # in this batch's transaction: a re-sent study is one commit, not one per copy
                record_event(conn, "duplicate", DUPLICATE_KEPT_FIRST, calling_ae=m["calling_ae"], sop_uid=m["sop_uid"])
            duplicates: Counter[str] = Counter(m["sop_uid"] for m in late)
            for sop_uid, count in duplicates.items():
                if count:
                    add_duplicates(conn, sop_uid, count)
            released = None if replay else self.pending.release(conn, (rec.meta for rec in records))
        if released is not None:
            self.pending.settle(released)
            # Copies answered as duplicates while their first copy waited: counted once its row committed
            # (a failed batch keeps its entries, so they are counted by the retry).
            waited = {uid: n for uid, n in self.backlog.materialized(records).items() if n}
            if waited:
                with self.writer.begin() as conn:
                    for sop_uid, count in waited.items():
                        add_duplicates(conn, sop_uid, count)
        if not replay and self.journal is not None:
            for segment, count in Counter(rec.segment for rec in records).items():
                self.journal.materialized(segment, count)

    def _write_files(
        self, records: list[Record], known: set[str], *, overwrite: bool, replay: bool
    ) -> tuple[list[Row], list[Meta]]:
        """The instance files of ``records``; returns the rows to write and the late duplicates' meta
        (copies of instances indexed before they arrived, under keep-first)."""
        rows: list[Row] = []
        late: list[Meta] = []
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
        if not replay:  # a replay releases them once the records are materialized or set aside
            for rec in records:
                if rec.buffer is not None:
                    rec.buffer.release()
        return rows, late

    # -- checkpoint and replay -------------------------------------------------------------------------
    def checkpoint(self) -> None:
        """Retire the journal segments whose records are all materialized and durable.

        Runs under traffic too: segments are closed by a rotation, and those that no append can
        still reach and whose records are all materialized are retired after a file system flush.
        """
        assert self.journal is not None
        try:
            closed = self.journal.rotate()
            done = self.journal.retirable(closed)
            stuck = self.journal.stuck()  # no room for a new segment: the current one is recycled instead
            log.debug("checkpoint: segments up to %d closed, %d materialized, %d retired", closed, done, self._retired)
            if done <= self._retired and not stuck:
                return
            self._sync_all()
            if self._failed:
                log.warning("journal segments kept: %d instance(s) wait for a retry", len(self._failed))
                return
            if done > self._retired:
                self.journal.retire(done)
                self._retired = done
            if stuck and self.journal.recycle_current():
                log.info("journal segment recycled: no room on the disk for a new one")
        except OSError as exc:  # a full disk, say: the journal keeps its segments; the next checkpoint tries again
            log.error("journal checkpoint failed: %s", exc)
        except Exception:
            log.exception("journal checkpoint failed")

    def _sync_all(self) -> None:
        """Flush the instance files and, for SQLite, the database file system too."""
        syncfs(self.store.root)
        database = self.writer.url.database if self.writer.url.get_backend_name() == "sqlite" else None
        if database and Path(database).parent.stat().st_dev != self.store.root.stat().st_dev:
            syncfs(Path(database).parent)

    def replay(self) -> None:
        """Materialize every record the journal holds (after an unclean stop), then retire its segments.

        A batch that fails is tried one record at a time; records that fail alone while others succeed
        are set aside as in :meth:`_isolate` (the start goes on; their segments and series marks are
        kept). When every record of a batch fails alone, the start fails (the database is down, say).
        """
        assert self.journal is not None
        batch: list[Record] = []
        count = 0
        aside: list[tuple[Record, Exception]] = []
        for rec in self.journal.replay():
            batch.append(rec)
            if len(batch) >= BATCH:
                count += self._replay_batch(batch, aside)
                batch = []
        if batch:
            count += self._replay_batch(batch, aside)
        if count:
            log.warning("replayed %d journaled instance(s) after an unclean stop", count)
        if aside and not count:  # nothing materialized: the start fails unless the database answers
            with self.writer.connect() as conn:
                conn.execute(select(1))
        self._sync_all()
        kept = min((rec.segment for rec, _ in aside), default=self.journal.current)
        self.journal.retire(kept - 1)  # a record set aside keeps its segment, and those after it
        self.pending.clear()  # everything else this journal held has its rows now
        for rec, _ in aside:  # waiting again, as if just received: counted, claimed, owed, marked
            self.journal.hold(rec.segment)
            self.pending.add(rec.meta)
            self.backlog.claim(rec.meta["sop_uid"], share=True)
            self.backlog.reserve(disk_bytes(rec.length), 1 << 62)
        self.pending.publish()
        for rec, exc in aside:
            self._set_aside_one(rec, exc)

    def _replay_batch(self, batch: list[Record], aside: list[tuple[Record, Exception]]) -> int:
        """Replay ``batch``; records that fail alone while others succeed go to ``aside``. Returns the
        number of records replayed."""
        try:
            self.materialize(batch, replay=True)
        except Exception as exc:
            failed = [(rec, e) for rec in batch if (e := self._alone(rec, replay=True)) is not None]
            for _, e in failed:
                if isinstance(e, OSError):  # the disk, not the record: the start fails, the journal keeps it
                    raise e from exc
            aside.extend(failed)
        kept = {id(rec) for rec, _ in aside}
        for rec in batch:  # the bytes of records set aside stay in memory for their retries
            if rec.buffer is not None and id(rec) not in kept:
                rec.buffer.release()
        return len(batch) - sum(1 for rec in batch if id(rec) in kept)
