"""Series stability: a series is complete after a quiet period since its last instance.

State lives in the ``series`` table (``receiving`` -> ``routed`` | ``unrouted``), so a restart resumes
exactly where it stopped. The sweep runs every second from the scheduler, and once more at the moment
the next series falls quiet when that comes before the next tick (:meth:`StabilitySweep.next_due`), so
a series is routed within a few milliseconds of its quiet period, not up to a second later. For each
quiet series it
reads one stored header, checks the routes, and in one transaction enqueues a job per matching
(route, pipeline) and marks the series. A route with ``wait_for = "study"`` waits until every series
of the study is quiet. Series that match nothing are kept and marked ``unrouted`` with the reasons.
A series that a receiver (of any process) still has journaled instances of without rows, listed in
``ingest_pending``, is not quiet: its rows are incomplete.
"""

from __future__ import annotations

import logging
from typing import Any

from pydicom import dcmread
from pydicom.dataset import Dataset
from sqlalchemy import Engine, Exists, exists, func, select, update

from dicom_node.config import NodeConfig
from dicom_node.db import ingest_pending, instances, now, results, series
from dicom_node.db.engine import record_event
from dicom_node.intake.routing import check_routes, series_attributes
from dicom_node.queue import JobQueue
from dicom_node.store import Store

log = logging.getLogger(__name__)


def _waiting(series_uid: str | None = None) -> Exists:
    """True for a series (``series_uid``, else the row of ``series`` in the query) with instances
    journaled by some receiver and not yet materialized: its rows are incomplete, so it is not quiet
    whatever its last-seen time says (see ``ingest/pending.py``)."""
    which = series.c.series_uid if series_uid is None else series_uid
    return exists().where(ingest_pending.c.series_uid == which)


RETURNED_NOTE = "the node's own results, sent back (e.g. by the PACS with the whole study): not routed"


def _own_results(conn: Any, series_uid: str) -> bool:
    """Whether every instance of the series is a result object this node made (its SOP Instance UID is in
    ``results``): such a series is recognised and skipped quietly, never routed or listed as unrouted."""
    total, ours = conn.execute(
        select(func.count(), func.count(results.c.id))
        .select_from(instances.outerjoin(results, results.c.sop_uid == instances.c.sop_uid))
        .where(instances.c.series_uid == series_uid)
    ).one()
    return bool(total) and total == ours


class StabilitySweep:
    """Turns quiet series into jobs."""

    def __init__(self, config: NodeConfig, engine: Engine, store: Store, queue: JobQueue) -> None:
        self.config = config
        self.engine = engine
        self.store = store
        self.queue = queue

    def sweep(self, at: float | None = None) -> int:
        """Route every series that has been quiet long enough; returns how many were decided."""
        t = now() if at is None else at
        cutoff = t - self.config.intake.quiet_period_s
        with self.engine.connect() as conn:
            quiet = conn.execute(
                select(series).where(series.c.state == "receiving", series.c.last_seen <= cutoff, ~_waiting())
            ).all()
            busy_studies = {
                r.study_uid
                for r in conn.execute(
                    select(series.c.study_uid).where(series.c.state == "receiving", series.c.last_seen > cutoff)
                )
            }
            busy_studies.update(conn.execute(select(ingest_pending.c.study_uid).distinct()).scalars())
        decided = 0
        for row in quiet:
            try:
                if self._route(row, busy_studies, cutoff):
                    decided += 1
            except Exception:  # one bad series must not stop the others from being routed
                log.exception("routing series failed")
        return decided

    def next_due(self, at: float | None = None) -> float | None:
        """When the next series still inside its quiet period falls quiet (None if there is none)."""
        t = now() if at is None else at
        quiet = self.config.intake.quiet_period_s
        with self.engine.connect() as conn:
            latest = conn.execute(
                select(func.min(series.c.last_seen)).where(
                    series.c.state == "receiving", series.c.last_seen > t - quiet
                )
            ).scalar()
        return None if latest is None else float(latest) + quiet

    def _route(self, row: Any, busy_studies: set[str], cutoff: float) -> bool:
        attrs = self._attributes(row)
        checks = check_routes(self.config, attrs)
        matched = [c.route for c in checks if c.matched]
        if any(r.wait_for == "study" for r in matched) and row.study_uid in busy_studies:
            return False  # another series of the study is still arriving
        with self.engine.begin() as conn:
            current = conn.execute(
                select(series.c.state, series.c.revision, series.c.last_seen)
                .where(series.c.id == row.id)
                .with_for_update()
            ).first()
            if current is None or current.state != "receiving" or current.last_seen > cutoff:
                return False  # an instance arrived meanwhile; the next sweep decides
            if conn.execute(select(_waiting(row.series_uid))).scalar():
                return False  # a receiver journaled an instance of it that has no row yet
            if _own_results(conn, row.series_uid):  # the PACS sent our SEG / SR back with the study
                conn.execute(
                    update(series)
                    .where(series.c.id == row.id)
                    .values(state="returned", routed_at=now(), routing_note=RETURNED_NOTE)
                )
                log.info("series revision %d: the node's own results came back; not routed", current.revision)
                return True
            created = 0
            for route in matched:
                for pipeline in route.pipelines:
                    job_id = self.queue.enqueue(
                        conn,
                        series_uid=row.series_uid,
                        study_uid=row.study_uid,
                        route=route.name,
                        pipeline=pipeline,
                        revision=current.revision,
                    )
                    created += job_id is not None
            if matched:
                note = "matched " + ", ".join(r.name for r in matched)
                state = "routed"
            else:
                note = "; ".join(f"{c.route.name}: " + ", ".join(c.reasons) for c in checks) or "no routes configured"
                state = "unrouted"
                record_event(
                    conn,
                    "unrouted",
                    f"series matched no route ({note})",
                    level="WARNING",
                    calling_ae=row.calling_ae,
                    series_uid=row.series_uid,
                )
            conn.execute(
                update(series).where(series.c.id == row.id).values(state=state, routed_at=now(), routing_note=note)
            )
        log.info(
            "series revision %d %s: %d job(s) queued",
            current.revision,
            state,
            created,
            extra={"series_uid": row.series_uid},
        )
        return True

    def _attributes(self, row: Any) -> dict[str, Any]:
        with self.engine.connect() as conn:
            first = conn.execute(
                select(instances.c.path).where(instances.c.series_uid == row.series_uid).order_by(instances.c.id)
            ).first()
        header: Dataset = Dataset()
        if first is not None:
            try:
                header = dcmread(self.store.absolute(first.path), stop_before_pixels=True)
            except Exception as exc:  # the file was accepted; a header we cannot re-read routes nowhere
                log.warning("cannot re-read stored header for routing: %s", exc)
        return series_attributes(header, self.config, calling_ae=row.calling_ae, called_ae=row.called_ae)
