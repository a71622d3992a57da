"""The whole node as an admin runs it (`dicom-node serve`), with dcmtk as the modality and Orthanc as the PACS."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from io import BytesIO
from pathlib import Path

import pytest
from pydicom import dcmread
from sqlalchemy import create_engine, select

from dicom_node.db import deliveries, instances, jobs, results
from tests.nodes import ServeProcess, node_config_text, tcp_env, wait_for
from tests.peers.dicomfiles import CT_LIDC_SLAB, require
from tests.peers.orthanc import OrthancPeer, free_port
from tests.peers.petct_independent import frame_sources

pytestmark = pytest.mark.slow


@pytest.fixture
def pacs() -> Iterator[OrthancPeer]:
    with OrthancPeer(aet="ORTHANC") as peer:
        yield peer


def _start_node(tmp_path: Path, pacs: OrthancPeer, **kwargs: object) -> tuple[ServeProcess, int, str]:
    port = free_port()
    storage = tmp_path / "storage"
    text = node_config_text(storage, port=port, dest_port=pacs.dicom_port, **kwargs)  # type: ignore[arg-type]
    config_path = tmp_path / "node.toml"
    config_path.write_text(text)
    node = ServeProcess(config_path, tmp_path / "node.log")
    node.start()
    wait_for(lambda: _echo(port), timeout=60, what="the node to answer C-ECHO")
    return node, port, f"sqlite:///{storage / 'node.db'}"


def _echo(port: int) -> bool:
    result = subprocess.run(
        ["echoscu", "-aet", "ECHOSCU", "-aec", "NODE", "127.0.0.1", str(port)],
        capture_output=True,
        env=tcp_env(),
        timeout=30,
    )
    return result.returncode == 0


def _storescu_cmd(port: int, files: list[Path]) -> list[str]:
    return ["storescu", "-v", "-aet", "STORESCU", "-aec", "NODE", "127.0.0.1", str(port), *map(str, files)]


def _storescu(port: int, files: list[Path]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        _storescu_cmd(port, files),
        capture_output=True,
        text=True,
        env=tcp_env(),
        timeout=300,
    )


def _slab() -> list[Path]:
    return sorted((require(CT_LIDC_SLAB) / "dicom").iterdir())


def test_ct_from_storescu_comes_back_as_seg_and_sr_in_the_same_study(tmp_path: Path, pacs: OrthancPeer) -> None:
    node, port, _ = _start_node(tmp_path, pacs)
    try:
        files = _slab()
        sent = _storescu(port, files)
        assert sent.returncode == 0, sent.stderr
        study_uid = str(dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
        modalities = wait_for(
            lambda: (
                {s["MainDicomTags"].get("Modality") for s in pacs.series_of_study(study_uid)} >= {"SEG", "SR"}
                and {s["MainDicomTags"].get("Modality") for s in pacs.series_of_study(study_uid)}
            ),
            timeout=120,
            what=f"SEG and SR in Orthanc\n{node.log_tail()}",
        )
        assert modalities == {
            "SEG",
            "SR",
        }  # Orthanc got only the results (the CT went to the node, not to it)
    finally:
        node.stop()


@pytest.mark.parametrize("durability", ["journal", "file"])
def test_kill_9_mid_ingest_loses_nothing_acknowledged_and_resends_the_same_uids(
    tmp_path: Path, pacs: OrthancPeer, durability: str
) -> None:
    files = _slab()
    node, port, db_url = _start_node(tmp_path, pacs, quiet_period_s=2.0, extra_node=f'durability = "{durability}"')
    proc = subprocess.Popen(
        _storescu_cmd(port, files),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=tcp_env(),
    )
    acknowledged: list[str] = []
    assert proc.stdout is not None
    for line in proc.stdout:  # kill the node right after the 5th Success
        if "Received Store Response (Success)" in line:
            acknowledged.append(line)
            if len(acknowledged) == 5:
                node.kill()
                break
    proc.wait(timeout=60)
    if durability == "file":  # every acknowledged instance has its file and row before the answer
        engine = create_engine(db_url)
        with engine.connect() as conn:
            rows = conn.execute(select(instances.c.sop_uid, instances.c.path)).all()
        assert len(rows) >= 5, "every instance that got Success must be recorded"
        engine.dispose()

    node.start()  # restart on the same storage and database (the journal is replayed first)
    wait_for(lambda: _echo(port), timeout=60, what="the node to come back")
    engine = create_engine(db_url)
    with engine.connect() as conn:
        rows = conn.execute(select(instances.c.sop_uid, instances.c.path)).all()
    assert len(rows) >= 5, "every instance that got Success must be on disk and recorded after the restart"
    for row in rows:
        assert (tmp_path / "storage" / row.path).stat().st_size > 500_000
    engine.dispose()
    try:
        sent = _storescu(port, files)  # the modality resends the whole series
        assert sent.returncode == 0, sent.stderr
        study_uid = str(dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
        wait_for(
            lambda: len(pacs.series_of_study(study_uid)) >= 2,
            timeout=120,
            what=f"results after restart\n{node.log_tail()}",
        )
        engine = create_engine(db_url)
        wait_for(lambda: _all_sent(engine), timeout=60, what="all deliveries sent")
        with engine.connect() as conn:
            n_instances = len(conn.execute(select(instances.c.id)).all())
            result_uids = [r.sop_uid for r in conn.execute(select(results.c.sop_uid))]
        assert n_instances == len(files)
        stored_in_pacs = pacs.sop_instance_uids()
        assert set(result_uids) <= stored_in_pacs
        # every object in the PACS for this study is one the node recorded: nothing twice under new UIDs
        assert len([u for u in stored_in_pacs if u not in result_uids]) == 0
    finally:
        node.stop()


def _all_sent(engine: object) -> bool:
    with engine.connect() as conn:  # type: ignore[attr-defined]
        states = [r.state for r in conn.execute(select(deliveries.c.state))]
        job_states = [r.state for r in conn.execute(select(jobs.c.state))]
    return bool(states) and all(s == "sent" for s in states) and all(s == "succeeded" for s in job_states)


def test_pacs_down_results_wait_and_are_all_delivered_when_it_returns(tmp_path: Path, pacs: OrthancPeer) -> None:
    pacs.stop()
    node, port, db_url = _start_node(tmp_path, pacs)
    try:
        assert _storescu(port, _slab()).returncode == 0
        engine = create_engine(db_url)

        def pending_with_errors() -> bool:
            with engine.connect() as conn:
                rows = conn.execute(select(deliveries.c.state, deliveries.c.attempts)).all()
            return bool(rows) and all(r.state == "pending" and r.attempts >= 2 for r in rows)

        wait_for(pending_with_errors, timeout=120, what=f"failed delivery attempts\n{node.log_tail()}")
        pacs.start()
        wait_for(lambda: _all_sent(engine), timeout=60, what=f"deliveries after PACS restart\n{node.log_tail()}")
        with engine.connect() as conn:
            uids = {r.sop_uid for r in conn.execute(select(results.c.sop_uid))}
        assert uids and uids <= pacs.sop_instance_uids()
        status = subprocess.run(
            [sys.executable, "-m", "dicom_node.cli", "status", "--config", str(tmp_path / "node.toml")],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert "deliveries  sent" in status.stdout
    finally:
        node.stop()


def test_several_receiver_processes_share_the_port(tmp_path: Path, pacs: OrthancPeer) -> None:
    node, port, db_url = _start_node(tmp_path, pacs, extra_node="receiver_processes = 3", quiet_period_s=60.0)
    try:
        files = _slab()
        procs = [
            subprocess.Popen(
                _storescu_cmd(port, files[i::4]), env=tcp_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
            )
            for i in range(4)
        ]
        assert all(p.wait(timeout=120) == 0 for p in procs)
        engine = create_engine(db_url)

        def all_recorded() -> bool:
            with engine.connect() as conn:
                return len(conn.execute(select(instances.c.id)).all()) == len(files)

        wait_for(all_recorded, timeout=30, what="all instances recorded")
        journal_root = tmp_path / "storage" / "journal"
        wait_for(
            lambda: sorted(p.name for p in journal_root.iterdir()) == ["r0", "r1", "r2"],
            timeout=30,
            what=f"one journal per receiver process\n{node.log_tail()}",
        )
    finally:
        node.stop()


def test_lung_us_cine_comes_back_as_seg_and_sr(tmp_path: Path, pacs: OrthancPeer) -> None:
    from dicom_node.synth.us_dicom import write_lung_cine
    from dicom_node.synth.us_lung import LungPattern

    cine = tmp_path / "cine.dcm"
    write_lung_cine(cine, seed=3, pattern=LungPattern.B_LINES)
    node, port, db_url = _start_node(tmp_path, pacs, pipelines='["us_lung"]', match='Modality = "US"')
    try:
        assert _storescu(port, [cine]).returncode == 0
        study_uid = str(dcmread(cine, stop_before_pixels=True).StudyInstanceUID)
        wait_for(
            lambda: {s["MainDicomTags"].get("Modality") for s in pacs.series_of_study(study_uid)} >= {"SEG", "SR"},
            timeout=180,
            what=f"SEG and SR of the cine in Orthanc\n{node.log_tail()}",
        )
        engine = create_engine(db_url)
        with engine.connect() as conn:
            summary = conn.execute(select(jobs.c.summary)).scalar_one()
        assert "b_line" in summary or "pleural_line" in summary, summary
    finally:
        node.stop()


def test_pet_ct_study_comes_back_as_pet_seg_and_sr_with_the_ct_paired(tmp_path: Path, pacs: OrthancPeer) -> None:
    """A synthetic FDG PET/CT (CT and PT series, one study) pushed with storescu: the PT route waits for the
    study, the worker pairs the CT, and a SEG on the PET plus an SR with SUVbw measures reach Orthanc."""
    from dicom_node.pipelines.pet_tumour.model import DEFAULT_BUNDLE
    from dicom_node.synth.pet_dicom import write_pet_ct_study
    from dicom_node.synth.pet_phantom import make_pet_ct_phantom

    if not (DEFAULT_BUNDLE / "models" / "model.pt").exists():
        pytest.skip("no shipped pet_tumour bundle")
    # Two lung tumours in the field of view (seed 31's only lesion in view lies in the arm, which the torso rule
    # of pet_tumour 1.1.0 leaves out by design: that is where the injection site is).
    phantom = make_pet_ct_phantom(5100, n_lesions=2, pet_slices=50, z_start_mm=250.0)
    ct, pt = write_pet_ct_study(phantom, tmp_path / "petct", seed=5100)
    node, port, db_url = _start_node(
        tmp_path, pacs, pipelines='["pet_tumour"]\nwait_for = "study"', match='Modality = "PT"'
    )
    try:
        assert _storescu(port, [*ct, *pt]).returncode == 0
        study_uid = str(dcmread(pt[0], stop_before_pixels=True).StudyInstanceUID)
        wait_for(
            lambda: _modalities(pacs, study_uid) == ["SEG", "SEG", "SR"],
            timeout=300,
            what=f"two SEGs (PET, CT) and the SR of the PET/CT in Orthanc\n{node.log_tail()}",
        )
        engine = create_engine(db_url)
        with engine.connect() as conn:
            rows = conn.execute(select(jobs.c.pipeline, jobs.c.summary, jobs.c.state)).all()
            paths = [r.path for r in conn.execute(select(results.c.path, results.c.kind)).all()]
        assert [(r.pipeline, r.state) for r in rows] == [("pet_tumour", "succeeded")], rows
        assert "tumour" in rows[0].summary, rows[0].summary
        objects = [dcmread(tmp_path / "storage" / p) for p in paths]
        segs = [ds for ds in objects if ds.Modality == "SEG"]
        assert len(segs) == 2
        pet_uids = {str(dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in pt}
        ct_uids = {str(dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in ct}
        refs = sorted((frame_sources(seg) for seg in segs), key=lambda r: bool(r & ct_uids))
        assert refs[0] and refs[0] <= pet_uids  # one SEG lies on the PET
        assert refs[1] and refs[1] <= ct_uids  # and one, with the same segments, on the CT
        assert [s.TrackingUID for s in segs[0].SegmentSequence] == [s.TrackingUID for s in segs[1].SegmentSequence]
    finally:
        node.stop()


def _modalities(pacs: OrthancPeer, study_uid: str) -> list[str]:
    """Sorted modalities of the study's series in the PACS, one entry per series."""
    return sorted(str(s["MainDicomTags"].get("Modality")) for s in pacs.series_of_study(study_uid))


@pytest.mark.parametrize(("ct", "sender"), [("single", "storescu"), ("enhanced", "orthanc")])
def test_pet_ct_written_by_other_code_comes_back_with_every_tumour_and_its_suvmax(
    tmp_path: Path, pacs: OrthancPeer, ct: str, sender: str
) -> None:
    """The issue's acceptance, checked on a PET/CT from an independent phantom and DICOM writer
    (:mod:`tests.peers.petct_independent`: head first, slices written head to foot, Decay Correction ADMIN,
    signed pixels, other grids and a hot myocardium), pushed with storescu (the CT one instance per slice) or by
    Orthanc as a PACS pushes a study (the CT one Enhanced CT instance); the results are read back from Orthanc:
    a PET SEG with one segment per tumour, none on the myocardium, the same segments on the CT, and an SR whose
    SUVmax of each tumour is within 10 % of the truth."""
    from dicom_node.pipelines.pet_tumour.model import DEFAULT_BUNDLE
    from tests.peers.petct_independent import evaluate, write_study

    if not (DEFAULT_BUNDLE / "models" / "model.pt").exists():
        pytest.skip("no shipped pet_tumour bundle")
    study = write_study(tmp_path / "independent", seed=5101, ct=ct)
    node, port, _ = _start_node(
        tmp_path,
        pacs,
        pipelines='["pet_tumour"]\nwait_for = "study"',
        match='Modality = "PT"',
        more_peers=(pacs.aet,),
    )
    try:
        files = [*study.ct_paths, *study.pt_paths]
        if sender == "storescu":
            assert _storescu(port, files).returncode == 0
        else:
            ids = [pacs.post("/instances", f.read_bytes())["ID"] for f in files]
            pacs.post("/modalities/node", {"AET": "NODE", "Host": "127.0.0.1", "Port": port}, method="PUT")
            answer = pacs.post("/modalities/node/store", {"Resources": ids, "Synchronous": True}, timeout=120)
            assert answer["FailedInstancesCount"] == 0, answer
        wait_for(
            lambda: [m for m in _modalities(pacs, study.study_uid) if m in ("SEG", "SR")] == ["SEG", "SEG", "SR"],
            timeout=300,
            what=f"two SEGs (PET, CT) and the SR in Orthanc\n{node.log_tail()}",
        )
        objects = [
            dcmread(BytesIO(pacs.get_bytes(f"/instances/{oid}/file")))
            for series in pacs.series_of_study(study.study_uid)
            if series["MainDicomTags"].get("Modality") in ("SEG", "SR")
            for oid in series["Instances"]
        ]
    finally:
        node.stop()
    assert evaluate(study, objects).failures() == []
