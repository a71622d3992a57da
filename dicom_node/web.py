"""The node's HTTP face for probes and monitoring, served inside ``dicom-node serve`` (``[web]``).

- ``GET /healthz``: 200 while the process runs: version, uptime, whether the DICOM receiver listens.
- ``GET /readyz``: 200 only when the receiver listens, the database answers, every worker has loaded its
  models and the storage disk is above ``min_free_disk_mb``; 503 with the reasons otherwise.
- ``GET /metrics``: Prometheus text. The counts come from the database at scrape time, so they cover every
  receiver and worker process: instances received, jobs by state, job stage durations, deliveries by
  destination and state, and the storage disk's free bytes.

No patient data is served here; the endpoints need no login (probes and scrapers run without one).
uvicorn runs in a thread of the main process with its own event loop: the receiver never waits on it.
"""

from __future__ import annotations

import logging
import shutil
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import func, select, text
from sqlalchemy.engine import Engine
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from dicom_node import __version__
from dicom_node.config import NodeConfig
from dicom_node.db import deliveries, instances, jobs

log = logging.getLogger(__name__)

DURATION_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
JOB_STAGES = ("load_s", "inference_s", "encode_s", "store_s")


class NodeFacts:
    """What the web face asks the running node: is the receiver listening, which workers are not ready."""

    def __init__(self, listening: Callable[[], bool], unready_workers: Callable[[], list[str]]) -> None:
        self.listening = listening
        self.unready_workers = unready_workers
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
        free = shutil.disk_usage(self.config.node.storage).free
        yield GaugeMetricFamily("dicom_node_storage_free_bytes", "Free bytes on the storage disk", value=float(free))


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


def build_app(config: NodeConfig, engine: Engine, facts: NodeFacts) -> Starlette:
    """The Starlette application behind ``[web]``."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(DatabaseCollector(config, engine))

    def healthz(_: Request) -> JSONResponse:
        return JSONResponse(
            {
                "status": "alive",
                "version": __version__,
                "ae_title": config.node.ae_title,
                "uptime_s": round(time.time() - facts.started, 1),
                "receiver_listening": facts.listening(),
            }
        )

    def readyz(_: Request) -> JSONResponse:
        problems = readiness_problems(config, engine, facts)
        body = {"ready": not problems, "problems": problems, "version": __version__}
        return JSONResponse(body, status_code=200 if not problems else 503)

    def metrics(_: Request) -> Response:
        return Response(generate_latest(registry), media_type="text/plain; version=0.0.4; charset=utf-8")

    routes = [Route("/healthz", healthz), Route("/readyz", readyz), Route("/metrics", metrics)]
    return Starlette(routes=routes)


class WebServer:
    """uvicorn serving :func:`build_app` in a daemon thread of the main process."""

    def __init__(self, config: NodeConfig, engine: Engine, facts: NodeFacts) -> None:
        import uvicorn

        web = config.web
        app = build_app(config, engine, facts)
        self.server = uvicorn.Server(uvicorn.Config(app, host=web.host, port=web.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, name="web", daemon=True)

    def start(self, timeout: float = 30.0) -> None:
        """Start serving; returns once the socket listens."""
        self.thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started and self.thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.05)
        if not self.server.started:
            raise OSError(f"the web service did not start on {self.server.config.host}:{self.server.config.port}")
        log.info("web service on http://%s:%d (healthz, readyz, metrics)", self.server.config.host, self.port)

    @property
    def port(self) -> int:
        """The bound port (useful with ``port = 0``)."""
        servers = getattr(self.server, "servers", [])
        if servers and servers[0].sockets:
            return int(servers[0].sockets[0].getsockname()[1])
        return int(self.server.config.port)

    def stop(self) -> None:
        """Stop serving and wait for the thread."""
        self.server.should_exit = True
        self.thread.join(timeout=10)
