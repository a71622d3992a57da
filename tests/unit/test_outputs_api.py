"""Unit tests of dicom_node.outputs on a tiny in-memory CT: API contract, codes, UIDs, outlines, preview."""

from __future__ import annotations

import io

import highdicom as hd
import numpy as np
import pytest
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.uid import UID

from dicom_node.findings import Category, Evaluation, Finding, Findings, Laterality, Quantity
from dicom_node.imaging.volume import Volume
from dicom_node.outputs import EncodeOptions, codes, encode, kind_of, render_preview
from dicom_node.outputs.contours import outline
from dicom_node.outputs.preview import COLORS
from dicom_node.outputs.uids import derive_uid
from tests.peers.volumes import sphere, synthetic_ct


@pytest.fixture
def ct() -> Volume:
    return synthetic_ct()


def two_findings(volume: Volume) -> Findings:
    a = np.zeros(volume.shape, dtype=bool)
    a[1:3, 4:10, 4:12] = True
    b = sphere(volume.shape, (2, 22, 22), (1, 4, 4))
    return Findings(
        "toy",
        "1.0",
        [
            Finding("nodule", a, laterality="right", score=0.8),
            Finding("nodule", b, laterality="left", score=0.4),
        ],
    )


def test_unknown_kind_is_a_clear_error(ct: Volume) -> None:
    with pytest.raises(ValueError, match=r"unknown output kind.*'pdf'.*known kinds"):
        encode(two_findings(ct), ct, ["seg", "pdf"])


def test_mask_of_wrong_shape_is_refused(ct: Volume) -> None:
    bad = Findings("toy", "1.0", [Finding("nodule", np.ones((2, 8, 8), dtype=bool))])
    with pytest.raises(ValueError, match="differs from volume shape"):
        encode(bad, ct, ["seg"])


def test_kinds_order_and_series_numbers(ct: Volume) -> None:
    objs = encode(two_findings(ct), ct, ["overlay", "gsps", "sr", "seg"], series_number=700)
    assert [o.Modality for o in objs] == ["SEG", "SR", "PR", "OT", "OT"]
    assert [int(o.SeriesNumber) for o in objs] == [700, 701, 702, 703, 703]
    assert [o.Modality for o in encode(two_findings(ct), ct, ["sr"])] == ["SR"]
    assert encode(two_findings(ct), ct, []) == []


def test_every_vocabulary_member_has_a_code() -> None:
    standard = {"SCT", "DCM", "UCUM", "LN"}
    for cat in Category:
        category, prop = codes.category_codes(cat)
        assert category.scheme_designator == "SCT"
        assert prop.scheme_designator in standard or prop in codes.LOCAL_CODES.values()
    for q in Quantity:
        name, _ = codes.quantity_code(q)
        assert name.scheme_designator in standard or name in codes.LOCAL_CODES.values()
    for e in Evaluation:
        assert codes.evaluation_code(e).value
    for lat in Laterality:
        assert codes.laterality_code(lat).scheme_designator == "SCT"
    assert codes.evaluation_value_code("High").value == "75540009"
    local = codes.evaluation_value_code("part solid")
    assert (local.scheme_designator, local.value) == (codes.LOCAL_SCHEME, "PART_SOLID")
    assert codes.unit_code("mm3").meaning == "cubic millimeter"


def test_uids_are_deterministic_and_valid() -> None:
    a = derive_uid(["1.2.3", "1.2.4"], "p", "1", "seg")
    assert a == derive_uid(["1.2.4", "1.2.3"], "p", "1", "seg")  # order of sources does not matter
    others = {
        derive_uid(["1.2.3", "1.2.4"], "p", "2", "seg"),
        derive_uid(["1.2.3", "1.2.4"], "p", "1", "sr"),
        derive_uid(["1.2.3", "1.2.4"], "p", "1", "seg", 1),
        derive_uid(["1.2.3"], "p", "1", "seg"),
    }
    assert a not in others and len(others) == 4
    assert UID(a).is_valid and a.startswith("2.25.") and len(a) <= 64
    with pytest.raises(ValueError):
        derive_uid([], "p", "1", "seg")


def test_outline_of_a_rectangle() -> None:
    mask = np.zeros((20, 30), dtype=bool)
    mask[5:10, 8:20] = True  # rows 5..9, columns 8..19
    pts = outline(mask)
    assert pts is not None and np.array_equal(pts[0], pts[-1])
    # DICOM pixel coordinates: pixel centres at +0.5; the contour runs half a pixel outside the centres
    assert pts[:, 0].min() == pytest.approx(8.0, abs=0.6) and pts[:, 0].max() == pytest.approx(20.0, abs=0.6)
    assert pts[:, 1].min() == pytest.approx(5.0, abs=0.6) and pts[:, 1].max() == pytest.approx(10.0, abs=0.6)
    assert outline(np.zeros((5, 5), dtype=bool)) is None
    single = np.zeros((5, 5), dtype=bool)
    single[2, 3] = True
    dot = outline(single)
    assert dot is not None and len(dot) >= 4
    big = sphere((1, 200, 200), (0, 100, 100), (1, 80, 60))[0]
    assert len(outline(big, max_points=16)) <= 16  # type: ignore[arg-type]


def test_preview_is_a_png_with_outlines(ct: Volume) -> None:
    findings = two_findings(ct)
    png = render_preview(findings, ct)
    image = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))
    assert image.shape == (32, 32, 3)
    nodule = np.array(COLORS[Category.NODULE])
    assert (np.abs(image.astype(int) - nodule).sum(axis=-1) == 0).sum() > 10  # outline drawn in its colour
    empty = render_preview(Findings("toy", "1.0", []), ct)
    assert empty.startswith(b"\x89PNG")


def test_labelmap_option(ct: Volume) -> None:
    findings = two_findings(ct)
    seg = encode(findings, ct, ["seg"], options=EncodeOptions(seg_type="LABELMAP"))[0]
    assert seg.SegmentationType == "LABELMAP"
    assert kind_of(seg) == "seg"  # the worker files it under its kind (Label Map Segmentation Storage)
    back = hd.seg.Segmentation.from_dataset(seg)
    uids = [str(s.SOPInstanceUID) for s in ct.sources]
    pixels = back.get_pixels_by_source_instance(uids, segment_numbers=[1, 2], assert_missing_frames_are_empty=True)
    for i, f in enumerate(findings.findings):
        assert np.array_equal(pixels[..., i].astype(bool), f.mask)
    overlapping = Findings("toy", "1.0", [*findings.findings, Finding("lung", np.ones(ct.shape, dtype=bool))])
    with pytest.raises(ValueError, match="non-overlapping"):
        encode(overlapping, ct, ["seg"], options=EncodeOptions(seg_type="LABELMAP"))
    with pytest.raises(ValueError):
        EncodeOptions(seg_type="FRACTIONAL")


def test_empty_mask_gets_no_segment_but_is_reported(ct: Volume) -> None:
    findings = two_findings(ct)
    findings.findings.append(Finding("effusion", np.zeros(ct.shape, dtype=bool), score=0.2))
    seg, sr = encode(findings, ct, ["seg", "sr"])
    assert len(seg.SegmentSequence) == 2
    report = hd.sr.Comprehensive3DSR.from_dataset(sr)
    assert report.content.get_image_measurement_groups() == []  # a group without a location crashes OHIF
    groups = report.content.get_planar_roi_measurement_groups()
    assert all(g.finding_type.value != "60046008" for g in groups)
    (evaluations,) = [i for i in sr.ContentSequence if i.ConceptNameCodeSequence[0].CodeValue == "C0034375"]
    texts = [str(i.TextValue) for i in evaluations.ContentSequence if i.ValueType == "TEXT"]
    assert "effusion (no location), detection confidence 20.0%" in texts  # reported at document level
    nothing = Findings("toy", "1.0", [Finding("nodule", np.zeros(ct.shape, dtype=bool))])
    assert [o.Modality for o in encode(nothing, ct, ["seg", "sr"])] == ["SR"]


def test_sr_without_seg_keeps_everything_in_the_planar_group(ct: Volume) -> None:
    (sr,) = encode(two_findings(ct), ct, ["sr"])
    report = hd.sr.Comprehensive3DSR.from_dataset(sr)
    assert report.content.get_volumetric_roi_measurement_groups() == []
    planar = report.content.get_planar_roi_measurement_groups()
    assert len(planar) == 4  # per finding: the bounding box OHIF can track (no measurements), then the outline
    assert [g.get_measurements() for g in planar[::2]] == [[], []]
    assert {m.name.meaning for m in planar[1].get_measurements()} == {"Certainty of Finding"}


def test_cropped_volume_masks_are_padded_back(ct: Volume) -> None:
    crop = (4, 6, 28, 30)
    cropped = Volume(ct.pixels[:, 4:28, 6:30].copy(), ct.spacing, "CT", ct.sources, crop=crop)
    mask = np.zeros(cropped.shape, dtype=bool)
    mask[1, 0:3, 0:5] = True
    seg = encode(Findings("toy", "1.0", [Finding("nodule", mask)]), cropped, ["seg"])[0]
    back = hd.seg.Segmentation.from_dataset(seg)
    pixels = back.get_pixels_by_source_instance(
        [str(s.SOPInstanceUID) for s in ct.sources], segment_numbers=[1], assert_missing_frames_are_empty=True
    )[..., 0]
    expected = np.zeros(ct.shape, dtype=bool)
    expected[1, 4:7, 6:11] = True
    assert np.array_equal(pixels.astype(bool), expected)


def _flat(ds: Dataset, prefix: str = "") -> dict[str, str]:
    out: dict[str, str] = {}
    for elem in ds:
        if elem.VR == "SQ":
            for i, item in enumerate(elem.value):
                out.update(_flat(item, f"{prefix}{elem.keyword}[{i}]."))
        elif elem.keyword != "PixelData":
            out[prefix + elem.keyword] = str(elem.value)
    return out


def test_reencoding_gives_the_same_objects_but_for_timestamps(ct: Volume) -> None:
    kinds = ["seg", "sr", "gsps", "overlay"]
    first, second = encode(two_findings(ct), ct, kinds), encode(two_findings(ct), ct, kinds)
    for a, b in zip(first, second, strict=True):
        fa, fb = _flat(a), _flat(b)
        differing = {k for k in set(fa) | set(fb) if fa.get(k) != fb.get(k)}
        timestamps = {k for k in differing if "Date" in k.split(".")[-1] or "Time" in k.split(".")[-1]}
        assert differing == timestamps, (a.Modality, differing - timestamps)
        if "PixelData" in a:
            assert a.PixelData == b.PixelData


def test_rib_has_no_lung_site_and_nodule_has_laterality(ct: Volume) -> None:
    rib = np.zeros(ct.shape, dtype=bool)
    rib[2, 1:4, 1:20] = True
    findings = two_findings(ct)
    findings.findings.append(Finding("rib", rib))
    (sr,) = encode(findings, ct, ["sr"])
    groups = hd.sr.Comprehensive3DSR.from_dataset(sr).content.get_planar_roi_measurement_groups()[1::2]  # outlines
    assert [g.finding_type.meaning for g in groups] == ["Nodule", "Nodule", "Rib"]
    assert groups[0].finding_sites[0].laterality.value == "24028007"  # right
    assert groups[2].finding_sites == []


def test_summary_counts_findings_per_category(ct: Volume) -> None:
    findings = two_findings(ct)
    findings.findings.append(Finding("lung", np.zeros(ct.shape, dtype=bool)))
    assert findings.summary() == "toy 1.0: 1 lung, 2 nodules"
    assert Findings("toy", "1.0", []).summary() == "toy 1.0: no findings"


def test_tracking_ids_number_a_label_once() -> None:
    from dicom_node.outputs.seg import tracking_id

    assert tracking_id("nodule 1", 0) == "nodule 1"  # the CT labels are numbered already
    assert tracking_id("mass 2", 1) == "mass 2"
    assert tracking_id("rib", 2) == "rib 3"
    assert tracking_id("nodule 1", 3) == "nodule 1 4"  # a label numbered otherwise keeps its own number


def test_sr_measurements_carry_four_significant_digits() -> None:
    from dicom_node.outputs.sr import significant

    assert significant(63878.7282752991) == 63880.0
    assert significant(12.3456) == 12.35
    assert significant(-678.123) == -678.1
    assert significant(0.000123456) == 0.0  # never more than 2 decimals
    assert significant(-2.5) == -2.5 and significant(0.0) == 0.0
