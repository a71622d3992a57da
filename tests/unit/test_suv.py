"""SUV from PET headers against independent references: 8 real acquisitions' expected SUVbw factors
(cornerstonejs/calculate-suv test data) and two real PET slices (ACRIN-FLT-Breast)."""

from __future__ import annotations

import csv
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pydicom
import pytest

from dicom_node.imaging.suv import PetHeader, SuvError, lean_body_mass_kg, parse_dt, suv_factors

REFS = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "real" / "pet_suv_references"
METADATA = REFS / "calculate_suv_metadata"


def _header(item: dict) -> PetHeader:
    philips = item.get("PhilipsPETPrivateGroup") or {}
    return PetHeader(
        units=item["Units"],
        decay_correction=item["DecayCorrection"],
        corrected_image=list(item["CorrectedImage"]),
        series_date=item["SeriesDate"],
        series_time=item["SeriesTime"],
        acquisition_date=item["AcquisitionDate"],
        acquisition_time=item["AcquisitionTime"],
        patient_weight_kg=item.get("PatientWeight"),
        radionuclide_total_dose_bq=item.get("RadionuclideTotalDose"),
        radionuclide_half_life_s=item.get("RadionuclideHalfLife"),
        radiopharmaceutical_start_datetime=item.get("RadiopharmaceuticalStartDateTime", ""),
        radiopharmaceutical_start_time=item.get("RadiopharmaceuticalStartTime", ""),
        patient_sex=item.get("PatientSex", ""),
        patient_size_m=item.get("PatientSize"),
        philips_suv_scale=float(philips["SUVScaleFactor"]) if "SUVScaleFactor" in philips else None,
        philips_activity_scale=float(philips["ActivityConcentrationScaleFactor"])
        if "ActivityConcentrationScaleFactor" in philips
        else None,
    )


def _expected() -> dict[str, float]:
    if not METADATA.is_dir():
        pytest.skip(f"no SUV reference data at {METADATA}")
    with (METADATA / "expected_suvbw_factors.tsv").open() as f:
        return {row["case"]: float(row["suvbw_scale_factor"]) for row in csv.DictReader(f, delimiter="\t")}


def test_eight_real_acquisitions_agree_with_the_reference_factors_to_0_1_percent() -> None:
    expected = _expected()
    assert len(expected) == 8
    for case, factor in expected.items():
        items = json.loads((METADATA / f"{case}-instances.json").read_text())
        got = suv_factors([_header(i) for i in items])
        assert len(got) == len(items)
        assert got[0].suv_bw == pytest.approx(factor, rel=1e-3), case


def test_two_real_pet_slices_give_plausible_suv() -> None:
    for name in ("acrin_flt_breast_028.dcm", "acrin_flt_breast_029.dcm"):
        path = REFS / "pet_slices" / name
        if not path.exists():
            pytest.skip(f"no real PET slice at {path}")
        ds = pydicom.dcmread(path)
        header = PetHeader.from_dataset(ds)
        assert header.units == "BQML" and header.decay_correction == "START"
        factors = suv_factors([header])[0]
        suv = (ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)) * factors.suv_bw
        body = suv[suv > 0.3]
        # FLT: blood pool and soft tissue around 1, bone marrow and lesions a few units; never hundreds
        assert 0.3 < float(np.median(body)) < 3.0 and 1.0 < float(suv.max()) < 40.0, (name, suv.max())
        assert factors.decay_s is not None and 0 <= factors.decay_s < 4 * 3600  # 028: a dynamic scan from injection


def _plain() -> PetHeader:
    return PetHeader(
        units="BQML",
        decay_correction="START",
        corrected_image=["ATTN", "DECY"],
        series_date="20240101",
        series_time="110000",
        acquisition_date="20240101",
        acquisition_time="110000",
        patient_weight_kg=80.0,
        radionuclide_total_dose_bq=370e6,
        radionuclide_half_life_s=6586.2,
        radiopharmaceutical_start_time="100000",
        patient_sex="M",
        patient_size_m=1.8,
    )


def test_decay_correction_modes() -> None:
    h = _plain()
    start = suv_factors([h])[0]
    assert start.decay_s == 3600 and start.suv_bw == pytest.approx(80_000 / (370e6 * 2 ** (-3600 / 6586.2)))
    admin = suv_factors([replace(h, decay_correction="ADMIN")])[0]
    assert admin.suv_bw == pytest.approx(80_000 / 370e6) and admin.decay_s is None
    later = replace(h, decay_correction="NONE", corrected_image=["ATTN"], acquisition_time="113000")
    none = suv_factors([replace(h, decay_correction="NONE", corrected_image=["ATTN"]), later])
    assert none[0].decay_s == 3600 and none[1].decay_s == 5400 and none[1].suv_bw > none[0].suv_bw
    # a post-processed series (series time after the acquisition) decays to the earliest acquisition
    post = suv_factors([replace(h, series_time="120000", acquisition_time="104500")])[0]
    assert post.decay_s == 2700


def test_sul_uses_janmahasatian_lean_body_mass() -> None:
    lbm = lean_body_mass_kg(80.0, 1.8, "M")
    assert lbm == pytest.approx(9270 * 80 / (6680 + 216 * 80 / 1.8**2))
    f = suv_factors([_plain()])[0]
    assert f.sul == pytest.approx(f.suv_bw * lbm / 80.0)
    assert suv_factors([replace(_plain(), patient_size_m=None)])[0].sul is None


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"patient_weight_kg": None}, "PatientWeight"),
        ({"radionuclide_total_dose_bq": 0.0}, "RadionuclideTotalDose"),
        ({"radionuclide_half_life_s": None}, "RadionuclideHalfLife"),
        ({"radiopharmaceutical_start_time": ""}, "injection time unknown"),
        ({"decay_correction": "LATE"}, "DecayCorrection"),
        ({"corrected_image": ["ATTN"]}, "lacks ATTN or DECY"),
        ({"units": "CNTS"}, "Philips"),
        ({"units": "PROPCNTS"}, "Units"),
        ({"radiopharmaceutical_start_time": "120000"}, "before the injection"),
    ],
)
def test_a_missing_or_wrong_field_is_refused_by_name(change: dict, words: str) -> None:
    with pytest.raises(SuvError, match=words):
        suv_factors([replace(_plain(), **change)])


def test_instances_of_different_series_are_refused() -> None:
    with pytest.raises(SuvError, match="not one series"):
        suv_factors([_plain(), replace(_plain(), patient_weight_kg=81.0)])


def test_dicom_date_times() -> None:
    assert parse_dt("20201217", "123514.999995").microsecond == 999995
    assert parse_dt("20201217084500.00 ").hour == 8
    assert parse_dt("20201217", "0956").minute == 56
    with pytest.raises(SuvError):
        parse_dt("", "")
