"""Only FDG PET goes to the tumour network: other tracers are refused from their headers, an unnamed F-18 tracer
is read as FDG with a note."""

from __future__ import annotations

from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from dicom_node.pipelines.pet_tumour.tracer import tracer_note, tracer_refusal

REAL = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "real" / "pet_suv_references" / "pet_slices"


F18 = ("C-111A1", "^18^Fluorine")


def _header(name: str = "", half_life: str = "6586.2", nuclide: tuple[str, str] = F18) -> Dataset:
    radio = Dataset()
    if name:
        radio.Radiopharmaceutical = name
    radio.RadionuclideHalfLife = half_life
    code = Dataset()
    code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = nuclide[0], "SRT", nuclide[1]
    radio.RadionuclideCodeSequence = Sequence([code])
    ds = Dataset()
    ds.RadiopharmaceuticalInformationSequence = Sequence([radio])
    return ds


@pytest.mark.parametrize("name", ["Fluorodeoxyglucose", "FDG -- fluorodeoxyglucose", "18F-FDG", "Fludeoxyglucose"])
def test_fdg_by_any_usual_name_is_read(name: str) -> None:
    assert tracer_refusal(_header(name)) is None and tracer_note(_header(name)) is None


@pytest.mark.parametrize(
    ("header", "words"),
    [
        (_header("PSMA-1007"), "radiopharmaceutical 'PSMA-1007'"),
        (_header("FLT"), "radiopharmaceutical 'FLT'"),
        (_header("Ga-68 DOTATATE", "4062.6", ("C-131A3", "^68^Gallium")), "radionuclide ^68^Gallium"),
        (_header("", "4062.6", ("", "")), "half-life 4063 s"),
    ],
)
def test_other_tracers_are_refused_with_the_reason(header: Dataset, words: str) -> None:
    reason = tracer_refusal(header)
    assert reason is not None and words in reason and "FDG" in reason


def test_an_unnamed_f18_tracer_is_read_as_fdg_with_a_note() -> None:
    assert tracer_refusal(_header()) is None
    assert tracer_note(_header()) == "the series names no radiopharmaceutical: read as FDG (F-18)"


def test_the_real_pet_slices_read_as_unnamed_f18() -> None:
    if not REAL.is_dir():
        pytest.skip("shared real data not present")
    ds = pydicom.dcmread(REAL / "acrin_flt_breast_028.dcm", stop_before_pixels=True)
    assert tracer_refusal(ds) is None and tracer_note(ds) is not None
