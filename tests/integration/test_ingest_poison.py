"""Issue #18: one record that the database refuses for its own reason must not block the journal.

A batch of journaled records that fails is tried again one record at a time; a record that fails
alone while the others succeed is set aside: kept in the journal (and replayed by the next start),
noted in an ``ingest_set_aside`` event and on its series' pending mark (so the series is not routed
without it), and tried again alone while the node runs. Everything else materializes. The refusal is
real: a constraint (PostgreSQL) or a trigger (SQLite) that only one SOP Instance UID violates.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from pydicom import dcmread
from sqlalchemy import Engine, select, text

from dicom_node.config import parse_config
from dicom_node.db import connect, events, ingest_pending, instances, jobs, now, series
from dicom_node.ingest import materialize
from dicom_node.ingest.ingestor import Ingestor
from dicom_node.intake.stability import StabilitySweep
from dicom_node.queue import JobQueue
from dicom_node.store import Store
from tests.integration.test_ingest_races import ACCESSION, PATIENT_ID, _count, _series
from tests.nodes import node_config_text, wait_for


def _poison(engine: Engine, sop_uid: str) -> None:
    """Make the database refuse the row of one instance, and only that one."""
    with engine.begin() as conn:
        if engine.dialect.name == "sqlite":
            conn.execute(
                text(
                    "CREATE TRIGGER poison BEFORE INSERT ON instances "
                    f"WHEN NEW.sop_uid = '{sop_uid}' BEGIN SELECT RAISE(ABORT, 'poison'); END"
                )
            )
        else:
            conn.execute(text(f"ALTER TABLE instances ADD CONSTRAINT poison CHECK (sop_uid <> '{sop_uid}') NOT VALID"))


def _heal(engine: Engine) -> None:
    with engine.begin() as conn:
        if engine.dialect.name == "sqlite":
            conn.execute(text("DROP TRIGGER poison"))
        else:
            conn.execute(text("ALTER TABLE instances DROP CONSTRAINT poison"))


def _keep_all(ingestor: Ingestor, files: list[Path]) -> None:
    for f in files:
        assert ingestor.keep(f.read_bytes(), calling_ae="STORESCU", called_ae="NODE").status == 0


def test_a_poison_record_is_set_aside_and_the_rest_materializes(
    tmp_path: Path, db_url: str, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(materialize, "SET_ASIDE_RETRY_S", 0.5)
    config = parse_config(node_config_text(tmp_path / "storage", db_url=db_url, port=0, quiet_period_s=0.5))
    engine = connect(config.node.database_url())
    store = Store(config.node.storage)
    sweep = StabilitySweep(config, engine, store, JobQueue(engine, config.queue))
    files = _series(tmp_path / "a", n=8, seed=1)
    other = _series(tmp_path / "b", n=5, seed=2)  # another study, sent after the poison record
    bad_uid = dcmread(files[3], stop_before_pixels=True).SOPInstanceUID
    bad_series = dcmread(files[3], stop_before_pixels=True).SeriesInstanceUID
    _poison(engine, bad_uid)
    caplog.set_level(logging.INFO)
    ingestor = Ingestor(config, engine, store)
    try:
        _keep_all(ingestor, files)
        wait_for(lambda: _count(engine, events, events.c.kind == "ingest_set_aside"), timeout=30, what="set aside")
        wait_for(lambda: _count(engine, instances) == len(files) - 1, timeout=30, what="the other rows")
        _keep_all(ingestor, other)  # nothing waits behind the record set aside
        wait_for(lambda: _count(engine, instances) == len(files) + len(other) - 1, timeout=30, what="new rows")
        with engine.connect() as conn:
            marks = conn.execute(select(ingest_pending)).all()
            event = conn.execute(select(events).where(events.c.kind == "ingest_set_aside")).one()
        assert [(m.series_uid, "set aside" in (m.error or "")) for m in marks] == [(bad_series, True)]
        assert event.sop_uid == bad_uid and event.level == "ERROR" and "poison" in event.message
        assert not ingestor.flush(timeout=0.5)  # the record set aside still waits
        assert sweep.sweep(at=now() + 3600) == 1  # only the other series: the poisoned one waits
        with engine.connect() as conn:
            routed = conn.execute(select(series.c.series_uid).where(series.c.state == "routed")).scalars().all()
        assert bad_series not in routed
    finally:
        ingestor.close()  # one more try fails: the record stays in the journal
    # The next start replays the journal: the record is set aside again and the start goes on.
    ingestor = Ingestor(config, engine, store)
    try:
        assert _count(engine, events, events.c.kind == "ingest_set_aside") == 2
        assert _count(engine, ingest_pending) == 1
        assert sweep.sweep(at=now() + 3600) == 0
        _heal(engine)  # the retry, alone, now succeeds
        wait_for(lambda: _count(engine, instances) == len(files) + len(other), timeout=30, what="the poisoned row")
        wait_for(lambda: _count(engine, ingest_pending) == 0, timeout=30, what="the mark released")
        assert ingestor.flush(timeout=10)
        assert _count(engine, events, events.c.kind == "set_aside_materialized") == 1
        assert sweep.sweep(at=now() + 3600) == 1
        with engine.connect() as conn:
            row = conn.execute(select(series).where(series.c.series_uid == bad_series)).one()
            assert (row.state, row.instance_count) == ("routed", len(files))
            assert conn.execute(select(jobs.c.id)).all().__len__() == 2
        assert store.instance_location(row.study_uid, bad_series, bad_uid)[0].exists()
    finally:
        ingestor.close()
        engine.dispose()
    logged = caplog.text
    assert "set aside" in logged
    assert PATIENT_ID not in logged and ACCESSION not in logged
