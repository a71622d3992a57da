"""The sender: retries while the PACS is unreachable, then dead-letters after the configured time."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import insert, select, update

from dicom_node.db import connect, deliveries, jobs, now, results
from dicom_node.delivery import Sender
from dicom_node.store import Store
from tests.nodes import make_config
from tests.peers.dicomfiles import CT_LIDC_SLAB, require
from tests.peers.orthanc import free_port


def test_unreachable_destination_backs_off_then_dead_letters(tmp_path: Path, sqlite_url: str) -> None:
    config = make_config(tmp_path / "storage", db_url=sqlite_url, port=0, dest_port=free_port())
    engine = connect(sqlite_url)
    store = Store(config.node.storage)
    source = sorted((require(CT_LIDC_SLAB) / "dicom").iterdir())[0]
    target = store.result_path(1, "1.2.3.4")
    target.parent.mkdir(parents=True)
    target.write_bytes(source.read_bytes())
    t = now()
    with engine.begin() as conn:
        conn.execute(
            insert(jobs).values(
                id=1,
                series_uid="1.2",
                study_uid="1",
                route="chest-ct",
                pipeline="ct_lung_field",
                revision=1,
                state="succeeded",
                attempts=1,
                max_attempts=2,
                run_after=t,
                created_at=t,
            )
        )
        conn.execute(
            insert(results).values(
                id=1,
                job_id=1,
                kind="seg",
                sop_uid="1.2.3.4",
                sop_class_uid="1.2.840.10008.5.1.4.1.1.66.4",
                path=store.relative(target),
                created_at=t,
            )
        )
        conn.execute(
            insert(deliveries).values(
                result_id=1,
                destination="pacs",
                state="pending",
                attempts=0,
                next_try=t,
                give_up_at=t + 3600,
                created_at=t,
            )
        )
    sender = Sender(config, engine, store)
    assert sender.tick() == 0
    with engine.connect() as conn:
        row = conn.execute(select(deliveries)).one()
    assert row.state == "pending" and row.attempts == 1 and row.next_try > t and "association" in row.last_error
    assert sender.tick() == 0  # not due yet: nothing tried
    with engine.begin() as conn:
        conn.execute(update(deliveries).values(next_try=now() - 1, give_up_at=now() - 1))
    sender.tick()
    with engine.connect() as conn:
        row = conn.execute(select(deliveries)).one()
    assert row.state == "dead" and row.attempts == 2
