"""Series stability and routing: quiet periods, revisions after late instances, unrouted series, study waits."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.uid import generate_uid
from sqlalchemy import select

from dicom_node.config import parse_config
from dicom_node.db import connect, jobs, now, series
from dicom_node.ingest.ingestor import Ingestor
from dicom_node.intake.stability import StabilitySweep
from dicom_node.queue import JobQueue
from dicom_node.store import Store
from tests.nodes import node_config_text
from tests.peers.dicomfiles import CT_LIDC_SLAB, US_CLINICAL, require


def _bytes(ds: Dataset) -> bytes:
    buf = DicomBytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return bytes(buf.getvalue())


def _setup(tmp_path: Path, db_url: str, routes: str = "") -> tuple[Ingestor, StabilitySweep]:
    text = node_config_text(tmp_path / "storage", db_url=db_url, port=0, quiet_period_s=5) + routes
    config = parse_config(text)
    engine = connect(config.node.database_url())
    store = Store(config.node.storage)
    return Ingestor(config, engine, store), StabilitySweep(config, engine, store, JobQueue(engine, config.queue))


def _keep(ingestor: Ingestor, data: bytes) -> None:
    assert ingestor.keep(data, calling_ae="STORESCU", called_ae="NODE").status == 0
    assert ingestor.flush()


def _series_states(sweep: StabilitySweep) -> dict[str, tuple[str, int]]:
    with sweep.engine.connect() as conn:
        return {r.modality: (r.state, r.revision) for r in conn.execute(select(series))}


def _jobs(sweep: StabilitySweep) -> list[tuple[str, int]]:
    with sweep.engine.connect() as conn:
        return [(r.route, r.revision) for r in conn.execute(select(jobs).order_by(jobs.c.id))]


def test_quiet_series_is_routed_and_a_late_instance_starts_a_new_revision(tmp_path: Path, db_url: str) -> None:
    ingestor, sweep = _setup(tmp_path, db_url)
    slab = sorted((require(CT_LIDC_SLAB) / "dicom").iterdir())
    for f in slab[:6]:
        _keep(ingestor, f.read_bytes())
    _keep(ingestor, sorted(require(US_CLINICAL).glob("*.dcm"))[0].read_bytes())

    assert sweep.sweep(at=now()) == 0  # still inside the quiet period
    assert _jobs(sweep) == []
    assert sweep.sweep(at=now() + 6) == 2
    assert _series_states(sweep) == {"CT": ("routed", 1), "US": ("unrouted", 1)}
    assert _jobs(sweep) == [("chest-ct", 1)]
    with sweep.engine.connect() as conn:
        note = conn.execute(select(series.c.routing_note).where(series.c.modality == "US")).scalar_one()
    assert "Modality='US' does not match 'CT'" in note

    # A late instance re-opens the series as revision 2; it is routed again, not dropped.
    _keep(ingestor, slab[6].read_bytes())
    assert _series_states(sweep)["CT"] == ("receiving", 2)
    assert sweep.sweep(at=now() + 6) == 1
    assert _jobs(sweep) == [("chest-ct", 1), ("chest-ct", 2)]
    # Sweeping again decides nothing new.
    assert sweep.sweep(at=now() + 60) == 0


def test_next_due_is_when_the_next_series_falls_quiet(tmp_path: Path, db_url: str) -> None:
    ingestor, sweep = _setup(tmp_path, db_url)
    assert sweep.next_due() is None  # nothing receiving
    slab = sorted((require(CT_LIDC_SLAB) / "dicom").iterdir())
    for f in slab[:3]:
        _keep(ingestor, f.read_bytes())
    with sweep.engine.connect() as conn:
        last_seen = conn.execute(select(series.c.last_seen)).scalar_one()
    assert sweep.next_due(at=last_seen + 1) == pytest.approx(last_seen + 5)  # quiet period 5 s
    assert sweep.next_due(at=last_seen + 6) is None  # already quiet: the regular sweep takes it
    assert sweep.sweep(at=last_seen + 5) == 1
    assert sweep.next_due(at=last_seen + 1) is None  # routed


def test_study_route_waits_for_every_series(tmp_path: Path, db_url: str) -> None:
    route = """
[[routes]]
name = "whole-study"
wait_for = "study"
pipelines = ["ct_lung_field"]
[routes.match]
SeriesDescription = "study-*"
"""
    ingestor, sweep = _setup(tmp_path, db_url, route)
    base = dcmread(sorted((require(CT_LIDC_SLAB) / "dicom").iterdir())[0])
    study = generate_uid()

    def instance(series_uid: str) -> bytes:
        ds = copy.deepcopy(base)
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series_uid
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.SeriesDescription = "study-part"
        return _bytes(ds)

    first, second = generate_uid(), generate_uid()
    _keep(ingestor, instance(first))
    t0 = now()
    # Only the first series has been quiet for 5 s at t0 + 5.5; the second arrives "later".
    with sweep.engine.begin() as conn:
        conn.execute(series.update().where(series.c.series_uid == first).values(last_seen=t0 - 10))
    _keep(ingestor, instance(second))
    assert sweep.sweep(at=t0 + 1) == 0
    assert [r for r, _ in _jobs(sweep)] == []
    assert sweep.sweep(at=t0 + 6) == 2
    assert sorted(r for r, _ in _jobs(sweep)) == ["chest-ct", "chest-ct", "whole-study", "whole-study"]
