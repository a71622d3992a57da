"""Whether a PET series is an FDG PET, the only tracer the ``pet_tumour`` model knows.

Other tracers show other normal uptake (PSMA: salivary glands, kidneys, bowel; DOTATATE: spleen, adrenals,
pituitary; FLT: marrow; NaF: bone), which the model would call tumour. A series is refused when its headers say
it is another tracer: a radionuclide other than F-18 (by code, or by a half-life outside F-18's 109.8 min +- 5 %),
or a radiopharmaceutical named (free text or code meaning) and not FDG. A series that names no radiopharmaceutical
but carries F-18 is read as FDG, and the report says so.
"""

from __future__ import annotations

from pydicom.dataset import Dataset

from dicom_node.imaging.suv import F18_HALF_LIFE_S

F18_CODES = {"C-111A1", "77004003"}  # SNOMED RT / CT: ^18^Fluorine
FDG_WORDS = ("fdg", "fluorodeoxyglucose", "fludeoxyglucose", "deoxyglucose", "glucose")


def _radiopharmaceutical(ds: Dataset) -> Dataset | None:
    items = ds.get("RadiopharmaceuticalInformationSequence") or []
    return items[0] if items else None


def _code(item: Dataset, sequence: str) -> tuple[str, str]:
    codes = item.get(sequence) or []
    if not codes:
        return "", ""
    return str(codes[0].get("CodeValue", "")), str(codes[0].get("CodeMeaning", ""))


def _names(radio: Dataset) -> list[str]:
    """The radiopharmaceutical's names in the headers: free text and code meaning, those present."""
    names = [str(radio.get("Radiopharmaceutical", "")).strip(), _code(radio, "RadiopharmaceuticalCodeSequence")[1]]
    return [n for n in names if n]


def tracer_refusal(ds: Dataset) -> str | None:
    """Why the PET series of header ``ds`` is not an FDG PET, or None when it is (or reads as one)."""
    radio = _radiopharmaceutical(ds)
    if radio is None:
        return None  # the SUV reader refuses a series without it, by name
    value, meaning = _code(radio, "RadionuclideCodeSequence")
    if value and value not in F18_CODES:
        return f"radionuclide {meaning or value}: the tumour model reads FDG (F-18) PET only"
    half_life = radio.get("RadionuclideHalfLife")
    if half_life not in (None, "") and abs(float(half_life) / F18_HALF_LIFE_S - 1.0) > 0.05:
        return (
            f"radionuclide half-life {float(half_life):.0f} s is not F-18's ({F18_HALF_LIFE_S:.0f} s): the tumour "
            "model reads FDG (F-18) PET only"
        )
    named = _names(radio)
    if named and not any(word in n.lower() for n in named for word in FDG_WORDS):
        return (
            f"radiopharmaceutical {named[0]!r}: the tumour model reads FDG PET only (another tracer has other normal "
            "uptake)"
        )
    return None


def tracer_note(ds: Dataset) -> str | None:
    """A note for the report when the series names no radiopharmaceutical (read as FDG), else None."""
    radio = _radiopharmaceutical(ds)
    if radio is None or _names(radio):
        return None
    return "the series names no radiopharmaceutical: read as FDG (F-18)"
