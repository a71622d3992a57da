"""Series with journaled instances that have no row yet, published in the database for the stability sweep.

A receiver answers Success once an instance is in its journal; the row follows from the materializer,
in another thread and possibly much later (a busy batch, or a failed one that is retried). Until then
the series must not be routed: a job would run on part of it. The receiver may be another process, so
the state is shared through the ``ingest_pending`` table, one row per (receiver, series): the
materializer thread inserts it as soon as it sees the series' first waiting record (never the receive
threads: no database round trip on the hot path), and deletes it in the transaction that writes the
series' last waiting rows. :class:`~dicom_node.intake.stability.StabilitySweep` leaves a series alone
while any receiver lists it. A receiver's rows are cleared once its journal is replayed at start.
"""

from __future__ import annotations

import hashlib
import logging
import socket
import threading
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, delete, update
from sqlalchemy.engine import Connection

from dicom_node.db import ingest_pending, now
from dicom_node.db.errors import describe_error
from dicom_node.db.upsert import insert_missing

log = logging.getLogger(__name__)

Released = tuple[Counter[str], list[str]]  # records per series, and the series whose marks were deleted


def receiver_id(journal: Path) -> str:
    """A name for one receiver's journal that is unique across the nodes sharing a database."""
    where = f"{socket.gethostname()}:{journal.resolve()}"
    return f"{journal.name}@{hashlib.sha1(where.encode()).hexdigest()[:16]}"


class PendingSeries:
    """This receiver's series with waiting records: counted in memory, published in ``ingest_pending``."""

    def __init__(self, receiver: str, writer: Engine) -> None:
        self.receiver = receiver
        self.writer = writer
        self._lock = threading.Lock()
        self._counts: Counter[str] = Counter()  # waiting records per series
        self._unpublished: dict[str, str] = {}  # series -> study, waiting records but no row yet
        self._studies: dict[str, str] = {}  # series -> study, of every series with waiting records

    def add(self, meta: dict[str, Any]) -> None:
        """One more record of ``meta``'s series waits for the materializer (any thread; no I/O)."""
        series_uid = meta["series_uid"]
        with self._lock:
            if self._counts[series_uid] == 0:
                self._unpublished[series_uid] = self._studies[series_uid] = meta["study_uid"]
            self._counts[series_uid] += 1

    def publish(self) -> None:
        """Insert the rows of series that began waiting since the last call (materializer thread).

        Never raises: if the database refuses, the rows are tried again at the next call.
        """
        with self._lock:
            todo, self._unpublished = self._unpublished, {}
        if not todo:
            return
        t = now()
        rows = [dict(receiver=self.receiver, series_uid=s, study_uid=st, since=t) for s, st in sorted(todo.items())]
        try:
            with self.writer.begin() as conn:
                insert_missing(conn, ingest_pending, rows, ("receiver", "series_uid"))
        except Exception as exc:
            log.warning("cannot publish %d pending series: %s", len(rows), describe_error(exc))
            with self._lock:
                for series_uid, study_uid in todo.items():
                    if self._counts[series_uid] > 0:
                        self._unpublished.setdefault(series_uid, study_uid)

    def release(self, conn: Connection, metas: Iterable[dict[str, Any]]) -> Released:
        """In the transaction that writes the rows of ``metas``: delete the marks of series left with no
        waiting record. Pass the result to :meth:`settle` once the transaction committed."""
        done = Counter(m["series_uid"] for m in metas)
        with self._lock:
            finished = sorted(s for s, n in done.items() if self._counts[s] <= n)
        for series_uid in finished:
            conn.execute(
                delete(ingest_pending).where(
                    ingest_pending.c.receiver == self.receiver, ingest_pending.c.series_uid == series_uid
                )
            )
        return done, finished

    def settle(self, released: Released) -> None:
        """The transaction of :meth:`release` committed: those records no longer wait. A series whose mark
        was deleted while a new record of it arrived is published again."""
        done, finished = released
        with self._lock:
            for series_uid, n in done.items():
                left = self._counts[series_uid] - n
                if left > 0:
                    self._counts[series_uid] = left
                    if series_uid in finished:
                        self._unpublished[series_uid] = self._studies[series_uid]
                else:
                    self._counts.pop(series_uid, None)
                    self._studies.pop(series_uid, None)
                    self._unpublished.pop(series_uid, None)

    def waiting(self) -> int:
        """How many records wait, over all series."""
        with self._lock:
            return sum(self._counts.values())

    def failed(self, metas: Iterable[dict[str, Any]], error: str) -> None:
        """Note on the marks of ``metas``' series why their rows are late (for ``status``); never raises."""
        series_uids = sorted({m["series_uid"] for m in metas})
        try:
            with self.writer.begin() as conn:
                conn.execute(
                    update(ingest_pending)
                    .where(ingest_pending.c.receiver == self.receiver, ingest_pending.c.series_uid.in_(series_uids))
                    .values(error=error[:500])
                )
        except Exception as exc:
            log.warning("cannot note the failure on pending series: %s", describe_error(exc))

    def clear(self) -> None:
        """Delete every mark of this receiver (its journal was just replayed: nothing of it waits)."""
        with self._lock:
            self._counts.clear()
            self._unpublished.clear()
            self._studies.clear()
        with self.writer.begin() as conn:
            conn.execute(delete(ingest_pending).where(ingest_pending.c.receiver == self.receiver))


__all__ = ["PendingSeries", "receiver_id"]
