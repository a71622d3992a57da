"""The worker process: claim a job, run its pipeline, encode results, queue deliveries.

Workers never run inside the receiving process. Each holds its job's lease with a heartbeat thread;
results are written durably, then recorded together with the job's success and its deliveries in
one transaction, so a crash at any point leaves either nothing or everything. Result UIDs are
deterministic, so a job re-run after a crash produces the very same objects.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import traceback
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from sqlalchemy import Engine, insert, select

from dicom_node.config import NodeConfig
from dicom_node.db import deliveries, instances, now, results, series
from dicom_node.db.engine import record_event
from dicom_node.device import pick_device
from dicom_node.findings import Findings
from dicom_node.pipelines import Pipeline, create
from dicom_node.queue import Job, JobQueue, LeaseLost
from dicom_node.store import Store, write_atomic

log = logging.getLogger(__name__)


@dataclass
class Outcome:
    """What one job produced."""

    findings: Findings | None
    objects: list[tuple[str, Dataset]]
    timings: dict[str, float]
    summary: str


def pipeline_options(config: NodeConfig, name: str, options: dict[str, Any]) -> dict[str, Any]:
    """A route's options for pipeline ``name``, with ``[node] models/<name>`` as its ``bundle`` when the route
    names none and that folder exists (a site's own bundle of that name)."""
    site = config.node.models
    if site is not None and "bundle" not in options and (Path(site) / name).is_dir():
        return {**options, "bundle": str(Path(site) / name)}
    return options


def load_routed_pipelines(config: NodeConfig, device: str = "cpu") -> list[tuple[str, str, str | None, float]]:
    """Make every routed pipeline and let it load its model, as a worker's warm-up does (``check-config``).

    Returns ``(route, pipeline, error or None, seconds)`` per pipeline of each route.
    """
    out: list[tuple[str, str, str | None, float]] = []
    for route in config.routes:
        for name in route.pipelines:
            t = time.perf_counter()
            try:
                pipeline = create(name, **pipeline_options(config, name, route.options.get(name, {})))
                warm = getattr(pipeline, "warm_up", None)
                if callable(warm):
                    warm(device)
                error = None
            except Exception as exc:  # reported per pipeline, with the reason
                error = f"{type(exc).__name__}: {exc}"
            out.append((route.name, name, error, time.perf_counter() - t))
    return out


class Worker:
    """Runs jobs from the queue until stopped."""

    def __init__(self, config: NodeConfig, engine: Engine, store: Store, name: str | None = None) -> None:
        self.config = config
        self.engine = engine
        self.store = store
        self.queue = JobQueue(engine, config.queue)
        self.name = name or f"{socket.gethostname()}:{os.getpid()}"
        self.device = pick_device(config.node.device)
        self.stop = threading.Event()
        self._pipelines: dict[tuple[str, str], Pipeline] = {}
        self.unavailable: list[str] = []  # routed pipelines that failed to load at warm-up, with the reason

    def pipeline(self, name: str, options: dict[str, Any]) -> Pipeline:
        """The worker's instance of pipeline ``name`` with a route's ``options``: made once and kept, so its
        model stays loaded between jobs (a changed bundle on disk is read when the worker restarts). Without a
        ``bundle`` option, ``[node] models/<name>`` is used when that folder exists, else the shipped bundle."""
        options = pipeline_options(self.config, name, options)
        key = (name, json.dumps(options, sort_keys=True, default=str))
        if key not in self._pipelines:
            self._pipelines[key] = create(name, **options)
        return self._pipelines[key]

    def warm_up(self) -> None:
        """Encode a tiny synthetic finding as every configured output kind, and make every routed
        pipeline and let it load its model on the worker's device (a pipeline's optional
        ``warm_up(device)``), so the first study after a start is as fast as the next. What fails here
        is logged; the jobs then fail with the reason as usual."""
        from dicom_node.outputs.warmup import warm_up_encoders

        kinds = sorted(
            {k for d in self.config.destinations for k in d.outputs}
            | {k for r in self.config.routes for k in r.outputs or []}
        )
        if kinds:
            t = time.perf_counter()
            try:
                warm_up_encoders(kinds)
                log.info("encoders (%s) ready in %.1f s", ", ".join(kinds), time.perf_counter() - t)
            except Exception as exc:  # the first real encode will tell what is wrong
                log.warning("encoders did not warm up: %s: %s", type(exc).__name__, exc)
        for route in self.config.routes:
            for name in route.pipelines:
                if self.stop.is_set():
                    return
                t = time.perf_counter()
                try:
                    pipeline = self.pipeline(name, route.options.get(name, {}))
                    warm = getattr(pipeline, "warm_up", None)
                    if callable(warm):
                        warm(self.device)
                except Exception as exc:  # a broken model must not keep the worker down
                    log.warning(
                        "pipeline %s of route %s did not warm up: %s: %s", name, route.name, type(exc).__name__, exc
                    )
                    self.unavailable.append(f"pipeline {name} of route {route.name}: {type(exc).__name__}: {exc}")
                    continue
                log.info(
                    "pipeline %s (route %s) ready on %s in %.1f s",
                    name,
                    route.name,
                    self.device,
                    time.perf_counter() - t,
                )

    def run_forever(self, ready: Any = None, problems: Any = None) -> None:
        """Warm up, put each pipeline that did not load on ``problems`` (a multiprocessing Queue, if given),
        set ``ready`` (an Event, if given), then claim and run jobs until :attr:`stop` is set."""
        log.info("worker %s started on %s", self.name, self.device)
        self.warm_up()
        if problems is not None:
            for problem in self.unavailable:
                problems.put(problem)
        if ready is not None:
            ready.set()
        last_housekeeping = 0.0
        while not self.stop.is_set():
            if time.monotonic() - last_housekeeping > 5:
                self.queue.requeue_expired()
                last_housekeeping = time.monotonic()
            if not self.run_one():
                self.stop.wait(self.config.queue.poll_s)

    def run_one(self) -> bool:
        """Claim and run one job; False if there was none."""
        job = self.queue.claim(self.name)
        if job is None:
            return False
        log.info(
            "job %d (%s/%s rev %d) attempt %d/%d",
            job.id,
            job.route,
            job.pipeline,
            job.revision,
            job.attempts,
            job.max_attempts,
        )
        beat_stop = threading.Event()
        lost = threading.Event()
        beat = threading.Thread(target=self._heartbeat, args=(job, beat_stop, lost), daemon=True)
        beat.start()
        try:
            outcome = self.process(job)
            if lost.is_set():
                raise LeaseLost(f"job {job.id} lease lost while running")
            self._commit(job, outcome)
            log.info("job %d succeeded: %s", job.id, outcome.summary)
        except LeaseLost as exc:
            log.warning("%s; dropping the job", exc)
        except Exception as exc:  # a failing pipeline must not kill the worker
            detail = f"{type(exc).__name__}: {exc}"
            log.error("job %d failed: %s", job.id, detail)
            log.debug("%s", traceback.format_exc())
            state = self.queue.fail(job, self.name, detail)
            if state == "dead":
                with self.engine.begin() as conn:
                    record_event(
                        conn,
                        "job_dead",
                        f"job {job.id} dead after {job.attempts} attempt(s): {detail}",
                        level="ERROR",
                        job_id=job.id,
                    )
        finally:
            beat_stop.set()
            beat.join()
        return True

    def _heartbeat(self, job: Job, stop: threading.Event, lost: threading.Event) -> None:
        while not stop.wait(self.config.queue.heartbeat_s):
            try:
                self.queue.heartbeat(job, self.name)
            except LeaseLost:
                lost.set()
                return
            except Exception:  # a transient database hiccup; the lease has slack for it
                log.warning("heartbeat for job %d failed", job.id, exc_info=True)

    def instance_paths(self, job: Job) -> list[Path]:
        """The stored files of the job's series, up to its revision."""
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(instances.c.path)
                .where(instances.c.series_uid == job.series_uid, instances.c.revision <= job.revision)
                .order_by(instances.c.id)
            ).all()
        return [self.store.absolute(r.path) for r in rows]

    def companion_paths(self, job: Job, modalities: Sequence[str]) -> list[Path]:
        """The stored files of the other series of the job's study whose modality is one of ``modalities``
        (a pipeline's ``companions``), series by series."""
        wanted = [m.upper() for m in modalities]
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(instances.c.path)
                .join(series, series.c.series_uid == instances.c.series_uid)
                .where(
                    instances.c.study_uid == job.study_uid,
                    instances.c.series_uid != job.series_uid,
                    series.c.modality.in_(wanted),
                )
                .order_by(instances.c.series_uid, instances.c.id)
            ).all()
        return [self.store.absolute(r.path) for r in rows]

    def output_kinds(self, job: Job) -> dict[str, list[str]]:
        """For each destination of the job's route, the object kinds it gets."""
        route = self.config.route(job.route)
        return {
            name: list(route.outputs if route.outputs is not None else self.config.destination(name).outputs)
            for name in route.destinations
        }

    def process(self, job: Job) -> Outcome:
        """Run the job's pipeline and encode its results (nothing is recorded yet)."""
        timings: dict[str, float] = {}
        route = self.config.route(job.route)
        pipeline = self.pipeline(job.pipeline, route.options.get(job.pipeline, {}))
        paths = self.instance_paths(job)
        if not paths:
            raise RuntimeError("the series has no stored instances")
        companions = tuple(getattr(pipeline, "companions", ()))
        if companions:  # e.g. the CT of a PET/CT study: the pipeline pairs them (its route waits for the study)
            paths += self.companion_paths(job, companions)
        headers = read_headers(paths)
        reason = pipeline.applies_to(headers)
        if reason is not None:
            return Outcome(None, [], timings, f"not applicable: {reason}")
        t = time.perf_counter()
        volume = pipeline.load([str(p) for p in paths])
        timings["load_s"] = time.perf_counter() - t
        t = time.perf_counter()
        findings = pipeline.run(volume, self.device)
        timings["inference_s"] = time.perf_counter() - t
        kinds = sorted({k for ks in self.output_kinds(job).values() for k in ks})
        objects: list[tuple[str, Dataset]] = []
        if kinds:
            from dicom_node.outputs import encode, kind_of

            t = time.perf_counter()
            datasets = encode(findings, volume, kinds)
            timings["encode_s"] = time.perf_counter() - t
            objects = [(kind_of(ds), ds) for ds in datasets]
        return Outcome(findings, objects, timings, findings.summary())

    def _commit(self, job: Job, outcome: Outcome) -> None:
        t = time.perf_counter()
        written: list[tuple[str, Dataset, Path]] = []
        for kind, ds in outcome.objects:
            path = self.store.result_path(job.id, str(ds.SOPInstanceUID))
            write_atomic(path, [encode_file(ds)])
            written.append((kind, ds, path))
        outcome.timings["store_s"] = time.perf_counter() - t
        wanted = self.output_kinds(job)
        retry_for = {name: self.config.destination(name).retry_for_hours * 3600 for name in wanted}
        with self.engine.begin() as conn:
            for kind, ds, path in written:
                existing = conn.execute(select(results.c.id).where(results.c.sop_uid == str(ds.SOPInstanceUID))).first()
                if existing is not None:
                    result_id = int(existing.id)  # same deterministic UID: the same object, already known
                else:
                    result_id = int(
                        conn.execute(
                            insert(results)
                            .values(
                                job_id=job.id,
                                kind=kind,
                                sop_uid=str(ds.SOPInstanceUID),
                                sop_class_uid=str(ds.SOPClassUID),
                                path=self.store.relative(path),
                                created_at=now(),
                            )
                            .returning(results.c.id)
                        ).scalar_one()
                    )
                for dest, kinds in wanted.items():
                    if kind not in kinds:
                        continue
                    known = conn.execute(
                        select(deliveries.c.id).where(
                            deliveries.c.result_id == result_id, deliveries.c.destination == dest
                        )
                    ).first()
                    if known is None:
                        t0 = now()
                        conn.execute(
                            insert(deliveries).values(
                                result_id=result_id,
                                destination=dest,
                                state="pending",
                                attempts=0,
                                next_try=t0,
                                give_up_at=t0 + retry_for[dest],
                                created_at=t0,
                            )
                        )
            self.queue.succeed(conn, job, self.name, summary=outcome.summary, timings=outcome.timings)


def read_headers(paths: Sequence[Path]) -> list[Dataset]:
    """Headers (no pixel data) of the given files, in the given order."""
    return [dcmread(p, stop_before_pixels=True) for p in paths]


def encode_file(ds: Dataset) -> bytes:
    """A dataset as Part 10 bytes (preamble, file meta, data set)."""
    buffer = DicomBytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()
