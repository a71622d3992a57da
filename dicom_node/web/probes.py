"""The unauthenticated probes: readiness reasons and the Prometheus metrics read from the tables.

- ``GET /healthz``: 200 while the process runs: version, uptime, whether the DICOM receiver listens.
- ``GET /readyz``: 200 only when the receiver listens, the database answers, every worker has loaded its
  models, every routed pipeline loaded at warm-up and the storage disk is above ``min_free_disk_mb``; 503
  with the reasons otherwise.
- ``GET /metrics``: Prometheus text. The counts come from the database at scrape time, so they cover every
  receiver and worker process: instances received, associations by outcome (incl. each rejection reason),
  jobs by state, job stage durations, deliveries by destination and state, and the storage disk's free bytes.

No patient data is served here; the endpoints need no login (probes and scrapers run without one).
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import func, select, text
from sqlalchemy.engine import Engine

from dicom_node.config import NodeConfig
from dicom_node.db import deliveries, events, instances, jobs

log = logging.getLogger(__name__)

DURATION_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
JOB_STAGES = ("load_s", "inference_s", "encode_s", "store_s")


class NodeFacts:
    """What the web face asks the running node: is the receiver listening, which workers are not ready,
    how the running config compares with the file (``config_state``), how to reload it (``reload``) and
    which routed pipelines did not load (``pipeline_problems``)."""

    def __init__(
        self,
        listening: Callable[[], bool],
        unready_workers: Callable[[], list[str]],
        config_state: Callable[[], dict[str, Any]] | None = None,
        reload: Callable[[str], tuple[bool, str]] | None = None,
        pipeline_problems: Callable[[], list[str]] | None = None,
    ) -> None:
        self.listening = listening
        self.pipeline_problems = pipeline_problems or list
        self.unready_workers = unready_workers
        self.config_state = config_state or (lambda: {})
        self.reload = reload
        self.started = time.time()


def readiness_problems(config: NodeConfig, engine: Engine, facts: NodeFacts) -> list[str]:
    """Why the node is not ready to take studies (an empty list: ready)."""
    problems: list[str] = []
    if not facts.listening():
        problems.append("the DICOM receiver is not listening")
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    except Exception as exc:  # any driver error means "not ready"; the reason is what the probe shows
        problems.append(f"the database does not answer: {type(exc).__name__}")
    problems += [f"worker {name} has not loaded its models yet" for name in facts.unready_workers()]
    problems += [
        f"{problem} (it did not load at warm-up: its jobs would fail)" for problem in facts.pipeline_problems()
    ]
    free_mb = shutil.disk_usage(config.node.storage).free / 1e6
    if free_mb < config.node.min_free_disk_mb:
        problems.append(
            f"storage disk has {free_mb:.0f} MB free, under min_free_disk_mb {config.node.min_free_disk_mb}"
        )
    return problems


class DatabaseCollector(Collector):
    """Prometheus metrics read from the node's tables at scrape time."""

    def __init__(self, config: NodeConfig, engine: Engine) -> None:
        self.config = config
        self.engine = engine

    def collect(self) -> Iterator[Any]:
        with self.engine.connect() as conn:
            received = conn.execute(select(func.count()).select_from(instances)).scalar_one()
            job_rows = conn.execute(select(jobs.c.state, func.count()).group_by(jobs.c.state)).all()
            delivery_rows = conn.execute(
                select(deliveries.c.destination, deliveries.c.state, func.count()).group_by(
                    deliveries.c.destination, deliveries.c.state
                )
            ).all()
            timings = conn.execute(select(jobs.c.pipeline, jobs.c.timings).where(jobs.c.state == "succeeded")).all()
            association_rows = conn.execute(
                select(events.c.kind, events.c.message, func.count())
                .where(events.c.kind.in_(("association", "association_rejected")))
                .group_by(events.c.kind, events.c.message)
            ).all()
        yield CounterMetricFamily("dicom_node_instances_received", "Instances received and kept", value=float(received))
        gauge = GaugeMetricFamily("dicom_node_jobs", "Jobs by state", labels=["state"])
        for state, count in job_rows:
            gauge.add_metric([str(state)], float(count))
        yield gauge
        gauge = GaugeMetricFamily(
            "dicom_node_deliveries", "Deliveries by destination and state", labels=["destination", "state"]
        )
        for destination, state, count in delivery_rows:
            gauge.add_metric([str(destination), str(state)], float(count))
        yield gauge
        yield _durations(timings)
        yield _associations(association_rows)
        free = shutil.disk_usage(self.config.node.storage).free
        yield GaugeMetricFamily("dicom_node_storage_free_bytes", "Free bytes on the storage disk", value=float(free))


REJECTION_REASONS = (  # the association policy's refusal messages, as metric labels
    ("is not this node", "rejected: called AE"),
    ("is not in the peers list", "rejected: unknown calling AE"),
    ("is not allowed from address", "rejected: calling AE from a wrong host"),
    ("certificate", "rejected: calling AE without its TLS certificate"),
    ("associations open", "rejected: busy"),
)


def _associations(rows: Sequence[Any]) -> CounterMetricFamily:
    """Associations by outcome (released, aborted, ... and each rejection reason), from the events table."""
    counts: dict[str, float] = {}
    for kind, message, count in rows:
        if kind == "association":
            outcome = str(message)
        else:
            outcome = next((label for text, label in REJECTION_REASONS if text in str(message)), "rejected: other")
        counts[outcome] = counts.get(outcome, 0.0) + float(count)
    family = CounterMetricFamily("dicom_node_associations", "Associations by how they ended", labels=["outcome"])
    for outcome, count in sorted(counts.items()):
        family.add_metric([outcome], count)
    return family


def _durations(rows: Sequence[Any]) -> HistogramMetricFamily:
    """Histogram of the succeeded jobs' stage timings, by pipeline and stage."""
    hist = HistogramMetricFamily(
        "dicom_node_job_duration_seconds", "Job stage durations of succeeded jobs", labels=["pipeline", "stage"]
    )
    values: dict[tuple[str, str], list[float]] = {}
    for pipeline, timing in rows:
        for stage in JOB_STAGES:
            if isinstance(timing, dict) and isinstance(timing.get(stage), int | float):
                values.setdefault((str(pipeline), stage.removesuffix("_s")), []).append(float(timing[stage]))
    for labels, seconds in sorted(values.items()):
        buckets = [(str(le), float(sum(s <= le for s in seconds))) for le in DURATION_BUCKETS]
        buckets.append(("+Inf", float(len(seconds))))
        hist.add_metric(list(labels), buckets, sum_value=float(sum(seconds)))
    return hist
