"""The job queue: claim with a lease, heartbeat, retry with exponential backoff, dead after the last attempt.

Claiming is one atomic ``UPDATE jobs ... WHERE id = (SELECT ... LIMIT 1 [FOR UPDATE SKIP LOCKED])
AND state IN (...) RETURNING``: on PostgreSQL concurrent workers skip each other's locked rows; on
SQLite (which ignores FOR UPDATE) the write lock taken by ``BEGIN IMMEDIATE`` plus the state check in
the outer WHERE make sure a job goes to one worker only.

States: ``queued -> running -> succeeded``; ``running -> failed`` (waits ``run_after``) ``-> running``
again, or ``-> dead`` after ``max_attempts``; ``cancelled`` by an admin. An expired lease puts a
running job back (or kills it if that was its last attempt).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine, and_, insert, or_, select, update
from sqlalchemy.engine import Connection

from dicom_node.config import QueueSection
from dicom_node.db import jobs, now

log = logging.getLogger(__name__)

JOB_STATES = ("queued", "running", "succeeded", "failed", "dead", "cancelled")
CLAIMABLE = ("queued", "failed")
ACTIVE = ("queued", "failed", "running")


@dataclass(frozen=True)
class Job:
    """A claimed job, as the worker sees it."""

    id: int
    series_uid: str
    study_uid: str
    route: str
    pipeline: str
    revision: int
    attempts: int
    max_attempts: int


class LeaseLost(RuntimeError):
    """The job's lease expired or was taken over; the worker must drop it."""


class JobQueue:
    """Queue operations on the jobs table."""

    def __init__(self, engine: Engine, settings: QueueSection) -> None:
        self.engine = engine
        self.settings = settings

    # -- producers ---------------------------------------------------------------------------------------
    def enqueue(
        self, conn: Connection, *, series_uid: str, study_uid: str, route: str, pipeline: str, revision: int
    ) -> int | None:
        """Add a job inside the caller's transaction; None if that exact work is already queued."""
        exists = conn.execute(
            select(jobs.c.id).where(
                jobs.c.series_uid == series_uid,
                jobs.c.route == route,
                jobs.c.pipeline == pipeline,
                jobs.c.revision == revision,
            )
        ).first()
        if exists is not None:
            return None
        t = now()
        result = conn.execute(
            insert(jobs)
            .values(
                series_uid=series_uid,
                study_uid=study_uid,
                route=route,
                pipeline=pipeline,
                revision=revision,
                state="queued",
                attempts=0,
                max_attempts=self.settings.max_attempts,
                run_after=t,
                created_at=t,
            )
            .returning(jobs.c.id)
        )
        return int(result.scalar_one())

    # -- workers -----------------------------------------------------------------------------------------
    def claim(self, worker: str) -> Job | None:
        """Take the next runnable job, or None. The lease lasts ``lease_s`` unless renewed."""
        t = now()
        candidate = (
            select(jobs.c.id)
            .where(jobs.c.state.in_(CLAIMABLE), jobs.c.run_after <= t)
            .order_by(jobs.c.run_after, jobs.c.id)
            .limit(1)
            .with_for_update(skip_locked=True)
            .scalar_subquery()
        )
        stmt = (
            update(jobs)
            .where(jobs.c.id == candidate, jobs.c.state.in_(CLAIMABLE))
            .values(
                state="running",
                attempts=jobs.c.attempts + 1,
                lease_until=t + self.settings.lease_s,
                worker=worker,
                started_at=t,
            )
            .returning(
                jobs.c.id,
                jobs.c.series_uid,
                jobs.c.study_uid,
                jobs.c.route,
                jobs.c.pipeline,
                jobs.c.revision,
                jobs.c.attempts,
                jobs.c.max_attempts,
            )
        )
        with self.engine.begin() as conn:
            row = conn.execute(stmt).first()
        if row is None:
            return None
        return Job(**row._mapping)

    def heartbeat(self, job: Job, worker: str) -> None:
        """Renew the lease; raises :class:`LeaseLost` if the job is no longer ours."""
        with self.engine.begin() as conn:
            count = conn.execute(
                update(jobs)
                .where(jobs.c.id == job.id, jobs.c.state == "running", jobs.c.worker == worker)
                .values(lease_until=now() + self.settings.lease_s)
            ).rowcount
        if count != 1:
            raise LeaseLost(f"job {job.id} is no longer held by {worker}")

    def succeed(self, conn: Connection, job: Job, worker: str, *, summary: str, timings: dict[str, float]) -> None:
        """Mark the job done inside the caller's transaction (the one that records its results)."""
        count = conn.execute(
            update(jobs)
            .where(jobs.c.id == job.id, jobs.c.state == "running", jobs.c.worker == worker)
            .values(
                state="succeeded",
                finished_at=now(),
                lease_until=None,
                summary=summary,
                timings=timings,
                last_error=None,
            )
        ).rowcount
        if count != 1:
            raise LeaseLost(f"job {job.id} is no longer held by {worker}")

    def fail(self, job: Job, worker: str, error: str) -> str:
        """Record a failed attempt; returns the new state (``failed`` to retry later, or ``dead``)."""
        t = now()
        if job.attempts >= job.max_attempts:
            values: dict[str, Any] = dict(state="dead", finished_at=t)
        else:
            values = dict(state="failed", run_after=t + self.backoff(job.attempts))
        with self.engine.begin() as conn:
            conn.execute(
                update(jobs)
                .where(jobs.c.id == job.id, jobs.c.state == "running", jobs.c.worker == worker)
                .values(lease_until=None, last_error=error[:4000], **values)
            )
        return str(values["state"])

    def backoff(self, attempts: int) -> float:
        """Seconds to wait after the ``attempts``-th failure: base * 2^(attempts-1), capped."""
        return float(min(self.settings.backoff_base_s * 2 ** max(attempts - 1, 0), self.settings.backoff_max_s))

    # -- housekeeping ------------------------------------------------------------------------------------
    def requeue_expired(self) -> int:
        """Put running jobs whose lease expired back in the queue (dead if it was their last attempt)."""
        t = now()
        expired = and_(jobs.c.state == "running", jobs.c.lease_until < t)
        with self.engine.begin() as conn:
            dead = conn.execute(
                update(jobs)
                .where(expired, jobs.c.attempts >= jobs.c.max_attempts)
                .values(
                    state="dead",
                    finished_at=t,
                    lease_until=None,
                    last_error="lease expired on the last attempt (worker died or hung)",
                )
            ).rowcount
            back = conn.execute(
                update(jobs)
                .where(expired)
                .values(
                    state="failed",
                    run_after=t,
                    lease_until=None,
                    last_error="lease expired (worker died or hung); retried",
                )
            ).rowcount
        if dead or back:
            log.warning("lease expired: %d job(s) re-queued, %d dead", back, dead)
        return int(back + dead)

    # -- admin -------------------------------------------------------------------------------------------
    def retry(self, job_id: int) -> bool:
        """Give a dead, failed or cancelled job a fresh set of attempts."""
        with self.engine.begin() as conn:
            return bool(
                conn.execute(
                    update(jobs)
                    .where(jobs.c.id == job_id, jobs.c.state.in_(("dead", "failed", "cancelled")))
                    .values(state="queued", attempts=0, run_after=now(), finished_at=None)
                ).rowcount
            )

    def rerun(self, job_id: int) -> bool:
        """Run a succeeded job again (e.g. after a new model bundle). Result UIDs are deterministic: an
        unchanged pipeline makes the same objects, which are recognised and not sent twice."""
        with self.engine.begin() as conn:
            return bool(
                conn.execute(
                    update(jobs)
                    .where(jobs.c.id == job_id, jobs.c.state == "succeeded")
                    .values(state="queued", attempts=0, run_after=now(), finished_at=None)
                ).rowcount
            )

    def cancel(self, job_id: int) -> bool:
        """Cancel a job that has not finished (a running one stops at its next heartbeat)."""
        with self.engine.begin() as conn:
            return bool(
                conn.execute(
                    update(jobs)
                    .where(jobs.c.id == job_id, or_(jobs.c.state.in_(ACTIVE)))
                    .values(state="cancelled", finished_at=now(), lease_until=None)
                ).rowcount
            )
