"""The TID 1500 report's shape as viewers need it (issue 21): every measurement group is located (a
tracking UID plus an image region or a referenced segment, else OHIF's SR loader crashes), the
study-level result sits in the document-level "Qualitative Evaluations" container, and the per-finding
score is an explicitly named detection confidence, not a bare "Probability"."""

from __future__ import annotations

import highdicom as hd
import numpy as np
import pytest
from pydicom.dataset import Dataset

from dicom_node.findings import Finding, Findings
from dicom_node.imaging.volume import Volume
from dicom_node.outputs import encode
from dicom_node.outputs.preview import label_text
from tests.peers.dicomcheck import MEASUREMENT_GROUP, concept, sr_items, unlocated_groups
from tests.peers.volumes import sphere, synthetic_ct

QUALITATIVE_EVALUATIONS = "C0034375"
FINDING = "121071"


def document_evaluations(sr: Dataset) -> list[Dataset]:
    """The items of the report's document-level "Qualitative Evaluations" container."""
    (container,) = [i for i in sr.ContentSequence if concept(i) == QUALITATIVE_EVALUATIONS]
    return list(container.ContentSequence)


@pytest.fixture
def ct() -> Volume:
    return synthetic_ct()


def findings_of(volume: Volume) -> Findings:
    a = np.zeros(volume.shape, dtype=bool)
    a[1:3, 4:10, 4:12] = True
    b = sphere(volume.shape, (2, 22, 22), (1, 4, 4))
    return Findings(
        "toy",
        "1.0",
        [
            Finding(
                "nodule", a, laterality="right", score=0.99999981608674, evaluations={"malignancy_likelihood": "low"}
            ),
            Finding("nodule", b, laterality="left", score=0.4),
            Finding("effusion", np.zeros(volume.shape, dtype=bool), score=0.2),  # no location
        ],
        conclusions=["Two nodules."],
    )


@pytest.mark.parametrize("kinds", [["seg", "sr"], ["sr"]])
def test_no_measurement_group_lacks_a_location(ct: Volume, kinds: list[str]) -> None:
    for findings in (
        findings_of(ct),
        Findings("toy", "1.0", []),
        Findings("toy", "1.0", [], not_applicable="not a chest CT"),
    ):
        sr = encode(findings, ct, kinds)[-1]
        assert sr.Modality == "SR"
        assert unlocated_groups(sr) == []
        items = sr_items(sr.ContentSequence)
        groups = [i for i in items if i.get("ValueType") == "CONTAINER" and concept(i) == MEASUREMENT_GROUP]
        # per located finding: the OHIF-trackable box and the outline (+ the volumetric group with a SEG);
        # the effusion has no group
        assert len(groups) == (2 * (len(kinds) + 1) if findings.findings else 0)
        assert not any(i.get("TextValue") == "AI result" for i in sr_items(sr.ContentSequence))
        # the "Imaging Measurements" container is always there (viewers look for it), never empty
        (measurements,) = [i for i in sr.ContentSequence if concept(i) == "126010"]
        assert len(measurements.ContentSequence) >= 1
        hd.sr.Comprehensive3DSR.from_dataset(sr)  # highdicom reads it back


def test_overall_result_and_texts_are_document_level(ct: Volume) -> None:
    cases = {
        "found": (findings_of(ct), "263654008"),
        "nothing": (Findings("toy", "1.0", []), "111286"),
        "refused": (Findings("toy", "1.0", [], not_applicable="not a chest CT"), "NOTAPPLICABLE"),
    }
    for case, (findings, code) in cases.items():
        (sr,) = encode(findings, ct, ["sr"])
        items = document_evaluations(sr)
        coded = [i for i in items if i.ValueType == "CODE" and concept(i) == FINDING]
        assert [c.ConceptCodeSequence[0].CodeValue for c in coded] == [code], case
        texts = [str(i.TextValue) for i in items if i.ValueType == "TEXT" and concept(i) not in ("111001", "111003")]
        if case == "found":
            assert texts[0].startswith("effusion (no location), detection confidence 20.0%")
            assert texts[1:] == ["Two nodules."]
        elif case == "nothing":
            assert texts == ["toy 1.0 ran and found nothing."]
        else:
            assert texts == ["Not applicable: not a chest CT"]
        algorithm = [str(i.TextValue) for i in items if i.RelationshipType == "HAS CONCEPT MOD"]
        assert algorithm == ["toy", "1.0"]  # TID 4019 (row 12b)


def test_score_is_a_named_detection_confidence_not_a_probability(ct: Volume) -> None:
    for kinds in (["seg", "sr"], ["sr"]):
        sr = encode(findings_of(ct), ct, kinds)[-1]
        nums = [i for i in sr_items(sr.ContentSequence) if i.get("ValueType") == "NUM"]
        names = {concept(i) for i in nums}
        assert "122157" not in names  # no bare DCM "Probability"
        confidence = [i for i in nums if concept(i) == "111012"]  # DCM "Certainty of Finding"
        assert len(confidence) == 2
        value = confidence[0].MeasuredValueSequence[0]
        assert float(value.NumericValue) == 100.0  # 0.99999981608674 rounded, in percent
        assert value.MeasurementUnitsCodeSequence[0].CodeValue == "%"
        assert float(confidence[1].MeasuredValueSequence[0].NumericValue) == 40.0
        # the malignancy likelihood stays a separate, coded evaluation: DCM 111047 "Probability of cancer"
        items = sr_items(sr.ContentSequence)
        likelihood = [i for i in items if i.get("ValueType") == "CODE" and concept(i) == "111047"]
        assert [i.ConceptCodeSequence[0].CodeMeaning for i in likelihood] == ["Low"]


def test_labels_name_the_detection_confidence(ct: Volume) -> None:
    findings = findings_of(ct)
    assert label_text(findings.findings[1]) == "nodule, detection 40%"
    assert "(" not in label_text(findings.findings[0]) and "detection 100%" in label_text(findings.findings[0])
    lung = Finding("lung", findings.findings[0].mask)
    assert "detection" not in label_text(lung)  # the lung mask is anatomy, no confidence shown


@pytest.mark.parametrize("kinds", [["seg", "sr"], ["sr"]])
def test_every_located_finding_has_a_region_ohif_can_track(ct: Volume, kinds: list[str]) -> None:
    """OHIF 3.13 restores (and so tracks) an "Image Region" only as a 4/5-point polyline or a point, read at
    group level when the group has no NUM; the first region of each tracking UID is that box."""
    findings = findings_of(ct)
    sr = encode(findings, ct, kinds)[-1]
    groups = [i for i in sr_items(sr.ContentSequence) if i.ValueType == "CONTAINER" and concept(i) == MEASUREMENT_GROUP]
    first_region: dict[str, Dataset] = {}
    for group in groups:
        items = list(group.ContentSequence)
        (uid,) = [str(i.UID) for i in items if i.ValueType == "UIDREF" and concept(i) == "112040"]
        regions = [i for i in items if i.ValueType == "SCOORD"]
        if regions and uid not in first_region:
            assert not [i for i in items if i.ValueType == "NUM"]  # OHIF would look for the region in the NUM
            first_region[uid] = regions[0]
    assert len(first_region) == 2  # the two located findings; the effusion has no location
    for finding, region in zip(findings.findings, first_region.values(), strict=False):
        assert region.GraphicType == "POLYLINE" and concept(region) == "111030"  # DCM "Image Region"
        points = np.asarray(region.GraphicData, dtype=float).reshape(-1, 2)
        assert len(points) == 5 and np.array_equal(points[0], points[-1])  # a closed rectangle
        rows, cols = np.nonzero(finding.mask[finding.key_slice])
        assert (points[:, 0].min(), points[:, 0].max()) == (cols.min(), cols.max() + 1)  # along the pixel edges
        assert (points[:, 1].min(), points[:, 1].max()) == (rows.min(), rows.max() + 1)
        source = region.ContentSequence[0].ReferencedSOPSequence[0]
        assert source.ReferencedSOPInstanceUID == ct.sources[finding.key_slice].SOPInstanceUID


def test_groups_code_their_finding_as_the_seg_does_and_name_the_algorithm(ct: Volume) -> None:
    """IHE AI Results: the report's observer is the device; every measurement group carries the algorithm
    (TID 4019 name and version), the tracking UID of the finding's SEG segment, and the same coded finding:
    Finding Category = the segment's property category, Finding = its property type."""
    findings = findings_of(ct)
    seg, sr = encode(findings, ct, ["seg", "sr"])
    segments = {str(s.TrackingUID): s for s in seg.SegmentSequence}
    items = sr_items(sr.ContentSequence)
    observer = [i for i in items if concept(i) == "121005"]  # DCM "Observer Type"
    assert [i.ConceptCodeSequence[0].CodeValue for i in observer] == ["121007"]  # DCM "Device"
    groups = [i for i in items if i.ValueType == "CONTAINER" and concept(i) == MEASUREMENT_GROUP]
    assert groups
    for group in groups:
        content = list(group.ContentSequence)
        (uid,) = [str(i.UID) for i in content if concept(i) == "112040"]  # DCM "Tracking Unique Identifier"
        segment = segments[uid]
        (category,) = [i.ConceptCodeSequence[0] for i in content if concept(i) == "276214006"]  # SCT "Finding category"
        (finding,) = [i.ConceptCodeSequence[0] for i in content if concept(i) == FINDING]
        expected_category = segment.SegmentedPropertyCategoryCodeSequence[0]
        expected_type = segment.SegmentedPropertyTypeCodeSequence[0]
        assert (category.CodeValue, category.CodingSchemeDesignator) == (
            expected_category.CodeValue,
            expected_category.CodingSchemeDesignator,
        )
        assert (finding.CodeValue, finding.CodingSchemeDesignator) == (
            expected_type.CodeValue,
            expected_type.CodingSchemeDesignator,
        )
        algorithm = {concept(i): str(i.TextValue) for i in content if concept(i) in ("111001", "111003")}
        assert algorithm == {"111001": "toy", "111003": "1.0"}  # DCM "Algorithm Name", "Algorithm Version"
        assert str(segment.SegmentAlgorithmName) == "toy"
