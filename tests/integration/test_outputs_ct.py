"""Result objects for a real 12-slice chest CT slab with two synthetic nodules and a lung mask.

Proof for every object kind (issue 3): dciodvfy without errors (accepted warnings listed with their
reason), highdicom read-back with equal masks / values / codes, dcmtk dsrdump identifies TID 1500,
every reference resolves, Orthanc accepts everything over C-STORE and files it into the source study,
and the structure matches the dcmqi and highdicom reference objects where the standard allows one.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes as std
from scipy import ndimage

from dicom_node.findings import Evaluation, Finding, Findings, Measurement
from dicom_node.imaging.volume import Volume
from dicom_node.outputs import encode, kind_of
from dicom_node.outputs.codes import LUNG
from dicom_node.outputs.sr import significant
from tests.peers.dicomcheck import dciodvfy, dsrdump, keywords, referenced_uids, unlocated_groups
from tests.peers.dicomfiles import CT_LIDC_SLAB, REAL, SEGSR_DCMQI, SEGSR_HIGHDICOM, require
from tests.peers.orthanc import OrthancPeer, orthanc_available
from tests.peers.scu import c_store
from tests.peers.volumes import ct_volume, sphere

ACCEPTED_WARNINGS: dict[str, str] = {
    r"needed to build DICOMDIR - Study (Time|ID)": "the LIDC source has no Study Time / Study ID; the "
    "identity is copied, not invented",
    r"Unrecognized defined term <99DICOMNODE>": "our private coding scheme for concepts without a standard "
    "code (nodule composition)",
    r"attribute <Laterality>": "PR/SC General Series Laterality (Type 2C) is empty = unknown: a result "
    "series may cover both lungs",
}

PIPELINE, VERSION = "ct_lung_nodule", "1.2.0"


def lung_mask(volume: Volume) -> np.ndarray:
    """Air inside the body: air components that do not touch the image border, per slice."""
    out = np.zeros(volume.shape, dtype=bool)
    for k in range(volume.shape[0]):
        labels, _ = ndimage.label(volume.pixels[k] < -400)
        border = set(np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]])))
        out[k] = np.isin(labels, [v for v in np.unique(labels) if v and v not in border])
    return out


def nodule(
    volume: Volume, center: tuple[float, float, float], radius_mm: float, category: str = "nodule", **kw: object
) -> Finding:
    dz, dy, dx = volume.spacing
    mask = sphere(volume.shape, center, (radius_mm / dz, radius_mm / dy, radius_mm / dx))
    voxel = dz * dy * dx
    hu = float(volume.pixels[mask].mean())
    widths = [int(np.any(mask, axis=(0, 1)).sum()) * dx, int(np.any(mask, axis=(0, 2)).sum()) * dy]
    return Finding(
        category=category,
        mask=mask,
        measurements=[
            Measurement("long_axis", round(max(widths), 2)),
            Measurement("short_axis", round(min(widths), 2)),
            Measurement("volume", round(float(mask.sum()) * voxel, 1)),
            Measurement("mean_hu", round(hu, 1)),
        ],
        **kw,  # type: ignore[arg-type]
    )


@pytest.fixture(scope="module")
def volume() -> Volume:
    return ct_volume(require(CT_LIDC_SLAB / "dicom"))


@pytest.fixture(scope="module")
def findings(volume: Volume) -> Findings:
    return Findings(
        pipeline=PIPELINE,
        version=VERSION,
        findings=[
            nodule(
                volume,
                (5, 300, 200),
                6.0,
                laterality="right",
                score=0.91,
                evaluations={"malignancy_likelihood": "high", "composition": "solid"},
            ),
            nodule(
                volume,
                (8, 330, 350),
                16.0,
                category="mass",  # 32 mm: a mass, not a nodule (issue 16)
                laterality="left",
                score=0.64,
                evaluations={"malignancy_likelihood": "low"},
            ),
            Finding(category="lung", mask=lung_mask(volume), laterality="both"),
        ],
        conclusions=["1 lung nodule", "1 lung mass"],
    )


@pytest.fixture(scope="module")
def written(volume: Volume, findings: Findings, tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[Path]]:
    out = tmp_path_factory.mktemp("ct_outputs")
    by_kind: dict[str, list[Path]] = {}
    for k, ds in enumerate(encode(findings, volume, ["seg", "sr", "gsps", "overlay"])):
        kind = {"SEG": "seg", "SR": "sr", "PR": "gsps", "OT": "overlay"}[str(ds.Modality)]
        path = out / f"{k:02d}_{kind}.dcm"
        ds.save_as(path, enforce_file_format=True)
        by_kind.setdefault(kind, []).append(path)
    return by_kind


@pytest.fixture(scope="module")
def pacs() -> Iterator[OrthancPeer]:
    if not orthanc_available():
        pytest.skip("Orthanc is not installed")
    with OrthancPeer(aet="PACS") as peer:
        yield peer


def read(paths: list[Path]) -> list[Dataset]:
    return [pydicom.dcmread(p) for p in paths]


def test_every_kind_is_written(written: dict[str, list[Path]], findings: Findings) -> None:
    assert sorted(written) == ["gsps", "overlay", "seg", "sr"]
    assert len(written["seg"]) == len(written["sr"]) == len(written["gsps"]) == 1
    key_slices = {f.key_slice for f in findings.findings}
    assert len(written["overlay"]) == len(key_slices)


@pytest.mark.parametrize("kind", ["seg", "sr", "gsps", "overlay"])
def test_dciodvfy_reports_no_errors(written: dict[str, list[Path]], kind: str) -> None:
    expected_iod = {
        "seg": "Segmentation",
        "sr": "Comprehensive3DSR",
        "gsps": "GrayscaleSoftcopyPresentationState",
        "overlay": "SCImage",
    }[kind]
    for path in written[kind]:
        verdict = dciodvfy(path)
        assert verdict.iod == expected_iod
        assert verdict.errors == [], verdict.errors
        assert verdict.unexplained(ACCEPTED_WARNINGS) == [], verdict.warnings


def test_seg_round_trip(written: dict[str, list[Path]], volume: Volume, findings: Findings) -> None:
    seg = hd.seg.segread(written["seg"][0])
    assert seg.SegmentationType == "BINARY"
    assert seg.FrameOfReferenceUID == volume.sources[0].FrameOfReferenceUID
    uids = [str(s.SOPInstanceUID) for s in volume.sources]
    pixels = seg.get_pixels_by_source_instance(
        source_sop_instance_uids=uids, segment_numbers=[1, 2, 3], assert_missing_frames_are_empty=True
    )
    for i, finding in enumerate(findings.findings):
        assert np.array_equal(pixels[..., i].astype(bool), finding.mask), f"segment {i + 1} differs"
    # empty frames are left out: one frame per (slice, segment) with mask pixels, no more
    expected_frames = sum(int(f.mask[k].any()) for f in findings.findings for k in range(volume.shape[0]))
    assert int(seg.NumberOfFrames) == expected_frames
    # each frame references its own source slice, at that slice's exact position
    position = {str(s.SOPInstanceUID): [float(v) for v in s.ImagePositionPatient] for s in volume.sources}
    for item in seg.PerFrameFunctionalGroupsSequence:
        src = item.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        ipp = [float(v) for v in item.PlanePositionSequence[0].ImagePositionPatient]
        assert np.allclose(ipp, position[src], atol=1e-4)
    # segments: standard codes, algorithm = pipeline and version
    descriptions = seg.SegmentSequence
    assert descriptions[0].SegmentedPropertyTypeCodeSequence[0].CodeValue == std.SCT.Nodule.value
    assert descriptions[0].SegmentedPropertyCategoryCodeSequence[0].CodeValue == "49755003"
    assert descriptions[1].SegmentedPropertyTypeCodeSequence[0].CodeValue == std.SCT.Mass.value == "4147007"
    assert descriptions[2].SegmentedPropertyTypeCodeSequence[0].CodeValue == LUNG.value
    for d in descriptions:
        assert len(d.RecommendedDisplayCIELabValue) == 3  # OHIF warns about segments without a colour
        assert d.SegmentAlgorithmType == "AUTOMATIC"
        assert d.SegmentAlgorithmName == PIPELINE
        assert d.SegmentationAlgorithmIdentificationSequence[0].AlgorithmVersion == VERSION


def test_sr_round_trip(written: dict[str, list[Path]], findings: Findings, volume: Volume) -> None:
    sr = hd.sr.srread(written["sr"][0])
    seg = pydicom.dcmread(written["seg"][0])
    volumetric = sr.content.get_volumetric_roi_measurement_groups()
    boxes = sr.content.get_planar_roi_measurement_groups()[::2]  # per finding the box OHIF tracks, then
    planar = sr.content.get_planar_roi_measurement_groups()[1::2]  # the outline with the planar measurements
    assert len(boxes) == len(planar) and all(len(np.asarray(b.roi.value)) == 5 for b in boxes)
    assert len(volumetric) == 3 and len(planar) == 3
    tracking = {str(d.TrackingUID): int(d.SegmentNumber) for d in seg.SegmentSequence}
    source_uids = {str(s.SOPInstanceUID) for s in volume.sources}
    for i, (vg, pg) in enumerate(zip(volumetric, planar, strict=True)):
        finding = findings.findings[i]
        assert vg.tracking_uid == pg.tracking_uid  # one finding, two groups, one tracking UID
        assert tracking[vg.tracking_uid] == i + 1  # ... and the SEG segment carries the same UID
        ref = vg.referenced_segment
        assert ref.referenced_sop_instance_uid == seg.SOPInstanceUID
        assert ref.referenced_segment_numbers == [i + 1]
        got: dict[str, tuple[float, str]] = {}
        for group in (vg, pg):
            for m in group.get_measurements():
                got[m.name.meaning] = (float(m.value), m.unit.value)
        for m in finding.measurements:
            name = {
                "long_axis": "Long axis",
                "short_axis": "Short axis",
                "volume": "Volume",
                "mean_hu": "Attenuation Coefficient",
            }[m.quantity.value]
            assert got[name] == (pytest.approx(significant(m.value)), m.unit)
        # the score is the detection confidence (DCM "Certainty of Finding", %), not a bare "Probability"
        assert got["Certainty of Finding"] == (pytest.approx(round(finding.score * 100, 1)), "%")
        assert "Probability" not in got
        if finding.category == "mass":
            assert vg.finding_type.value == std.SCT.Mass.value and pg.finding_type.value == std.SCT.Mass.value
        site = vg.finding_sites[0]
        assert site.value == LUNG
        evaluations = {q.name.value: q.value.meaning for q in vg.get_qualitative_evaluations()}
        if Evaluation.MALIGNANCY_LIKELIHOOD in finding.evaluations:
            assert evaluations["111047"] == finding.evaluations[Evaluation.MALIGNANCY_LIKELIHOOD].capitalize()
        # planar region: a closed polyline on the key slice
        region = pg.roi
        assert region is not None and region.graphic_type.value == "POLYLINE"
        data = np.asarray(region.value)
        assert np.array_equal(data[0], data[-1]) and len(data) >= 4
        src = region.ContentSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID
        assert src == str(volume.sources[finding.key_slice].SOPInstanceUID)
        assert src in source_uids
        rows = data[:, 1] - 0.5
        cols = data[:, 0] - 0.5
        on = finding.mask[finding.key_slice]
        r, c = np.nonzero(on)
        assert rows.min() >= r.min() - 1 and rows.max() <= r.max() + 1
        assert cols.min() >= c.min() - 1 and cols.max() <= c.max() + 1


def test_sr_is_tid1500_and_references_resolve(written: dict[str, list[Path]], volume: Volume) -> None:
    text = dsrdump(written["sr"][0], "+Pt")
    root = next(line for line in text.splitlines() if line.startswith("<CONTAINER"))
    assert root.endswith("# TID 1500 (DCMR)") and "Imaging Measurement Report" in root
    assert text.count("# TID 1411") == 3 and text.count("# TID 1410") == 6  # per finding: the box OHIF tracks + outline
    assert 'CODE:(,,"Finding")=(111286' not in text  # something was found
    assert '"AI result"' not in text  # the overall result is document-level, not a measurement group
    assert 'CONTAINER:(,,"Qualitative Evaluations")' in text and 'CODE:(,,"Finding")=(263654008' in text
    sr = pydicom.dcmread(written["sr"][0])
    seg = pydicom.dcmread(written["seg"][0])
    sources = {str(s.SOPInstanceUID) for s in volume.sources}
    assert referenced_uids(seg) <= sources
    assert referenced_uids(sr) <= sources | {str(seg.SOPInstanceUID)}
    assert str(seg.SOPInstanceUID) in referenced_uids(sr)
    for path in written["gsps"] + written["overlay"]:
        assert referenced_uids(pydicom.dcmread(path)) <= sources


def test_every_measurement_group_is_located(written: dict[str, list[Path]]) -> None:
    sr = pydicom.dcmread(written["sr"][0])
    assert unlocated_groups(sr) == []


def test_identity_copied_and_new_series(written: dict[str, list[Path]], volume: Volume) -> None:
    src = volume.sources[0]
    series = set()
    for paths in written.values():
        for ds in read(paths):
            for kw in ("PatientID", "PatientName", "StudyInstanceUID", "AccessionNumber", "StudyDate"):
                assert ds.get(kw) == src.get(kw), kw
            assert ds.SeriesInstanceUID != src.SeriesInstanceUID
            series.add(str(ds.SeriesInstanceUID))
    assert len(series) == 4
    overlay = read(written["overlay"])[0]
    assert overlay.BurnedInAnnotation == "YES"
    assert "NOT FOR DIAGNOSIS" in overlay.SeriesDescription.upper()


def test_deterministic_uids(volume: Volume, findings: Findings, written: dict[str, list[Path]]) -> None:
    again = encode(findings, volume, ["seg", "sr", "gsps", "overlay"])
    first = [ds for paths in written.values() for ds in read(paths)]
    assert sorted(str(d.SOPInstanceUID) for d in again) == sorted(str(d.SOPInstanceUID) for d in first)
    assert {str(d.SeriesInstanceUID) for d in again} == {str(d.SeriesInstanceUID) for d in first}
    other = Findings(PIPELINE, "1.3.0", findings.findings)
    changed = encode(other, volume, ["seg", "sr"])
    assert not {str(d.SOPInstanceUID) for d in changed} & {str(d.SOPInstanceUID) for d in first}


def test_orthanc_accepts_and_files_into_source_study(
    pacs: OrthancPeer, written: dict[str, list[Path]], volume: Volume
) -> None:
    sources = [pydicom.dcmread(p) for p in sorted((CT_LIDC_SLAB / "dicom").glob("*.dcm"))]
    results = [ds for paths in written.values() for ds in read(paths)]
    assert c_store(sources + results, pacs.dicom_port, called_aet=pacs.aet) == [0] * (len(sources) + len(results))
    series = pacs.series_of_study(str(volume.sources[0].StudyInstanceUID))
    modalities = sorted(s["MainDicomTags"].get("Modality", "") for s in series)
    assert modalities == ["CT", "OT", "PR", "SEG", "SR"]
    stored = pacs.sop_instance_uids()
    assert {str(d.SOPInstanceUID) for d in results} <= stored
    for ds in results:  # every reference resolves inside the PACS
        assert referenced_uids(ds) <= stored


def test_structure_matches_reference_objects(written: dict[str, list[Path]]) -> None:
    ours_seg = pydicom.dcmread(written["seg"][0])
    for ref_path in (
        SEGSR_DCMQI / "seg" / "liver_dcmqi.dcm",
        SEGSR_HIGHDICOM / "seg" / "seg_image_ct_binary.dcm",
    ):
        ref = pydicom.dcmread(require(ref_path))
        # every segment attribute and per-frame functional group of the references is in ours
        assert keywords(ref.SegmentSequence) - {"RecommendedDisplayCIELabValue"} <= keywords(ours_seg.SegmentSequence)
        assert keywords(ref.PerFrameFunctionalGroupsSequence) <= keywords(ours_seg.PerFrameFunctionalGroupsSequence)
        assert keywords(ref.SharedFunctionalGroupsSequence) <= keywords(ours_seg.SharedFunctionalGroupsSequence)
        assert ref.SegmentationType == ours_seg.SegmentationType == "BINARY"
    # the dcmqi TID 1500 groups and ours share the same row structure for a segment-based group
    ref_text = (SEGSR_DCMQI / "sr" / "tid1500_dcmqi_result.dsrdump.txt").read_text()
    ours = dsrdump(written["sr"][0])
    for row in (
        '(,,"Tracking Identifier")',
        '(,,"Tracking Unique Identifier")',
        'CODE:(,,"Finding")',
        'IMAGE:(,,"Referenced Segment")',
        'UIDREF:(,,"Source series for segmentation")',
        'CODE:(,,"Finding Site")',
        'NUM:(,,"Attenuation Coefficient")',
        'CODE:(,,"Derivation")',
        'CONTAINER:(,,"Image Library")',
    ):
        assert row.lower() in ref_text.lower() and row.lower() in ours.lower(), row


def test_gsps_draws_each_finding_on_its_key_image(
    written: dict[str, list[Path]], findings: Findings, volume: Volume
) -> None:
    pr = pydicom.dcmread(written["gsps"][0])
    assert pr.SOPClassUID == "1.2.840.10008.5.1.4.1.1.11.1"
    assert pr.SoftcopyVOILUTSequence[0].WindowCenter == -600  # lung window for CT
    drawn: dict[str, int] = {}
    for annotation in pr.GraphicAnnotationSequence:
        (ref,) = annotation.ReferencedImageSequence
        assert annotation.GraphicLayer == "AI"
        for graphic in annotation.GraphicObjectSequence:
            assert graphic.GraphicType == "POLYLINE" and graphic.GraphicAnnotationUnits == "PIXEL"
            data = np.asarray(graphic.GraphicData, dtype=float).reshape(-1, 2)
            assert np.array_equal(data[0], data[-1])
            drawn[str(ref.ReferencedSOPInstanceUID)] = drawn.get(str(ref.ReferencedSOPInstanceUID), 0) + 1
        labels = [t.UnformattedTextValue for t in annotation.TextObjectSequence]
        assert all(label for label in labels) and len(labels) == len(annotation.GraphicObjectSequence)
    expected: dict[str, int] = {}
    for f in findings.findings:
        uid = str(volume.sources[f.key_slice].SOPInstanceUID)
        expected[uid] = expected.get(uid, 0) + 1
    assert drawn == expected


def test_overlay_has_the_outline_burned_in(written: dict[str, list[Path]], findings: Findings, volume: Volume) -> None:
    first = findings.findings[0]
    overlays = {str(ds.SourceImageSequence[0].ReferencedSOPInstanceUID): ds for ds in read(written["overlay"])}
    ds = overlays[str(volume.sources[first.key_slice].SOPInstanceUID)]
    assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.7" and ds.PhotometricInterpretation == "RGB"
    rgb = ds.pixel_array.astype(int)
    yellow = np.all(rgb == np.array([255, 215, 0]), axis=-1)
    rows, cols = np.nonzero(first.mask[first.key_slice])
    box = yellow[rows.min() - 2 : rows.max() + 3, cols.min() - 2 : cols.max() + 3]
    assert box.sum() > 20  # the nodule's outline is drawn around the nodule
    inner = ndimage.binary_erosion(first.mask[first.key_slice], iterations=3)
    assert inner.any() and not yellow[inner].any()  # an outline, not a filled blob


def test_kind_of_names_every_object(written: dict[str, list[Path]]) -> None:
    for kind, paths in written.items():
        for ds in read(paths):
            assert kind_of(ds) == kind
    with pytest.raises(ValueError):
        kind_of(pydicom.dcmread(next((CT_LIDC_SLAB / "dicom").glob("*.dcm"))))


def test_orthanc_peer_restarts_on_same_ports_and_storage(pacs: OrthancPeer) -> None:
    before = set(pacs.instances())
    ports = (pacs.dicom_port, pacs.http_port)
    pacs.stop()
    assert not pacs.running
    with pytest.raises(OSError):
        pacs.get("/system", timeout=1.0)
    pacs.start()
    assert (pacs.dicom_port, pacs.http_port) == ports and set(pacs.instances()) == before


REAL_CHESTS = sorted(p.parent.name for p in (REAL / "ct_lung_pet_ct_dx").glob("*/dicom"))


@pytest.mark.parametrize("case", REAL_CHESTS or ["(none: ../shared missing)"])
def test_every_object_for_every_real_chest_passes_dciodvfy(case: str, tmp_path: Path) -> None:
    """What the real sources carry is copied with care (issue 21): the Lung-PET-CT-Dx CT has a
    ReferencedStudySequence item without its class UID, which made every result fail dciodvfy."""
    folder = REAL / "ct_lung_pet_ct_dx" / case / "dicom"
    volume = ct_volume(require(folder))
    k, h, w = volume.shape
    found = Findings(
        pipeline=PIPELINE,
        version=VERSION,
        findings=[nodule(volume, (k // 2, h // 2, w // 3), 8.0, laterality="right", score=0.8)],
    )
    for i, ds in enumerate(encode(found, volume, ["seg", "sr", "gsps", "overlay"])):
        path = tmp_path / f"{i:02d}_{ds.Modality}.dcm"
        ds.save_as(path, enforce_file_format=True)
        verdict = dciodvfy(path)
        assert not verdict.errors, (case, str(ds.Modality), verdict.errors)


def test_sources_without_type_2_attributes_still_give_valid_results(findings: Findings, tmp_path: Path) -> None:
    """A modality that leaves Type 2 patient, study and series attributes out entirely (PatientID,
    PatientBirthDate, StudyDate, SeriesNumber...) no longer makes every result fail to encode: they are
    written empty ("unknown"), and each object still passes dciodvfy without errors."""
    from dicom_node.outputs.common import TYPE2_SOURCE_ATTRIBUTES

    bare = ct_volume(require(CT_LIDC_SLAB / "dicom"))
    for ds in bare.sources:
        for kw in TYPE2_SOURCE_ATTRIBUTES:
            if kw in ds:
                delattr(ds, kw)
    outputs = encode(findings, bare, ["seg", "sr", "gsps", "overlay"])
    assert sorted({str(ds.Modality) for ds in outputs}) == ["OT", "PR", "SEG", "SR"]
    for k, ds in enumerate(outputs):
        assert "PatientID" in ds and not ds.PatientID and "StudyDate" in ds and not ds.StudyDate
        path = tmp_path / f"{k:02d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        verdict = dciodvfy(path)
        assert verdict.errors == [], (ds.Modality, verdict.errors)
