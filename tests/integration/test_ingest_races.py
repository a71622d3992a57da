"""Issue #18 B: rows of a new study written by several receivers at once, failed batches, pending series.

Receiver processes on PostgreSQL used to both insert a new study's row (``SELECT ... FOR UPDATE`` of a
row that does not exist locks nothing): the loser's batch failed, was never retried while the node ran,
and the stability sweep routed the series without those instances. These tests race the row writes
for real (threads with their own connections, and ``dicom-node serve`` with four receiver processes),
and make a batch fail for real (a trigger or a constraint in the database).
"""

from __future__ import annotations

import logging
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread
from sqlalchemy import Engine, create_engine, func, select, text

from dicom_node.config import parse_config
from dicom_node.db import connect, events, ingest_pending, instances, jobs, now, series, studies
from dicom_node.ingest.index import record
from dicom_node.ingest.ingestor import Ingestor
from dicom_node.intake.stability import StabilitySweep
from dicom_node.queue import JobQueue
from dicom_node.store import Store
from dicom_node.synth.dicom_series import write_ct_series
from tests.nodes import ServeProcess, node_config_text, tcp_env, wait_for
from tests.peers.orthanc import free_port

PATIENT_ID, ACCESSION = "PHI-PATIENT-4711", "PHI-ACC-0815"


def _series(folder: Path, n: int = 20, seed: int = 18) -> list[Path]:
    hu = np.full((n, 16, 16), -1000.0)
    return write_ct_series(hu, (1.0, 1.0, 1.0), folder, seed=seed, patient_id=PATIENT_ID, accession=ACCESSION)


def _meta(study: str, series_uid: str, sop: str) -> dict[str, object]:
    return {
        "sop_uid": sop,
        "series_uid": series_uid,
        "study_uid": study,
        "sop_class": "1.2.840.10008.5.1.4.1.1.2",
        "transfer_syntax": "1.2.840.10008.1.2.1",
        "calling_ae": "STORESCU",
        "called_ae": "NODE",
        "received_at": now(),
        "patient_id": PATIENT_ID,
        "accession": ACCESSION,
        "modality": "CT",
        "description": None,
    }


def test_concurrent_writers_of_one_new_study_never_conflict(db_url: str) -> None:
    """Threads with their own connections write the same new study and series at the same moment
    (a barrier between BEGIN and the first statement), each its own instances plus one shared copy."""
    engine = connect(db_url)
    writers, rounds = 4, 5
    errors: list[BaseException] = []
    raced: list[int] = []
    for r in range(rounds):
        study, ser = f"1.2.3.{r}", f"1.2.3.{r}.1"
        barrier = threading.Barrier(writers)

        def write(w: int, study: str = study, ser: str = ser, barrier: threading.Barrier = barrier) -> None:
            rows = [(_meta(study, ser, f"{ser}.{w}.{i}"), f"p/{w}/{i}", 10) for i in range(3)]
            rows.append((_meta(study, ser, f"{ser}.shared"), "p/shared", 10))
            try:
                with engine.connect() as conn:
                    barrier.wait(timeout=30)
                    with conn.begin():
                        raced.append(len(record(conn, rows, on_known="duplicate")))
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=write, args=(w,)) for w in range(writers)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
    assert not errors, errors
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(studies)).scalar() == rounds
        counts = [r.instance_count for r in conn.execute(select(series))]
        rows = conn.execute(select(func.count()).select_from(instances)).scalar()
    assert counts == [writers * 3 + 1] * rounds  # every instance counted once, the shared copy once
    assert rows == rounds * (writers * 3 + 1)
    # The shared copy: recorded by one writer; every other writer gets it back as a duplicate, whether
    # it found the row or raced its insert (keep-first: a known row is never overwritten).
    assert sum(raced) == rounds * (writers - 1)
    engine.dispose()


def _inject_failure(engine: Engine) -> None:
    """Make every new study's row fail, with a driver message that would quote the row if it could."""
    with engine.begin() as conn:
        if engine.dialect.name == "sqlite":
            conn.execute(text("CREATE TRIGGER injected BEFORE INSERT ON studies BEGIN SELECT RAISE(ABORT, 'x'); END"))
        else:  # "DETAIL: Failing row contains (..., PHI-PATIENT-4711, PHI-ACC-0815, ...)"
            conn.execute(text("ALTER TABLE studies ADD CONSTRAINT injected CHECK (study_uid = '') NOT VALID"))


def _heal(engine: Engine) -> None:
    with engine.begin() as conn:
        if engine.dialect.name == "sqlite":
            conn.execute(text("DROP TRIGGER injected"))
        else:
            conn.execute(text("ALTER TABLE studies DROP CONSTRAINT injected"))


def test_a_failed_batch_is_retried_and_its_series_waits(
    tmp_path: Path, db_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    config = parse_config(node_config_text(tmp_path / "storage", db_url=db_url, port=0, quiet_period_s=0.5))
    engine = connect(config.node.database_url())
    store = Store(config.node.storage)
    ingestor = Ingestor(config, engine, store)
    sweep = StabilitySweep(config, engine, store, JobQueue(engine, config.queue))
    files = _series(tmp_path / "in", n=6)
    _inject_failure(engine)
    caplog.set_level(logging.DEBUG)
    try:
        for f in files:
            assert ingestor.keep(f.read_bytes(), calling_ae="STORESCU", called_ae="NODE").status == 0
        wait_for(lambda: _count(engine, events, events.c.kind == "materialize_failed"), timeout=30, what="failure")
        assert not ingestor.flush(timeout=0.5)  # the failed records still wait
        with engine.connect() as conn:
            pending = conn.execute(select(ingest_pending)).all()
        assert len(pending) == 1 and pending[0].error
        assert sweep.sweep(at=now() + 3600) == 0  # long quiet, but its instances have no rows yet
        _heal(engine)
        assert ingestor.flush(timeout=60), "the retry never materialized the batch"
        assert _count(engine, instances) == len(files)
        assert _count(engine, ingest_pending) == 0
        assert _count(engine, events, events.c.kind == "materialize_recovered") == 1
        assert sweep.sweep(at=now() + 3600) == 1
        with engine.connect() as conn:
            assert conn.execute(select(series.c.state, series.c.instance_count)).one() == ("routed", len(files))
            assert conn.execute(select(func.count()).select_from(jobs)).scalar() == 1
    finally:
        ingestor.close()
        engine.dispose()
    logged = caplog.text
    assert "failed" in logged
    assert PATIENT_ID not in logged and ACCESSION not in logged


def _count(engine: Engine, table: object, *where: object) -> int:
    with engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(table).where(*where)).scalar() or 0)  # type: ignore[arg-type]


@pytest.mark.slow
@pytest.mark.postgres
def test_four_receiver_processes_take_one_new_study_over_sixteen_associations(tmp_path: Path, pg_url: str) -> None:
    """The issue's reproduction: one new study over 16 concurrent storescu associations to 4 receiver
    processes on PostgreSQL, every instance sent twice (in two associations, so often to two processes).
    Every instance gets its row, nothing fails, the series is routed once with all its instances, and
    every second copy is counted as a duplicate, whichever process handled it (issue #18 F)."""
    files = _series(tmp_path / "in", n=32, seed=4711)
    node, port = serve_four_receivers(tmp_path, pg_url)
    engine = create_engine(pg_url)
    try:
        wait_for(lambda: _echo(port), timeout=60, what=f"the node to answer\n{node.log_tail()}")
        time.sleep(2)  # the extra receiver processes bind the port after the first one
        copies = files + files[::-1]
        procs = storescu_in_parallel(port, copies, 16)
        assert all(p.wait(timeout=120) == 0 for p in procs)
        wait_for(lambda: _count(engine, instances) == len(files), timeout=60, what=f"rows\n{node.log_tail()}")
        wait_for(lambda: _count(engine, jobs) >= 1, timeout=60, what=f"the series routed\n{node.log_tail()}")
        time.sleep(2)  # a second, partial routing would show up as another job
        with engine.connect() as conn:
            ser = conn.execute(select(series)).one()
            revisions = set(conn.execute(select(instances.c.revision)).scalars())
            job_rows = conn.execute(select(jobs.c.revision)).all()
            failures = conn.execute(select(events.c.kind).where(events.c.level == "ERROR")).all()
        assert ser.instance_count == len(files) and ser.state == "routed"
        assert revisions == {1} and [j.revision for j in job_rows] == [1]
        assert not failures
        logged = node.log_path.read_text(errors="replace")
        assert "UniqueViolation" not in logged and "failed" not in logged, node.log_tail()
        assert PATIENT_ID not in logged and ACCESSION not in logged
        duplicates = wait_for(
            lambda: _duplicates(engine) == len(files) or None, timeout=30, what=f"duplicates: {_duplicates(engine)}"
        )
        assert duplicates
        uids = {dcmread(f, stop_before_pixels=True).SOPInstanceUID for f in files}
        with engine.connect() as conn:
            assert set(conn.execute(select(instances.c.sop_uid)).scalars()) == uids
    finally:
        node.stop()
        engine.dispose()


def serve_four_receivers(tmp_path: Path, pg_url: str) -> tuple[ServeProcess, int]:
    """``dicom-node serve`` on PostgreSQL with 4 native receiver processes, no workers, storage in
    ``tmp_path / "storage"``; started (not yet answering), with its port."""
    port = free_port()
    config_path = tmp_path / "node.toml"
    config_path.write_text(
        node_config_text(
            tmp_path / "storage",
            db_url=pg_url,
            port=port,
            quiet_period_s=1.0,
            workers=0,
            extra_node='receiver = "native"\nreceiver_processes = 4',
        )
    )
    node = ServeProcess(config_path, tmp_path / "node.log")
    node.start()
    return node, port


def storescu_in_parallel(port: int, files: list[Path], associations: int) -> list[subprocess.Popen[bytes]]:
    """``files`` sent by ``associations`` storescu processes at once, round robin."""
    return [
        subprocess.Popen(
            ["storescu", "-aet", "STORESCU", "-aec", "NODE", "127.0.0.1", str(port), *map(str, files[i::associations])],
            env=tcp_env(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        for i in range(associations)
    ]


def _duplicates(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(select(func.sum(instances.c.duplicates))).scalar() or 0)


def _echo(port: int) -> bool:
    cmd = ["echoscu", "-aet", "ECHOSCU", "-aec", "NODE", "127.0.0.1", str(port)]
    return subprocess.run(cmd, capture_output=True, env=tcp_env(), timeout=30).returncode == 0
