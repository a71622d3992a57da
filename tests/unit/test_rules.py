"""The routing grammar: equality, glob, regex, negation, ranges, lists, presence, multi-valued values."""

from __future__ import annotations

import pytest
from pydicom.dataset import Dataset

from dicom_node.config import Range, parse_config
from dicom_node.intake.routing import check_routes, series_attributes
from dicom_node.intake.rules import attribute_value, explain

ATTRS = {
    "Modality": "CT",
    "SeriesDescription": "Chest 1.25mm Lung",
    "ImageType": ["ORIGINAL", "PRIMARY", "AXIAL"],
    "SliceThickness": "1.25",
    "BodyPartExamined": None,
    "calling_ae": "PACS",
}


@pytest.mark.parametrize(
    ("key", "spec", "expected"),
    [
        ("Modality", "ct", True),
        ("Modality", "MR", False),
        ("Modality", ["MR", "CT"], True),
        ("SeriesDescription", "*LUNG*", True),
        ("SeriesDescription", "*BRAIN*", False),
        ("SeriesDescription", "re:\\d+(\\.\\d+)?mm", True),
        ("SeriesDescription", "re:^Lung", False),
        ("SeriesDescription", "not:*LOCALIZER*", True),
        ("ImageType", "AXIAL", True),
        ("ImageType", "LOCALIZER", False),
        ("ImageType", "ORIGINAL\\PRIMARY*", True),
        ("SliceThickness", Range(min=0.5, max=2.5), True),
        ("SliceThickness", Range(min=2.0), False),
        ("SliceThickness", 1.25, True),
        ("BodyPartExamined", True, False),
        ("BodyPartExamined", False, True),
        ("calling_ae", "PACS", True),
    ],
)
def test_match_one_key(key: str, spec: object, expected: bool) -> None:
    matched, reasons = explain({key: spec}, ATTRS)
    assert matched is expected
    assert len(reasons) == 1 and key in reasons[0]


def test_all_keys_must_match() -> None:
    matched, reasons = explain({"Modality": "CT", "SeriesDescription": "*BRAIN*"}, ATTRS)
    assert not matched
    assert "does not match" in reasons[1]


def test_routes_by_priority_and_attributes_from_header() -> None:
    config = parse_config(
        "[[routes]]\nname = 'any-ct'\npipelines = ['ct_lung_field']\n[routes.match]\nModality = 'CT'\n"
        "[[routes]]\nname = 'thin'\npriority = 5\npipelines = ['ct_lung_field']\n"
        "[routes.match]\nSliceThickness = {max = 2}\ncalling_ae = 'PACS'\n"
    )
    ds = Dataset()
    ds.Modality = "CT"
    ds.SliceThickness = "1.25"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    attrs = series_attributes(ds, config, calling_ae="PACS", called_ae="NODE")
    assert attrs["SliceThickness"] == "1.25"
    checks = check_routes(config, attrs)
    assert [c.route.name for c in checks] == ["thin", "any-ct"]
    assert all(c.matched for c in checks)
    assert attribute_value(ds, "ImageType") == ["ORIGINAL", "PRIMARY", "AXIAL"]
    assert attribute_value(ds, "BodyPartExamined") is None
