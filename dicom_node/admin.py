"""Read-outs and actions for operators: status counts, job listing, retry and cancel."""

from __future__ import annotations

import getpass
import time
from typing import Any

from sqlalchemy import Engine, func, select, update

from dicom_node.config import NodeConfig
from dicom_node.db import (
    connect,
    deliveries,
    events,
    ingest_pending,
    instances,
    jobs,
    now,
    results,
    series,
    studies,
)
from dicom_node.db.engine import record_event
from dicom_node.live_config import running_node
from dicom_node.queue import JobQueue


def status_report(config: NodeConfig, engine: Engine | None = None) -> dict[str, Any]:
    """Counts and the problems an admin must see: dead jobs, dead deliveries, unrouted series.

    ``engine``: the running node's (the web face); None opens and closes one for this call (the CLI).
    """
    own = engine is None
    engine = engine if engine is not None else connect(config.node.database_url())
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
    report["running"] = running_node(config.node.storage) or {"up": False}
    if config.retention.enabled:
        from dicom_node.retention import held_summary

        report["retention"] = held_summary(engine)
    if own:
        engine.dispose()
    return report


def format_status(report: dict[str, Any]) -> str:
    """The status report as text for a terminal."""

    def fmt(d: dict[str, int]) -> str:
        return ", ".join(f"{k} {v}" for k, v in sorted(d.items())) or "none"

    lines = [
        *_running_lines(report.get("running", {})),
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


def _when(t: float | None) -> str | None:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t)) if t else None


def job_rows(engine: Engine, *, state: str | None = None, study_uid: str | None = None, limit: int = 50) -> list[dict]:
    """Jobs, newest first, with the patient, accession and study they work on (for authenticated readers)."""
    query = (
        select(jobs, studies.c.patient_id, studies.c.accession)
        .select_from(jobs.outerjoin(studies, studies.c.study_uid == jobs.c.study_uid))
        .order_by(jobs.c.id.desc())
        .limit(limit)
    )
    if state:
        query = query.where(jobs.c.state == state)
    if study_uid:
        query = query.where(jobs.c.study_uid == study_uid)
    with engine.connect() as conn:
        rows = conn.execute(query).all()
    return [
        dict(
            id=r.id,
            state=r.state,
            attempts=r.attempts,
            max_attempts=r.max_attempts,
            route=r.route,
            pipeline=r.pipeline,
            revision=r.revision,
            patient_id=r.patient_id,
            accession=r.accession,
            study_uid=r.study_uid,
            series_uid=r.series_uid,
            created=_when(r.created_at),
            started=_when(r.started_at),
            finished=_when(r.finished_at),
            timings=r.timings,
            summary=r.summary,
            last_error=r.last_error,
        )
        for r in rows
    ]


def delivery_rows(
    engine: Engine,
    *,
    state: str | None = None,
    destination: str | None = None,
    study_uid: str | None = None,
    limit: int = 100,
) -> list[dict]:
    """Deliveries, newest first: destination, state, attempts, next try, give-up time and last error."""
    query = (
        select(deliveries, results.c.kind, results.c.sop_uid, results.c.job_id, jobs.c.study_uid)
        .join(results, results.c.id == deliveries.c.result_id)
        .join(jobs, jobs.c.id == results.c.job_id)
        .order_by(deliveries.c.id.desc())
        .limit(limit)
    )
    if state:
        query = query.where(deliveries.c.state == state)
    if destination:
        query = query.where(deliveries.c.destination == destination)
    if study_uid:
        query = query.where(jobs.c.study_uid == study_uid)
    with engine.connect() as conn:
        rows = conn.execute(query).all()
    return [
        dict(
            id=r.id,
            destination=r.destination,
            state=r.state,
            attempts=r.attempts,
            next_try=_when(r.next_try) if r.state == "pending" else None,
            give_up_at=_when(r.give_up_at),
            last_error=r.last_error,
            sent=_when(r.sent_at),
            kind=r.kind,
            sop_uid=r.sop_uid,
            job_id=r.job_id,
            study_uid=r.study_uid,
        )
        for r in rows
    ]


def study_rows(engine: Engine, *, limit: int = 50) -> list[dict]:
    """Studies, most recently seen first, with their series states and job counts."""
    with engine.connect() as conn:
        rows = conn.execute(select(studies).order_by(studies.c.last_seen.desc()).limit(limit)).all()
        uids = [r.study_uid for r in rows]
        series_states: dict[str, dict[str, int]] = {}
        for uid, state, count in conn.execute(
            select(series.c.study_uid, series.c.state, func.count())
            .where(series.c.study_uid.in_(uids))
            .group_by(series.c.study_uid, series.c.state)
        ):
            series_states.setdefault(uid, {})[state] = int(count)
        job_states: dict[str, dict[str, int]] = {}
        for uid, state, count in conn.execute(
            select(jobs.c.study_uid, jobs.c.state, func.count())
            .where(jobs.c.study_uid.in_(uids))
            .group_by(jobs.c.study_uid, jobs.c.state)
        ):
            job_states.setdefault(uid, {})[state] = int(count)
    return [
        dict(
            study_uid=r.study_uid,
            patient_id=r.patient_id,
            accession=r.accession,
            first_seen=_when(r.first_seen),
            last_seen=_when(r.last_seen),
            series=series_states.get(r.study_uid, {}),
            jobs=job_states.get(r.study_uid, {}),
        )
        for r in rows
    ]


def study_timeline(engine: Engine, study_uid: str) -> dict[str, Any] | None:
    """One study: its series (received, routed), jobs (stages, timings), results and deliveries; None if unknown."""
    with engine.connect() as conn:
        study = conn.execute(select(studies).where(studies.c.study_uid == study_uid)).first()
        if study is None:
            return None
        series_list = [
            dict(
                series_uid=r.series_uid,
                modality=r.modality,
                description=r.description,
                calling_ae=r.calling_ae,
                instances=r.instance_count,
                state=r.state,
                first_received=_when(r.first_seen),
                last_received=_when(r.last_seen),
                routed=_when(r.routed_at),
                routing_note=r.routing_note,
            )
            for r in conn.execute(select(series).where(series.c.study_uid == study_uid).order_by(series.c.first_seen))
        ]
        result_list = [
            dict(id=r.id, job_id=r.job_id, kind=r.kind, sop_uid=r.sop_uid, created=_when(r.created_at))
            for r in conn.execute(
                select(results)
                .join(jobs, jobs.c.id == results.c.job_id)
                .where(jobs.c.study_uid == study_uid)
                .order_by(results.c.id)
            )
        ]
    return dict(
        study_uid=study.study_uid,
        patient_id=study.patient_id,
        accession=study.accession,
        first_seen=_when(study.first_seen),
        last_seen=_when(study.last_seen),
        series=series_list,
        jobs=job_rows(engine, study_uid=study_uid, limit=500),
        results=result_list,
        deliveries=delivery_rows(engine, study_uid=study_uid, limit=1000),
    )


def event_rows(engine: Engine, *, kind: str | None = None, limit: int = 100) -> list[dict]:
    """Events (receiver refusals, dead letters, admin actions...), newest first."""
    query = select(events).order_by(events.c.id.desc()).limit(limit)
    if kind:
        query = query.where(events.c.kind == kind)
    with engine.connect() as conn:
        rows = conn.execute(query).all()
    return [
        dict(
            id=r.id,
            at=_when(r.at),
            level=r.level,
            kind=r.kind,
            message=r.message,
            calling_ae=r.calling_ae,
            details=r.details,
        )
        for r in rows
    ]


def _running_lines(running: dict[str, Any]) -> list[str]:
    """The node line of the status: up or not, and whether its config file differs from what runs."""
    if "pid" not in running:
        return ["node        NOT running (no `dicom-node serve` on this storage folder)"]
    lines = [f"node        up: pid {running['pid']}, version {running['version']}, since {running['started']}"]
    if running.get("file_error"):
        lines.append(
            f"config      the file on disk does not load, the node runs its previous config: {running['file_error']}"
        )
    elif running.get("file_differs"):
        lines.append(
            f"config      {running['config_path']} differs from the running config: "
            f"reload with `kill -HUP {running['pid']}` or the dashboard's Reload (routes, peers, destinations)"
        )
    if running.get("last_reload"):
        lines.append(f"reload      {running['last_reload']['at']}: {running['last_reload']['message']}")
    return lines


def list_jobs(config: NodeConfig, *, state: str | None = None, limit: int = 50) -> list[str]:
    """One line per job, newest first, with the patient ID and accession of its study."""
    engine = connect(config.node.database_url())
    rows = job_rows(engine, state=state, limit=limit)
    engine.dispose()
    lines = [
        f"{'id':>6} {'state':<10} {'att':>3} {'route':<16} {'pipeline':<16} rev  {'patient':<16} {'accession':<16} "
        "study / summary or last error"
    ]
    for r in rows:
        text = r["last_error"] if r["state"] in ("failed", "dead") else (r["summary"] or "")
        lines.append(
            f"{r['id']:>6} {r['state']:<10} {r['attempts']:>3} {r['route']:<16} {r['pipeline']:<16} "
            f"{r['revision']:>3}  {r['patient_id'] or '-':<16} {r['accession'] or '-':<16} {r['study_uid']}"
            + (f"\n{'':>8}{text[:110]}" if text else "")
        )
    return lines


def change_job(
    config: NodeConfig, job_id: int, action: str, *, engine: Engine | None = None, user: str | None = None
) -> tuple[bool, str | None]:
    """Retry, re-run or cancel one job: (done, the job's state before; None when there is no such job).

    ``user``: who asked (the web face); the action is written to the audit trail (``events``, kind ``admin``).
    """
    own = engine is None
    engine = engine if engine is not None else connect(config.node.database_url())
    with engine.connect() as conn:
        state = conn.execute(select(jobs.c.state).where(jobs.c.id == job_id)).scalar_one_or_none()
    queue = JobQueue(engine, config.queue)
    actions = {"retry": queue.retry, "rerun": queue.rerun, "cancel": queue.cancel}
    ok = state is not None and actions[action](job_id)
    audit(engine, user, f"job {job_id} {action}", ok, state)
    if own:
        engine.dispose()
    return ok, state


def retry_delivery_now(
    engine: Engine, delivery_id: int, *, config: NodeConfig | None = None, user: str | None = None
) -> tuple[bool, str | None]:
    """Send one delivery at the next sender tick: a pending one now, a dead one again for its destination's
    ``retry_for_hours`` (from ``config``; 24 h for a destination no longer configured).

    Returns (done, the state before; None when there is no such delivery). A sent delivery is left alone.
    """
    t = now()
    with engine.begin() as conn:
        row = conn.execute(
            select(deliveries.c.state, deliveries.c.destination).where(deliveries.c.id == delivery_id)
        ).first()
        state = str(row.state) if row is not None else None
        ok = row is not None and state in ("pending", "dead")
        if row is not None and ok:
            values: dict[str, Any] = dict(state="pending", next_try=t)
            if state == "dead":
                known = {d.name: d.retry_for_hours for d in (config.destinations if config else [])}
                values["give_up_at"] = t + known.get(row.destination, 24.0) * 3600
            conn.execute(update(deliveries).where(deliveries.c.id == delivery_id).values(**values))
    audit(engine, user, f"delivery {delivery_id} retry-now", ok, state)
    return ok, state


def _os_user() -> str:
    try:
        return getpass.getuser()
    except OSError:  # no login name in the environment (a container)
        return "unknown"


def audit(
    engine: Engine, user: str | None, action: str, ok: bool, before: str | None, outcome: str | None = None
) -> None:
    """One ``events`` row (kind ``admin``) per admin action: who, what, whether it was done, when (the row's time)."""
    who = user or f"cli:{_os_user()}"
    outcome = outcome or ("done" if ok else ("no such item" if before is None else f"refused (state {before})"))
    with engine.begin() as conn:
        record_event(conn, "admin", f"{who}: {action}: {outcome}", user=who, action=action, ok=ok, before=before)


def echo_destination(config: NodeConfig, name: str, *, timeout: float = 10.0) -> tuple[bool, str]:
    """C-ECHO a configured destination as the node's AE title: (answered Success, what happened).

    A TCP connection is tried first, so a failure names its real cause (``Connection refused``, a timeout,
    an unknown host) rather than "association aborted". Raises ``KeyError`` for an unknown destination.
    """
    import socket

    from pynetdicom import AE

    dest = config.destination(name)
    where = f"{name} ({dest.ae_title}@{dest.host}:{dest.port}{' TLS' if dest.tls else ''})"
    started = time.perf_counter()
    try:
        socket.create_connection((dest.host, dest.port), timeout=timeout).close()
    except OSError as exc:
        return False, f"{where}: cannot connect: {exc.strerror or exc}"
    ae = AE(ae_title=config.node.ae_title)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
    ae.add_requested_context("1.2.840.10008.1.1")
    tls_args = None
    if dest.tls:
        from dicom_node.net.tls import client_context

        tls_args = (client_context(dest, config.tls), dest.host)
    assoc = ae.associate(dest.host, dest.port, ae_title=dest.ae_title, tls_args=tls_args)
    if not assoc.is_established:
        what = (
            "rejected the association (check its AE title and its list of known AEs)"
            if assoc.is_rejected
            else "aborted the association"
        )
        return False, f"{where}: {what}"
    try:
        status = assoc.send_c_echo()
    finally:
        assoc.release()
    ms = (time.perf_counter() - started) * 1000
    code = getattr(status, "Status", None)
    if code == 0:
        return True, f"{where}: C-ECHO Success in {ms:.0f} ms"
    return False, f"{where}: C-ECHO answered " + (f"status 0x{code:04X}" if code is not None else "nothing")
