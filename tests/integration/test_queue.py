"""The job queue on SQLite and PostgreSQL: exclusive claims, leases, backoff, dead letters, admin actions."""

from __future__ import annotations

import threading
from collections import Counter

import pytest
from sqlalchemy import select, update

from dicom_node.config import QueueSection
from dicom_node.db import connect, jobs, now
from dicom_node.queue import JobQueue, LeaseLost

SETTINGS = QueueSection(max_attempts=3, lease_s=30, backoff_base_s=10, backoff_max_s=25)


def _fill(queue: JobQueue, n: int) -> None:
    with queue.engine.begin() as conn:
        for i in range(n):
            assert (
                queue.enqueue(conn, series_uid=f"1.2.{i}", study_uid="1.2", route="r", pipeline="p", revision=1)
                is not None
            )
        # the same work twice is one job
        assert queue.enqueue(conn, series_uid="1.2.0", study_uid="1.2", route="r", pipeline="p", revision=1) is None


def test_concurrent_workers_never_get_the_same_job(db_url: str) -> None:
    engine = connect(db_url)
    queue = JobQueue(engine, SETTINGS)
    _fill(queue, 60)
    claimed: list[int] = []
    lock = threading.Lock()

    def work(name: str) -> None:
        own = JobQueue(connect(db_url, migrate=False), SETTINGS)
        while (job := own.claim(name)) is not None:
            with lock:
                claimed.append(job.id)
            with own.engine.begin() as conn:
                own.succeed(conn, job, name, summary="ok", timings={})

    threads = [threading.Thread(target=work, args=(f"w{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(claimed) == sorted(set(claimed)) and len(claimed) == 60
    with engine.connect() as conn:
        states = Counter(r.state for r in conn.execute(select(jobs.c.state)))
    assert states == {"succeeded": 60}


def test_failures_back_off_then_die_with_the_last_error(db_url: str) -> None:
    queue = JobQueue(connect(db_url), SETTINGS)
    _fill(queue, 1)
    job = queue.claim("w")
    assert job is not None and job.attempts == 1
    assert queue.fail(job, "w", "boom 1") == "failed"
    assert queue.claim("w") is None  # waiting for its backoff
    with queue.engine.connect() as conn:
        row = conn.execute(select(jobs)).one()
    assert 9 < row.run_after - now() <= 10 and row.last_error == "boom 1"
    delays = []
    for attempt in (2, 3):
        with queue.engine.begin() as conn:
            conn.execute(update(jobs).values(run_after=now() - 1))
        job = queue.claim("w")
        assert job is not None and job.attempts == attempt
        state = queue.fail(job, "w", f"boom {attempt}")
        with queue.engine.connect() as conn:
            row = conn.execute(select(jobs)).one()
        delays.append(row.run_after - now())
    assert state == "dead"
    assert row.state == "dead" and row.last_error == "boom 3"
    assert queue.backoff(1) == 10 and queue.backoff(2) == 20 and queue.backoff(3) == 25  # capped
    assert queue.retry(row.id)
    job = queue.claim("w")
    assert job is not None and job.attempts == 1


def test_expired_lease_goes_back_and_the_old_holder_loses_it(db_url: str) -> None:
    queue = JobQueue(connect(db_url), SETTINGS)
    _fill(queue, 1)
    job = queue.claim("old")
    assert job is not None
    with queue.engine.begin() as conn:
        conn.execute(update(jobs).values(lease_until=now() - 1))
    assert queue.requeue_expired() == 1
    again = queue.claim("new")
    assert again is not None and again.id == job.id and again.attempts == 2
    with pytest.raises(LeaseLost):
        queue.heartbeat(job, "old")
    queue.heartbeat(again, "new")
    with queue.engine.begin() as conn, pytest.raises(LeaseLost):
        queue.succeed(conn, job, "old", summary="late", timings={})


def test_lease_expiring_on_the_last_attempt_is_dead(db_url: str) -> None:
    queue = JobQueue(connect(db_url), QueueSection(max_attempts=1, lease_s=30))
    _fill(queue, 1)
    assert queue.claim("w") is not None
    with queue.engine.begin() as conn:
        conn.execute(update(jobs).values(lease_until=now() - 1))
    queue.requeue_expired()
    with queue.engine.connect() as conn:
        row = conn.execute(select(jobs)).one()
    assert row.state == "dead" and "lease expired" in row.last_error


def test_cancel(db_url: str) -> None:
    queue = JobQueue(connect(db_url), SETTINGS)
    _fill(queue, 2)
    with queue.engine.connect() as conn:
        first = conn.execute(select(jobs.c.id).order_by(jobs.c.id)).first()
    assert first is not None and queue.cancel(first.id)
    assert not queue.cancel(first.id)
    job = queue.claim("w")
    assert job is not None and job.id != first.id
