"""End to end: from the last instance sent to the results stored in Orthanc, with the node's own stage times.

The node runs as an admin runs it (``dicom-node serve``, SQLite, a 5 s quiet period, one worker) with one
CT route to an Orthanc destination. dcmtk ``storescu`` sends the study; the clock starts when it exits
(the last C-STORE answered) and stops when Orthanc holds every object the job delivers: the SR, and the
SEG when the pipeline found something. The stage breakdown
comes from the node's tables: instances.received_at, series.routed_at, jobs (created/started/finished
and the worker's ``timings``) and deliveries.sent_at.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, func, select

from benchmarks.common import free_port, wait_cpu_quiet, wait_for
from benchmarks.ingest import push
from benchmarks.nodecfg import node_config, start_node

log = logging.getLogger(__name__)

STAGES = (
    ("quiet", "quiet period + sweep (last instance -> routed)"),
    ("queue", "queue wait (routed -> job started)"),
    ("load", "load volume"),
    ("inference", "inference"),
    ("encode", "encode SEG + SR"),
    ("store", "store results (fsync)"),
    ("worker_other", "worker other (headers, commit)"),
    ("delivery", "delivery (job done -> last C-STORE to Orthanc)"),
)


@dataclass
class E2ERun:
    """One end-to-end run."""

    study: str
    slices: int
    pipeline: str
    index: int
    total_s: float  # storescu exit -> every result object seen in Orthanc (polled every 0.1 s)
    node_total_s: float  # last instance received -> last delivery sent, from the node's records
    send_s: float
    stages: dict[str, float] = field(default_factory=dict)
    summary: str = ""
    objects: list[str] = field(default_factory=list)


def run_e2e(
    files: list[Path],
    study: str,
    *,
    pipeline: str,
    index: int = 0,
    quiet_period_s: float = 5.0,
    timeout_s: float = 600.0,
    node_options: dict[str, str] | None = None,
) -> E2ERun:
    """Send ``files`` to a fresh node that routes them through ``pipeline`` to a fresh Orthanc."""
    from tests.peers.orthanc import OrthancPeer

    root = Path(tempfile.mkdtemp(prefix="bench-e2e-"))
    pacs: OrthancPeer | None = None
    node = None
    try:
        pacs = OrthancPeer(aet="ORTHANC")
        port = free_port()
        storage = root / "storage"
        text = node_config(
            storage,
            port=port,
            workers=1,
            quiet_period_s=quiet_period_s,
            pipelines=[pipeline],
            dest_port=pacs.dicom_port,
            extra=node_options,
        )
        node = start_node(root, text, port)
        wait_cpu_quiet(node.pid)
        db_url = f"sqlite:///{storage / 'node.db'}"
        t_start = time.time()
        push(files, "NODE", port, 1, root)
        t_sent = time.time()
        engine = create_engine(db_url)
        try:
            modalities = wait_for(
                lambda: _results_in(pacs, engine, node.log_tail),
                timeout_s,
                f"the results of {study} in Orthanc",
            )
            t_seen = time.time()
            # Orthanc can hold the objects a moment before the node has recorded them as sent.
            wait_for(lambda: _all_sent(engine), 60, "the node to record its deliveries as sent")
            records = _records(engine)
        finally:
            engine.dispose()
        run = _breakdown(records, study, len(files), pipeline, index, t_sent - t_start, t_seen - t_sent)
        run.objects = sorted(modalities)
        log.info(
            "e2e %s (%d slices) run %d: %.2f s (node records %.2f s) %s",
            study,
            len(files),
            index,
            run.total_s,
            run.node_total_s,
            {k: round(v, 2) for k, v in run.stages.items()},
        )
        return run
    finally:
        if node is not None:
            node.stop()
        if pacs is not None:
            pacs.terminate()
        shutil.rmtree(root, ignore_errors=True)


def _results_in(pacs: Any, engine: Any, node_log: Any) -> list[str] | None:
    """The modalities in Orthanc once it holds every object of the finished job (the SR, and the SEG
    when the pipeline found something); None before."""
    from dicom_node.db import deliveries, jobs

    with engine.connect() as conn:
        states = list(conn.execute(select(jobs.c.state)).scalars())
        dead = conn.execute(select(jobs.c.last_error).where(jobs.c.state.in_(("dead", "failed")))).first()
        expected = int(conn.execute(select(func.count()).select_from(deliveries)).scalar_one())
    if dead is not None:
        raise RuntimeError(f"the node's job failed: {dead.last_error}\n{node_log()}")
    if states and all(s == "succeeded" for s in states) and expected:
        if int(pacs.get("/statistics")["CountInstances"]) >= expected:
            return [str(pacs.get(f"/series/{s}")["MainDicomTags"].get("Modality", "")) for s in pacs.get("/series")]
    return None


def _all_sent(engine: Any) -> bool:
    from dicom_node.db import deliveries

    with engine.connect() as conn:
        states = [r.state for r in conn.execute(select(deliveries.c.state))]
    return bool(states) and all(s == "sent" for s in states)


def _records(engine: Any) -> dict[str, Any]:
    from dicom_node.db import deliveries, instances, jobs, series

    with engine.connect() as conn:
        received = conn.execute(select(func.min(instances.c.received_at), func.max(instances.c.received_at))).one()
        s = conn.execute(select(series.c.last_seen, series.c.routed_at)).one()
        job = conn.execute(
            select(jobs.c.created_at, jobs.c.started_at, jobs.c.finished_at, jobs.c.timings, jobs.c.summary)
            .where(jobs.c.state == "succeeded")
            .order_by(jobs.c.id)
        ).first()
        sent = conn.execute(
            select(func.min(deliveries.c.created_at), func.max(deliveries.c.sent_at)).where(
                deliveries.c.state == "sent"
            )
        ).one()
    if job is None:
        raise RuntimeError("no succeeded job in the node's records")
    return {
        "first_received": received[0],
        "last_received": received[1],
        "last_seen": s.last_seen,
        "routed_at": s.routed_at,
        "job": job,
        "deliveries_created": sent[0],
        "last_sent": sent[1],
    }


def _breakdown(
    r: dict[str, Any], study: str, slices: int, pipeline: str, index: int, send_s: float, total_s: float
) -> E2ERun:
    job = r["job"]
    timings = dict(job.timings or {})
    worked = job.finished_at - job.started_at
    parts = {k: float(timings.get(f"{k}_s", 0.0)) for k in ("load", "inference", "encode", "store")}
    stages = {
        "quiet": r["routed_at"] - r["last_received"],
        "queue": job.started_at - r["routed_at"],
        **parts,
        "worker_other": worked - sum(parts.values()),
        "delivery": r["last_sent"] - job.finished_at,
    }
    return E2ERun(
        study=study,
        slices=slices,
        pipeline=pipeline,
        index=index,
        total_s=total_s,
        node_total_s=r["last_sent"] - r["last_received"],
        send_s=send_s,
        stages=stages,
        summary=str(job.summary or ""),
    )
