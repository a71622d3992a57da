"""Retention deletes only what has served its purpose: results delivered, and old enough (or a full disk)."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import func, insert, select

from dicom_node.admin import format_status, status_report
from dicom_node.config import parse_config
from dicom_node.db import connect, deliveries, events, instances, jobs, now, results, series, studies
from dicom_node.retention import Retention, held_summary
from dicom_node.store import Store

DAY = 86400.0


def _study(conn, store: Store, uid: str, age_days: float, job: str, delivery: str | None) -> Path:  # type: ignore[no-untyped-def]
    """A study with one series, two instance files, a job in state ``job`` and one delivery in ``delivery``."""
    t = now() - age_days * DAY
    conn.execute(insert(studies).values(study_uid=uid, first_seen=t, last_seen=t))
    conn.execute(
        insert(series).values(
            series_uid=f"{uid}.1", study_uid=uid, instance_count=2, first_seen=t, last_seen=t, state="routed"
        )
    )
    path = Path()
    for k in (1, 2):
        path = store.instance_path(uid, f"{uid}.1", f"{uid}.1.{k}")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"\0" * 1000)
        conn.execute(
            insert(instances).values(
                sop_uid=f"{uid}.1.{k}",
                series_uid=f"{uid}.1",
                study_uid=uid,
                sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
                transfer_syntax="1.2.840.10008.1.2.1",
                path=store.relative(path),
                size=1000,
                received_at=t,
                revision=1,
            )
        )
    job_id = conn.execute(
        insert(jobs)
        .values(
            series_uid=f"{uid}.1",
            study_uid=uid,
            route="chest-ct",
            pipeline="ct_lung_nodule",
            revision=1,
            state=job,
            attempts=1,
            max_attempts=3,
            run_after=t,
            created_at=t,
            finished_at=t if job in ("succeeded", "dead") else None,
        )
        .returning(jobs.c.id)
    ).scalar_one()
    if delivery is not None:
        result_id = conn.execute(
            insert(results)
            .values(job_id=job_id, kind="sr", sop_uid=f"{uid}.9", sop_class_uid="1.2.3", path="r", created_at=t)
            .returning(results.c.id)
        ).scalar_one()
        conn.execute(
            insert(deliveries).values(
                result_id=result_id,
                destination="pacs",
                state=delivery,
                attempts=5 if delivery != "sent" else 1,
                next_try=now(),
                give_up_at=now() + DAY,
                last_error=None if delivery == "sent" else "Connection refused (the PACS is down)",
                created_at=t,
                sent_at=t if delivery == "sent" else None,
            )
        )
    return path


def test_only_delivered_studies_go_old_first_and_never_a_held_one(tmp_path: Path) -> None:
    text = f'[node]\nstorage = "{tmp_path / "storage"}"\n[retention]\nenabled = true\nkeep_days = 30\n'
    config = parse_config(text, tmp_path / "node.toml")
    engine = connect(config.node.database_url())
    store = Store(config.node.storage)
    with engine.begin() as conn:
        old_done = _study(conn, store, "1.2.1", 40, "succeeded", "sent")
        pacs_down = _study(conn, store, "1.2.2", 40, "succeeded", "pending")
        recent_done = _study(conn, store, "1.2.3", 1, "succeeded", "sent")
        dead_job = _study(conn, store, "1.2.4", 40, "dead", None)
    held = held_summary(engine)
    assert held == {
        "settled (may be deleted by retention)": 2,
        "a result is not delivered yet (or its delivery gave up)": 1,
        "a job has not succeeded (queued, running, failed or dead)": 1,
    }
    assert "retention" in format_status(status_report(config))

    assert Retention(config.retention, engine, store).sweep() == ["1.2.1"]  # old and delivered: deleted
    assert not old_done.exists() and pacs_down.exists() and recent_done.exists() and dead_job.exists()

    # a disk under the watermark deletes settled studies whatever their age, but still never a held one
    pressed = config.retention.model_copy(update={"purge_below_free_mb": 10**12})
    assert Retention(pressed, engine, store).sweep() == ["1.2.3"]
    assert not recent_done.exists() and pacs_down.exists() and dead_job.exists()
    with engine.connect() as conn:
        left = {r.study_uid for r in conn.execute(select(studies.c.study_uid))}
        assert left == {"1.2.2", "1.2.4"}
        assert conn.execute(select(func.count()).select_from(instances)).scalar_one() == 4
        assert conn.execute(select(func.count()).select_from(jobs)).scalar_one() == 4  # the record stays
        messages = [r.message for r in conn.execute(select(events).where(events.c.kind == "retention"))]
    assert len(messages) == 2 and "settled more than 30 day(s) ago" in messages[0] and "disk under" in messages[1]
    engine.dispose()
