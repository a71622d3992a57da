"""Scale-out: jobs per second with 1, 2 and 4 worker processes on one PostgreSQL database.

For each worker count: a new database ``bench_<random>`` (dropped afterwards), the schema migrated,
N workers started and idle, then M one-instance jobs committed in one transaction. Throughput is
M / (last finished_at - first started_at), from the jobs table, so the workers' idle poll interval
does not count. Routes have no destination: a job is claim, headers, load, run, commit.
"""

from __future__ import annotations

import logging
import shutil
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import func, insert, select

from benchmarks.common import REPO, Group, wait_cpu_quiet, wait_for

log = logging.getLogger(__name__)

PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"
PIPELINES = ("bench_noop", "bench_wait100")


@dataclass
class ScaleRun:
    """One (pipeline, worker count) cell."""

    pipeline: str
    workers: int
    jobs: int
    seconds: float

    @property
    def jobs_per_s(self) -> float:
        return self.jobs / self.seconds


def _config_text(storage: Path, url: str) -> str:
    routes = "".join(
        f"""
[[routes]]
name = "{name}"
pipelines = ["{name}"]
[routes.match]
Modality = "CT"
"""
        for name in PIPELINES
    )
    return f"""
[node]
ae_title = "NODE"
storage = "{storage}"
database = "{url}"
workers = 0
device = "cpu"
{routes}"""


def _create_db() -> tuple[str, str]:
    import psycopg

    name = f"bench_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(PG_ADMIN, autocommit=True, connect_timeout=5) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return name, f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"


def _drop_db(name: str) -> None:
    import psycopg

    with psycopg.connect(PG_ADMIN, autocommit=True, connect_timeout=5) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def run_scale(
    sample: Path, *, worker_counts: tuple[int, ...] = (1, 2, 4), jobs: dict[str, int] | None = None
) -> list[ScaleRun]:
    """All (pipeline, worker count) cells; ``sample`` is one CT file every job's instance points to."""
    import benchmarks.bench_pipelines  # noqa: F401  (the config names its pipelines)

    counts = jobs or {"bench_noop": 200, "bench_wait100": 80}
    out: list[ScaleRun] = []
    for n in worker_counts:
        root = Path(tempfile.mkdtemp(prefix="bench-scale-"))
        db_name = ""
        groups: list[Group] = []
        try:
            db_name, url = _create_db()
            out.extend(_run_cell(root, url, sample, n, counts, groups))
        finally:
            for g in groups:
                g.stop()
            if db_name:
                _drop_db(db_name)
            shutil.rmtree(root, ignore_errors=True)
    return out


def _run_cell(
    root: Path, url: str, sample: Path, n: int, counts: dict[str, int], groups: list[Group]
) -> list[ScaleRun]:
    from dicom_node.db import connect, instances, jobs
    from dicom_node.intake.routing_check import load_checked_config
    from dicom_node.queue import JobQueue

    storage = root / "storage"
    (storage / "instances").mkdir(parents=True)
    shutil.copy(sample, storage / "instances" / "sample.dcm")
    config_path = root / "node.toml"
    config_path.write_text(_config_text(storage, url))
    config = load_checked_config(config_path)
    engine = connect(url)  # migrates the schema before any worker starts
    try:
        for i in range(n):
            groups.append(
                Group(
                    [sys.executable, "-m", "benchmarks.scale_worker", str(config_path), f"bench-w{i}"],
                    root / f"worker-{i}.log",
                    cwd=REPO,
                ).start()
            )
        for g in groups:
            wait_cpu_quiet(g.pid, timeout=60)
            if not g.alive():
                raise RuntimeError(f"scale worker exited:\n{g.log_tail()}")
        queue = JobQueue(engine, config.queue)
        results = []
        for pipeline in PIPELINES:
            m = counts[pipeline]
            with engine.begin() as conn:
                t = time.time()
                for _j in range(m):
                    series_uid = f"2.25.{uuid.uuid4().int}"
                    study_uid = f"2.25.{uuid.uuid4().int}"
                    conn.execute(
                        insert(instances).values(
                            sop_uid=f"2.25.{uuid.uuid4().int}",
                            series_uid=series_uid,
                            study_uid=study_uid,
                            sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
                            transfer_syntax="1.2.840.10008.1.2.1",
                            path="instances/sample.dcm",
                            size=sample.stat().st_size,
                            received_at=t,
                            revision=1,
                        )
                    )
                    queue.enqueue(
                        conn,
                        series_uid=series_uid,
                        study_uid=study_uid,
                        route=pipeline,
                        pipeline=pipeline,
                        revision=1,
                    )

            def done(pipeline: str = pipeline, m: int = m) -> bool:
                with engine.connect() as conn:
                    states: dict[str, int] = dict(
                        conn.execute(
                            select(jobs.c.state, func.count()).where(jobs.c.pipeline == pipeline).group_by(jobs.c.state)
                        ).all()
                    )
                if states.get("dead") or states.get("failed"):
                    raise RuntimeError(f"{pipeline}: jobs failed ({states}):\n{groups[0].log_tail()}")
                return int(states.get("succeeded", 0)) == m

            wait_for(done, 300, f"{m} {pipeline} jobs on {n} worker(s)", interval=0.2)
            with engine.connect() as conn:
                first, last = conn.execute(
                    select(func.min(jobs.c.started_at), func.max(jobs.c.finished_at)).where(jobs.c.pipeline == pipeline)
                ).one()
            run = ScaleRun(pipeline, n, m, float(last - first))
            log.info(
                "scale %s x%d workers: %d jobs in %.2f s, %.1f jobs/s", pipeline, n, m, run.seconds, run.jobs_per_s
            )
            results.append(run)
        return results
    finally:
        engine.dispose()
