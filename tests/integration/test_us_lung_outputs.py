"""A synthetic lung-US cine file through load_us, the us_lung pipeline and the SEG/SR encoders.

Proves what a PACS gets back for a lung cine: a valid multi-frame SEG (dciodvfy, highdicom
read-back by source frame, masks padded back from the region crop) with rib / pleural-line /
B-line segments, and a TID 1500 SR carrying the pleural-line length and the B-line count.
"""

from __future__ import annotations

from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest

from dicom_node.findings import Category, Findings, Quantity
from dicom_node.imaging.volume import Volume
from dicom_node.outputs import encode
from dicom_node.pipelines.base import create
from dicom_node.synth.us_dicom import write_lung_cine
from dicom_node.synth.us_lung import LungPattern, Probe
from tests.peers.dicomcheck import dciodvfy, dsrdump

ACCEPTED = (r"Unrecognized defined term <99DICOMNODE>", r"attribute <Laterality>")
pytestmark = pytest.mark.slow  # runs the whole us_lung pipeline on a cine


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Volume, Findings, list[Path]]:
    folder = tmp_path_factory.mktemp("uslung")
    source = folder / "cine.dcm"
    write_lung_cine(source, 21, frames=5, size=(256, 256), pattern=LungPattern.B_LINES, probe=Probe.LINEAR)
    pipeline = create("us_lung")
    volume = pipeline.load([str(source)])
    findings = pipeline.run(volume, "cpu")
    assert findings.not_applicable is None, findings.not_applicable
    paths = []
    for k, ds in enumerate(encode(findings, volume, ["seg", "sr"])):
        path = folder / f"{k:02d}_{ds.Modality}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return source, volume, findings, paths


def test_objects_are_valid(run: tuple[Path, Volume, Findings, list[Path]]) -> None:
    import re

    _, _, _, paths = run
    assert [p.stem.split("_")[1] for p in paths] == ["SEG", "SR"]
    for path in paths:
        verdict = dciodvfy(path)
        assert verdict.errors == [], (path.name, verdict.errors)
        assert [w for w in verdict.warnings if not any(re.search(a, w) for a in ACCEPTED)] == []


def test_seg_round_trip_by_source_frame(run: tuple[Path, Volume, Findings, list[Path]]) -> None:
    source, volume, findings, paths = run
    seg = hd.seg.segread(paths[0])
    src = pydicom.dcmread(source, stop_before_pixels=True)
    numbers = [f for f in range(1, 6)]
    segments = list(range(1, len(findings.findings) + 1))
    pixels = seg.get_pixels_by_source_frame(
        str(src.SOPInstanceUID), source_frame_numbers=numbers, segment_numbers=segments
    )
    for i, finding in enumerate(findings.findings):
        assert np.array_equal(pixels[..., i].astype(bool), volume.uncrop(finding.mask))
        assert finding.mask.shape == volume.shape
    assert volume.crop is not None and not pixels[:, : volume.crop[0]].any()  # nothing in the text band
    cats = {f.category for f in findings.findings}
    assert {Category.PLEURAL_LINE, Category.B_LINE} <= cats


def test_sr_has_pleural_length_and_b_line_count(run: tuple[Path, Volume, Findings, list[Path]]) -> None:
    _, _, findings, paths = run
    pleura = next(f for f in findings.findings if f.category is Category.PLEURAL_LINE)
    length = pleura.measurement(Quantity.LENGTH)
    assert length is not None and length > 10.0
    text = dsrdump(paths[1], "+Pt", "+Pl")
    assert "TID 1500" in text
    assert f"{length:.1f}"[:3] in text
    assert "b_lines" in text or "B-line" in text


def test_orthanc_files_seg_and_sr_into_the_cine_study(run: tuple[Path, Volume, Findings, list[Path]]) -> None:
    from tests.peers.orthanc import OrthancPeer, orthanc_available
    from tests.peers.scu import c_store

    if not orthanc_available():
        pytest.skip("Orthanc is not installed")
    source, volume, _, paths = run
    datasets = [pydicom.dcmread(source)] + [pydicom.dcmread(p) for p in paths]
    with OrthancPeer(aet="USLUNGPACS") as pacs:
        assert c_store(datasets, pacs.dicom_port, called_aet=pacs.aet) == [0, 0, 0]
        series = pacs.series_of_study(str(volume.sources[0].StudyInstanceUID))
        assert {s["MainDicomTags"].get("Modality", "") for s in series} == {"US", "SEG", "SR"}
        stored = pacs.sop_instance_uids()
        assert {str(ds.SOPInstanceUID) for ds in datasets} <= stored


def _coded(items: object) -> list[tuple[str, str]]:
    """(concept name, value) code values of every CODE content item in an SR content tree."""
    pairs: list[tuple[str, str]] = []
    for item in items or []:  # type: ignore[attr-defined]
        if item.get("ValueType") == "CODE":
            pairs.append((item.ConceptNameCodeSequence[0].CodeValue, item.ConceptCodeSequence[0].CodeValue))
        pairs.extend(_coded(item.get("ContentSequence")))
    return pairs


def test_sr_result_is_the_coded_cine_class_not_abnormal_anatomy(run: tuple[Path, Volume, Findings, list[Path]]) -> None:
    _, _, findings, paths = run
    assert {Category.RIB, Category.PLEURAL_LINE} & {f.category for f in findings.findings}  # anatomy was found
    top = max((k for k in findings.classification if k != "abnormal"), key=lambda k: findings.classification[k])
    expected = {"normal": "17621005", "b_lines": "BLINE", "consolidation": "95436008", "effusion": "60046008"}[top]
    results = [value for name, value in _coded(pydicom.dcmread(paths[1]).ContentSequence) if name == "121071"]
    assert expected in results  # DCM "Finding" (also the finding type of each group): the cine's class
    assert "263654008" not in results  # never SNOMED CT "Abnormal" just because ribs / pleura were segmented


def test_sr_says_abnormal_type_uncertain_in_codes(run: tuple[Path, Volume, Findings, list[Path]]) -> None:
    import dataclasses

    _, volume, findings, _ = run
    uncertain = {"normal": 0.1, "b_lines": 0.4, "consolidation": 0.35, "effusion": 0.15, "abnormal": 0.9}
    sr = encode(dataclasses.replace(findings, classification=uncertain), volume, ["sr"])[0]
    results = [value for name, value in _coded(sr.ContentSequence) if name == "121071"]
    assert "263654008" in results  # SNOMED CT "Abnormal": abnormal, no class holds half of it
    assert "17621005" not in results and "95436008" not in results
