"""Result objects for real ultrasound: the 27-frame Philips cine (no frame of reference, cropped to its
US region) and a single-frame RGB image, with synthetic masks.

Same proof as for CT: dciodvfy without errors, highdicom read-back (masks by source frame), TID 1500
with SCOORD on the key frame, references resolve, Orthanc files everything into the source study.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset

from dicom_node.findings import Finding, Findings, Measurement
from dicom_node.imaging.volume import Volume
from dicom_node.outputs import encode
from tests.peers.dicomcheck import dciodvfy, dsrdump, referenced_uids, unlocated_groups
from tests.peers.dicomfiles import US_CLINICAL, US_PHANTOM, require
from tests.peers.orthanc import OrthancPeer, orthanc_available
from tests.peers.scu import c_store
from tests.peers.volumes import sphere, us_volume

ACCEPTED_WARNINGS: dict[str, str] = {
    r"Unrecognized defined term <SIEMENS_RIS>": "copied from the source Procedure Code Sequence (RIS code)",
    r"Unrecognized defined term <99DICOMNODE>": "our private coding scheme for concepts without a standard "
    "code (B-line artefact, frame class)",
    r"attribute <Laterality>": "PR/SC General Series Laterality (Type 2C) is empty = unknown",
}
IODS = {
    "SEG": "Segmentation",
    "SR": "Comprehensive3DSR",
    "PR": "(Grayscale|Color)SoftcopyPresentationState",
    "OT": "SCImage",
}
CINE = "philips_L12-5_cine27.dcm"


def disc(shape: tuple[int, int, int], frames: range, center: tuple[int, int], radius: tuple[int, int]) -> np.ndarray:
    mask = np.zeros(shape, dtype=bool)
    mask[frames.start : frames.stop] = sphere((1, *shape[1:]), (0, *center), (1, *radius))[0]
    return mask


@pytest.fixture(scope="module")
def cine() -> Volume:
    path = require(US_PHANTOM / CINE)
    region = pydicom.dcmread(path, stop_before_pixels=True).SequenceOfUltrasoundRegions[0]
    crop = (
        int(region.RegionLocationMinY0),
        int(region.RegionLocationMinX0),
        int(region.RegionLocationMaxY1) + 1,
        int(region.RegionLocationMaxX1) + 1,
    )
    return us_volume(path, crop=crop)


@pytest.fixture(scope="module")
def cine_findings(cine: Volume) -> Findings:
    return Findings(
        pipeline="us_lung",
        version="0.3.1",
        findings=[
            Finding("pleural_line", disc(cine.shape, range(0, 27), (120, 380), (6, 200)), score=0.97),
            Finding(
                "b_line",
                disc(cine.shape, range(4, 19), (330, 300), (180, 14)),
                measurements=[Measurement("length", 29.9)],
                score=0.81,
            ),
        ],
        classification={"b_lines": 0.81, "normal": 0.19},
        conclusions=["B-lines present"],
    )


@pytest.fixture(scope="module")
def single() -> Volume:
    return us_volume(require(US_CLINICAL / "US1_UNCR.dcm"))


@pytest.fixture(scope="module")
def single_findings(single: Volume) -> Findings:
    mask = sphere(single.shape, (0, 240, 300), (1, 50, 80))
    return Findings(
        "us_lung",
        "0.3.1",
        [Finding("consolidation", mask, evaluations={"frame_class": "consolidation"}, laterality="left")],
    )


def write(objs: list[Dataset], folder: Path) -> list[Path]:
    paths = []
    for k, ds in enumerate(objs):
        path = folder / f"{k:02d}_{ds.Modality}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


@pytest.fixture(scope="module")
def cine_files(cine: Volume, cine_findings: Findings, tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    return write(encode(cine_findings, cine, ["seg", "sr", "gsps", "overlay"]), tmp_path_factory.mktemp("cine"))


@pytest.fixture(scope="module")
def single_files(single: Volume, single_findings: Findings, tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    objs = encode(single_findings, single, ["seg", "sr", "gsps", "overlay"])
    return write(objs, tmp_path_factory.mktemp("single"))


@pytest.fixture(scope="module")
def pacs() -> Iterator[OrthancPeer]:
    if not orthanc_available():
        pytest.skip("Orthanc is not installed")
    with OrthancPeer(aet="USPACS") as peer:
        yield peer


def by_modality(paths: list[Path], modality: str) -> list[Path]:
    return [p for p in paths if p.stem.endswith(modality)]


@pytest.mark.parametrize("which", ["cine_files", "single_files"])
def test_dciodvfy_reports_no_errors(which: str, request: pytest.FixtureRequest) -> None:
    import re

    paths: list[Path] = request.getfixturevalue(which)
    assert sorted({p.stem.split("_")[1] for p in paths}) == ["OT", "PR", "SEG", "SR"]
    for path in paths:
        verdict = dciodvfy(path)
        assert re.fullmatch(IODS[path.stem.split("_")[1]], verdict.iod), verdict.iod
        assert verdict.errors == [], (path.name, verdict.errors)
        assert verdict.unexplained(ACCEPTED_WARNINGS) == [], (path.name, verdict.warnings)


def test_cine_seg_round_trip(cine_files: list[Path], cine: Volume, cine_findings: Findings) -> None:
    seg = hd.seg.segread(by_modality(cine_files, "SEG")[0])
    assert "FrameOfReferenceUID" not in seg
    source = cine.sources[0]
    pixels = seg.get_pixels_by_source_frame(
        str(source.SOPInstanceUID),
        source_frame_numbers=list(range(1, 28)),
        segment_numbers=[1, 2],
        assert_missing_frames_are_empty=True,
    )
    for i, finding in enumerate(cine_findings.findings):
        assert np.array_equal(pixels[..., i].astype(bool), cine.uncrop(finding.mask))  # padded back from crop
    expected = sum(int(f.mask[k].any()) for f in cine_findings.findings for k in range(27))
    assert int(seg.NumberOfFrames) == expected  # empty frames left out
    for item in seg.PerFrameFunctionalGroupsSequence:
        ref = item.DerivationImageSequence[0].SourceImageSequence[0]
        assert ref.ReferencedSOPClassUID == source.SOPClassUID
        assert ref.ReferencedSOPInstanceUID == source.SOPInstanceUID
        assert item.FrameContentSequence[0].TemporalPositionIndex == ref.ReferencedFrameNumber


def test_single_frame_seg_round_trip(single_files: list[Path], single: Volume, single_findings: Findings) -> None:
    seg = hd.seg.segread(by_modality(single_files, "SEG")[0])
    pixels = seg.get_pixels_by_source_instance([str(single.sources[0].SOPInstanceUID)], segment_numbers=[1])
    assert np.array_equal(pixels[..., 0].astype(bool), single_findings.findings[0].mask)
    assert seg.SegmentSequence[0].SegmentedPropertyTypeCodeSequence[0].CodeValue == "95436008"


def test_cine_sr_round_trip(cine_files: list[Path], cine: Volume, cine_findings: Findings) -> None:
    path = by_modality(cine_files, "SR")[0]
    sr = hd.sr.srread(path)
    seg = pydicom.dcmread(by_modality(cine_files, "SEG")[0])
    volumetric = sr.content.get_volumetric_roi_measurement_groups()
    boxes = sr.content.get_planar_roi_measurement_groups()[::2]  # per finding the box OHIF tracks, then
    planar = sr.content.get_planar_roi_measurement_groups()[1::2]  # the outline with the planar measurements
    assert len(boxes) == len(planar) and all(len(np.asarray(b.roi.value)) == 5 for b in boxes)
    assert len(volumetric) == len(planar) == 2
    for i, (vg, pg) in enumerate(zip(volumetric, planar, strict=True)):
        finding = cine_findings.findings[i]
        assert vg.tracking_uid == pg.tracking_uid == str(seg.SegmentSequence[i].TrackingUID)
        assert vg.referenced_segment.referenced_segment_numbers == [i + 1]
        src = pg.roi.ContentSequence[0].ReferencedSOPSequence[0]
        assert src.ReferencedFrameNumber == cine.frame_numbers[finding.key_slice]  # key frame of the cine
        data = np.asarray(pg.roi.value)
        r0, c0, _, _ = cine.crop  # outline is in stored-image coordinates, not crop coordinates
        rows, cols = np.nonzero(finding.mask[finding.key_slice])
        assert data[:, 1].min() >= rows.min() + r0 - 1 and data[:, 0].max() <= cols.max() + c0 + 2
    length = [m for m in planar[1].get_measurements() if m.name.meaning == "Length"]
    assert length and float(length[0].value) == pytest.approx(29.9)
    text = dsrdump(path, "+Pt", "+Pl")
    assert "TID 1500 (DCMR)" in text and "Classification: b_lines 0.81, normal 0.19" in text
    assert unlocated_groups(pydicom.dcmread(path)) == []
    assert referenced_uids(pydicom.dcmread(path)) <= {
        str(cine.sources[0].SOPInstanceUID),
        str(seg.SOPInstanceUID),
    }


def test_no_findings_and_not_applicable_are_reported(single: Volume, tmp_path: Path) -> None:
    nothing = encode(Findings("us_lung", "0.3.1", []), single, ["seg", "sr", "gsps", "overlay"])
    assert [d.Modality for d in nothing] == ["SR", "PR", "OT"]  # no SEG without a mask
    refused = encode(
        Findings("us_lung", "0.3.1", [], not_applicable="does not look like lung ultrasound"), single, ["sr"]
    )
    for objs, expected in ((nothing, '(111286,DCM,"No abnormality")'), (refused, "Not applicable: does not")):
        paths = write(objs, _mk(tmp_path, expected))
        sr_path = by_modality(paths, "SR")[0]
        text = dsrdump(sr_path)
        assert expected[:30] in text
        assert unlocated_groups(pydicom.dcmread(sr_path)) == []  # no "AI result" group without a region
        assert 'CONTAINER:(,,"Qualitative Evaluations")' in text
        for p in paths:
            assert dciodvfy(p).errors == []


def _mk(root: Path, name: str) -> Path:
    folder = root / str(abs(hash(name)))
    folder.mkdir()
    return folder


def test_orthanc_files_results_into_source_study(
    pacs: OrthancPeer, cine_files: list[Path], single_files: list[Path], cine: Volume, single: Volume
) -> None:
    for files, volume, source_path in (
        (cine_files, cine, US_PHANTOM / CINE),
        (single_files, single, US_CLINICAL / "US1_UNCR.dcm"),
    ):
        datasets = [pydicom.dcmread(source_path)] + [pydicom.dcmread(p) for p in files]
        assert c_store(datasets, pacs.dicom_port, called_aet=pacs.aet) == [0] * len(datasets)
        series = pacs.series_of_study(str(volume.sources[0].StudyInstanceUID))
        modalities = {s["MainDicomTags"].get("Modality", "") for s in series}
        assert {"US", "SEG", "SR", "PR", "OT"} <= modalities
        stored = pacs.sop_instance_uids()
        for ds in datasets[1:]:
            assert str(ds.SOPInstanceUID) in stored
            assert referenced_uids(ds) <= stored


def test_cine_gsps_and_overlays_reference_key_frames(
    cine_files: list[Path], cine: Volume, cine_findings: Findings
) -> None:
    key_frames = {cine.frame_numbers[f.key_slice] for f in cine_findings.findings}  # type: ignore[index]
    pr = pydicom.dcmread(by_modality(cine_files, "PR")[0])
    annotated = {int(a.ReferencedImageSequence[0].ReferencedFrameNumber) for a in pr.GraphicAnnotationSequence}
    assert annotated == key_frames
    overlays = [pydicom.dcmread(p) for p in by_modality(cine_files, "OT")]
    assert {int(o.SourceImageSequence[0].ReferencedFrameNumber) for o in overlays} == key_frames
    for o in overlays:
        assert (o.Rows, o.Columns) == (600, 800) and o.BurnedInAnnotation == "YES"
