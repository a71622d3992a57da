"""Read-outs and actions for operators: status counts, job listing, retry and cancel."""

from __future__ import annotations

import time
from typing import Any

from sqlalchemy import func, select

from dicom_node.config import NodeConfig
from dicom_node.db import connect, deliveries, events, ingest_pending, instances, jobs, results, series, studies
from dicom_node.queue import JobQueue


def status_report(config: NodeConfig) -> dict[str, Any]:
    """Counts and the problems an admin must see: dead jobs, dead deliveries, unrouted series."""
    engine = connect(config.node.database_url())
    with engine.connect() as conn:

        def counts(column: Any) -> dict[str, int]:
            return {str(k): int(v) for k, v in conn.execute(select(column, func.count()).group_by(column))}

        report: dict[str, Any] = {
            "studies": conn.execute(select(func.count()).select_from(studies)).scalar_one(),
            "series": counts(series.c.state),
            "instances": conn.execute(select(func.count()).select_from(instances)).scalar_one(),
            "duplicates": conn.execute(select(func.coalesce(func.sum(instances.c.duplicates), 0))).scalar_one(),
            "jobs": counts(jobs.c.state),
            "results": conn.execute(select(func.count()).select_from(results)).scalar_one(),
            "deliveries": counts(deliveries.c.state),
        }
        report["dead_jobs"] = [
            dict(id=r.id, route=r.route, pipeline=r.pipeline, attempts=r.attempts, error=r.last_error)
            for r in conn.execute(select(jobs).where(jobs.c.state == "dead").order_by(jobs.c.id.desc()).limit(20))
        ]
        report["dead_deliveries"] = [
            dict(id=r.id, destination=r.destination, sop_uid=r.sop_uid, attempts=r.attempts, error=r.last_error)
            for r in conn.execute(
                select(deliveries, results.c.sop_uid)
                .join(results, results.c.id == deliveries.c.result_id)
                .where(deliveries.c.state == "dead")
                .order_by(deliveries.c.id.desc())
                .limit(20)
            )
        ]
        report["waiting_in_journals"] = [
            dict(
                receiver=r.receiver,
                series_uid=r.series_uid,
                since=time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r.since)),
                error=r.error,
            )
            for r in conn.execute(select(ingest_pending).order_by(ingest_pending.c.since).limit(20))
        ]
        report["unrouted_series"] = [
            dict(
                series_uid=r.series_uid,
                modality=r.modality,
                description=r.description,
                instances=r.instance_count,
                why=r.routing_note,
            )
            for r in conn.execute(
                select(series).where(series.c.state == "unrouted").order_by(series.c.id.desc()).limit(20)
            )
        ]
        report["recent_problems"] = [
            dict(
                at=time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r.at)),
                kind=r.kind,
                message=r.message,
                calling_ae=r.calling_ae,
            )
            for r in conn.execute(
                select(events).where(events.c.level.in_(("WARNING", "ERROR"))).order_by(events.c.id.desc()).limit(10)
            )
        ]
    if config.retention.enabled:
        from dicom_node.retention import held_summary

        report["retention"] = held_summary(engine)
    engine.dispose()
    return report


def format_status(report: dict[str, Any]) -> str:
    """The status report as text for a terminal."""

    def fmt(d: dict[str, int]) -> str:
        return ", ".join(f"{k} {v}" for k, v in sorted(d.items())) or "none"

    lines = [
        f"studies     {report['studies']}",
        f"series      {fmt(report['series'])}",
        f"instances   {report['instances']} (duplicates received: {report['duplicates']})",
        f"jobs        {fmt(report['jobs'])}",
        f"results     {report['results']}",
        f"deliveries  {fmt(report['deliveries'])}",
    ]
    if "retention" in report:
        lines.append("retention   " + (fmt(report["retention"]) or "no studies"))
    for title, key in (
        ("dead jobs", "dead_jobs"),
        ("dead deliveries", "dead_deliveries"),
        ("series waiting in a receiver's journal (not routed until written)", "waiting_in_journals"),
        ("unrouted series", "unrouted_series"),
        ("recent problems", "recent_problems"),
    ):
        if report[key]:
            lines.append(f"{title}:")
            lines.extend("  " + ", ".join(f"{k}={v}" for k, v in item.items()) for item in report[key])
    return "\n".join(lines)


def list_jobs(config: NodeConfig, *, state: str | None = None, limit: int = 50) -> list[str]:
    """One line per job, newest first."""
    engine = connect(config.node.database_url())
    query = select(jobs).order_by(jobs.c.id.desc()).limit(limit)
    if state:
        query = query.where(jobs.c.state == state)
    with engine.connect() as conn:
        rows = conn.execute(query).all()
    engine.dispose()
    lines = [f"{'id':>6} {'state':<10} {'att':>3} {'route':<16} {'pipeline':<16} rev  summary / last error"]
    for r in rows:
        text = r.last_error if r.state in ("failed", "dead") else (r.summary or "")
        lines.append(
            f"{r.id:>6} {r.state:<10} {r.attempts:>3} {r.route:<16} {r.pipeline:<16} {r.revision:>3}  "
            f"{(text or '')[:100]}"
        )
    return lines


def change_job(config: NodeConfig, job_id: int, action: str) -> tuple[bool, str | None]:
    """Retry or cancel one job: (done, the job's state before; None when there is no such job)."""
    engine = connect(config.node.database_url())
    with engine.connect() as conn:
        state = conn.execute(select(jobs.c.state).where(jobs.c.id == job_id)).scalar_one_or_none()
    queue = JobQueue(engine, config.queue)
    ok = state is not None and (queue.retry(job_id) if action == "retry" else queue.cancel(job_id))
    engine.dispose()
    return ok, state
