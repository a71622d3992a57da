"""Retention: the node is not an archive. Received studies are deleted once they have served their purpose.

A study is **settled** when none of its series is still receiving, every job on it has succeeded or was
cancelled, and every delivery of those jobs' results was sent. Its settle time is the latest of its last
instance, its jobs' ends and its deliveries' sends. A study whose job is dead, or whose results are still
waiting for a PACS that is down (or gave up on it), is **held**: never deleted, whatever the age or the disk.

``[retention]``:

- ``keep_days``: a settled study is deleted this long after it settled.
- ``purge_below_free_mb``: while the storage disk has less free space than this, settled studies are deleted
  oldest first, whatever their age (0: off).

Deleting a study removes its instance files and its study, series and instance rows; the jobs, results and
deliveries stay as the record of what was done. Each deletion is an event row (``retention``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import delete, func, select
from sqlalchemy.engine import Connection, Engine

from dicom_node.config import RetentionSection
from dicom_node.db import deliveries, instances, jobs, now, results, series, studies
from dicom_node.db.engine import record_event
from dicom_node.store import Store

log = logging.getLogger(__name__)

DONE_JOBS = ("succeeded", "cancelled")


@dataclass(frozen=True)
class StudyState:
    """One study's retention state: ``held`` names why it must stay, else ``settled_at`` says since when."""

    study_uid: str
    held: str | None
    settled_at: float


def _latest(conn: Connection, column: object, where: object) -> float:
    return float(conn.execute(select(func.max(column)).where(where)).scalar_one() or 0.0)  # type: ignore[arg-type]


def study_state(conn: Connection, study_uid: str, last_seen: float) -> StudyState:
    """Whether ``study_uid`` is held (and why) or settled (and since when)."""
    receiving = conn.execute(
        select(func.count()).where(series.c.study_uid == study_uid, series.c.state == "receiving")
    ).scalar_one()
    if receiving:
        return StudyState(study_uid, "a series is still receiving", 0.0)
    open_jobs = conn.execute(
        select(func.count()).where(jobs.c.study_uid == study_uid, jobs.c.state.not_in(DONE_JOBS))
    ).scalar_one()
    if open_jobs:
        return StudyState(study_uid, "a job has not succeeded (queued, running, failed or dead)", 0.0)
    study_results = select(results.c.id).join(jobs, jobs.c.id == results.c.job_id).where(jobs.c.study_uid == study_uid)
    unsent = conn.execute(
        select(func.count()).where(deliveries.c.result_id.in_(study_results), deliveries.c.state != "sent")
    ).scalar_one()
    if unsent:
        return StudyState(study_uid, "a result is not delivered yet (or its delivery gave up)", 0.0)
    settled = max(
        last_seen,
        _latest(conn, jobs.c.finished_at, jobs.c.study_uid == study_uid),
        _latest(conn, deliveries.c.sent_at, deliveries.c.result_id.in_(study_results)),
    )
    return StudyState(study_uid, None, settled)


def study_states(engine: Engine) -> list[StudyState]:
    """Every study's retention state, oldest settled first (held ones last)."""
    with engine.connect() as conn:
        rows = conn.execute(select(studies.c.study_uid, studies.c.last_seen)).all()
        states = [study_state(conn, str(r.study_uid), float(r.last_seen)) for r in rows]
    return sorted(states, key=lambda s: (s.held is not None, s.settled_at))


def purge_study(engine: Engine, store: Store, study_uid: str, reason: str) -> tuple[int, int]:
    """Delete a study's instance files and rows; returns (instances, bytes). One event row records it."""
    with engine.begin() as conn:
        rows = conn.execute(select(instances.c.path, instances.c.size).where(instances.c.study_uid == study_uid)).all()
        conn.execute(delete(instances).where(instances.c.study_uid == study_uid))
        conn.execute(delete(series).where(series.c.study_uid == study_uid))
        conn.execute(delete(studies).where(studies.c.study_uid == study_uid))
        size = sum(int(r.size) for r in rows)
        record_event(
            conn,
            "retention",
            f"study deleted ({reason}): {len(rows)} instance(s), {size / 1e6:.1f} MB",
            study_uid=study_uid,
            reason=reason,
        )
    for r in rows:  # after the commit: a crash in between leaves orphan files, never rows without files
        Path(store.absolute(str(r.path))).unlink(missing_ok=True)
    return len(rows), size


class Retention:
    """The retention sweep run by ``serve`` every ``interval_s``."""

    def __init__(
        self, config: RetentionSection, engine: Engine, store: Store, free_mb: Callable[[], float] | None = None
    ) -> None:
        self.config = config
        self.engine = engine
        self.store = store
        self.free_mb = free_mb or (lambda: store.free_mb(max_age_s=0.0))

    def sweep(self) -> list[str]:
        """Delete what the rules allow; returns the deleted study UIDs."""
        deleted: list[str] = []
        cutoff = now() - self.config.keep_days * 86400.0
        for state in study_states(self.engine):
            if state.held is not None:
                break  # held studies sort last
            if state.settled_at <= cutoff:
                reason = f"settled more than {self.config.keep_days:g} day(s) ago"
            elif self.config.purge_below_free_mb and self.free_mb() < self.config.purge_below_free_mb:
                reason = f"disk under {self.config.purge_below_free_mb} MB free"
            else:
                continue
            count, size = purge_study(self.engine, self.store, state.study_uid, reason)
            log.info("retention: deleted a study (%s): %d instance(s), %.1f MB", reason, count, size / 1e6)
            deleted.append(state.study_uid)
        return deleted


def held_summary(engine: Engine) -> dict[str, int]:
    """How many studies are held, by reason, and how many are settled (for ``status``)."""
    out: dict[str, int] = {}
    for state in study_states(engine):
        key = state.held or "settled (may be deleted by retention)"
        out[key] = out.get(key, 0) + 1
    return out
