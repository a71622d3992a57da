"""The node's own result objects sent back (a PACS returning the whole study) are recognised by their SOP
Instance UIDs and skipped quietly: no job, no "unrouted" problem in the status."""

from __future__ import annotations

import copy
from pathlib import Path

from pydicom import dcmread
from pydicom.filebase import DicomBytesIO
from pydicom.uid import generate_uid
from sqlalchemy import insert, select

from dicom_node.admin import status_report
from dicom_node.db import events, jobs, now, results, series
from tests.integration.test_intake import _keep, _setup
from tests.peers.dicomfiles import CT_LIDC_SLAB, US_CLINICAL, require


def _with_uids(path: Path, series_uid: str) -> tuple[bytes, str]:
    ds = copy.deepcopy(dcmread(path))
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.SeriesInstanceUID = series_uid
    buf = DicomBytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return bytes(buf.getvalue()), str(ds.SOPInstanceUID)


def test_own_results_coming_back_are_not_routed_nor_problems(tmp_path: Path, sqlite_url: str) -> None:
    ingestor, sweep = _setup(tmp_path, sqlite_url)
    for f in sorted((require(CT_LIDC_SLAB) / "dicom").iterdir())[:4]:
        _keep(ingestor, f.read_bytes())
    assert sweep.sweep(at=now() + 6) == 1
    with sweep.engine.connect() as conn:
        job_id = conn.execute(select(jobs.c.id)).scalar_one()
    us = sorted(require(US_CLINICAL).glob("*.dcm"))
    returned, mixed = generate_uid(), generate_uid()
    ours = [_with_uids(us[0], returned), _with_uids(us[0], returned), _with_uids(us[0], mixed)]
    with sweep.engine.begin() as conn:
        for _, sop_uid in ours:
            conn.execute(
                insert(results).values(
                    job_id=job_id,
                    kind="sr",
                    sop_uid=sop_uid,
                    sop_class_uid="1.2.840.10008.5.1.4.1.1.88.33",
                    path=f"results/{sop_uid}.dcm",
                    created_at=now(),
                )
            )
    for data, _ in ours:
        _keep(ingestor, data)
    _keep(ingestor, _with_uids(us[0], mixed)[0])  # not ours: the mixed series is a real one
    assert sweep.sweep(at=now() + 6) == 2
    with sweep.engine.connect() as conn:
        states = {r.series_uid: r.state for r in conn.execute(select(series))}
        unrouted_events = conn.execute(select(events).where(events.c.kind == "unrouted")).all()
        job_count = len(conn.execute(select(jobs)).all())
    assert states[returned] == "returned" and states[mixed] == "unrouted"
    assert job_count == 1 and len(unrouted_events) == 1
    report = status_report(sweep.config)
    assert [s["series_uid"] for s in report["unrouted_series"]] == [mixed] and report["series"]["returned"] == 1
