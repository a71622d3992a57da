"""Standardized uptake values from PET headers, the way nuclear medicine computes them.

``SUVbw = pixel x RescaleSlope + RescaleIntercept`` (Bq/ml) ``x weight (g) / decayed dose (Bq)``, following the
QIBA vendor-neutral pseudo-code for SUV calculation:

- **Units** ``BQML``: the pixels are activity concentration. ``CNTS`` (Philips): the private SUV scale factor
  (7053,1000) when present, else the activity concentration scale factor (7053,1009) times the BQML factor.
  ``GML``: already SUVbw. Anything else is refused.
- **Decay correction** ``START``: the image is decay corrected to the scan start, so the dose is decayed from
  the injection to the scan start. The scan start is the Series Date/Time unless that is later than the
  earliest Acquisition Date/Time of the series (a post-processed series), in which case GE's private
  post-injection date/time (0009,100D) or else the earliest acquisition is used. ``ADMIN``: the image is
  corrected to the injection, so the dose is not decayed. ``NONE``: each frame's own acquisition start.
  ``START`` and ``ADMIN`` need ATTN and DECY among CorrectedImage.
- **Injection** Radiopharmaceutical Start DateTime, else Start Time on the Series Date.
- **SUL** (lean body mass, Janmahasatian et al. 2005) when sex, height and weight are known.

A field that is missing or nonsensical raises :class:`SuvError` naming it: never a silent default.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from pydicom.dataset import Dataset
from pydicom.tag import Tag

F18_HALF_LIFE_S = 6586.2
"""Half-life of F-18 in seconds (109.77 min), as scanners write Radionuclide Half Life for FDG."""
PHILIPS_SUV_SCALE = Tag(0x7053, 0x1000)
PHILIPS_ACTIVITY_SCALE = Tag(0x7053, 0x1009)
GE_POST_INJECTION_DATETIME = Tag(0x0009, 0x100D)


class SuvError(ValueError):
    """The headers do not allow an exact SUV; the message says which field and why."""


@dataclass
class PetHeader:
    """The fields of one PET instance that SUV depends on (times as DICOM DA / TM / DT strings)."""

    units: str
    decay_correction: str
    corrected_image: list[str]
    series_date: str
    series_time: str
    acquisition_date: str
    acquisition_time: str
    patient_weight_kg: float | None
    radionuclide_total_dose_bq: float | None
    radionuclide_half_life_s: float | None
    radiopharmaceutical_start_datetime: str = ""
    radiopharmaceutical_start_time: str = ""
    patient_sex: str = ""
    patient_size_m: float | None = None
    philips_suv_scale: float | None = None
    philips_activity_scale: float | None = None
    ge_post_injection_datetime: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dataset(cls, ds: Dataset) -> PetHeader:
        """The SUV fields of a PT dataset (its first Radiopharmaceutical Information item)."""
        seq = ds.get("RadiopharmaceuticalInformationSequence") or [Dataset()]
        radio = seq[0]

        def number(value: Any) -> float | None:
            try:
                return float(value) if value not in (None, "") else None
            except (TypeError, ValueError):
                return None

        private = {tag: ds[tag].value if tag in ds else None for tag in (PHILIPS_SUV_SCALE, PHILIPS_ACTIVITY_SCALE)}
        ge = ds[GE_POST_INJECTION_DATETIME].value if GE_POST_INJECTION_DATETIME in ds else ""
        return cls(
            units=str(ds.get("Units", "")),
            decay_correction=str(ds.get("DecayCorrection", "")),
            corrected_image=[str(v) for v in (ds.get("CorrectedImage") or [])],
            series_date=str(ds.get("SeriesDate", "")),
            series_time=str(ds.get("SeriesTime", "")),
            acquisition_date=str(ds.get("AcquisitionDate", "")),
            acquisition_time=str(ds.get("AcquisitionTime", "")),
            patient_weight_kg=number(ds.get("PatientWeight")),
            radionuclide_total_dose_bq=number(radio.get("RadionuclideTotalDose")),
            radionuclide_half_life_s=number(radio.get("RadionuclideHalfLife")),
            radiopharmaceutical_start_datetime=str(radio.get("RadiopharmaceuticalStartDateTime", "")),
            radiopharmaceutical_start_time=str(radio.get("RadiopharmaceuticalStartTime", "")),
            patient_sex=str(ds.get("PatientSex", "")),
            patient_size_m=number(ds.get("PatientSize")),
            philips_suv_scale=number(private[PHILIPS_SUV_SCALE]),
            philips_activity_scale=number(private[PHILIPS_ACTIVITY_SCALE]),
            ge_post_injection_datetime=str(ge or ""),
        )


@dataclass(frozen=True)
class SuvFactors:
    """Multiply rescaled pixels by ``suv_bw`` for SUVbw (g/ml); ``sul`` for SUL when sex and height are known."""

    suv_bw: float
    sul: float | None
    decay_s: float | None  # injection to the reference time of the decay, None where no decay applies


def parse_dt(date: str, time: str = "") -> datetime:
    """A DICOM DA + TM (or a DT in ``date``) as a naive datetime; fractions of a second kept."""
    text = (date.strip() + time.strip()).split("+")[0].split("-")[0]
    if len(text) < 8 or not text[:8].isdigit():
        raise SuvError(f"not a DICOM date/time: {date!r} {time!r}")
    whole, _, frac = text.partition(".")
    digits = whole[8:]
    hh, mm, ss = (int(digits[i : i + 2]) if len(digits) > i else 0 for i in (0, 2, 4))
    micro = int((frac + "000000")[:6]) if frac else 0
    base = datetime(int(whole[:4]), int(whole[4:6]), int(whole[6:8]))
    return base + timedelta(hours=hh, minutes=mm, seconds=ss, microseconds=micro)


def _required(value: float | None, name: str) -> float:
    if value is None or not math.isfinite(value) or value <= 0:
        raise SuvError(f"{name} is missing or not positive ({value!r}): no SUV without it")
    return value


def _injection(h: PetHeader) -> datetime:
    if h.radiopharmaceutical_start_datetime.strip():
        return parse_dt(h.radiopharmaceutical_start_datetime)
    if h.radiopharmaceutical_start_time.strip() and h.series_date.strip():
        return parse_dt(h.series_date, h.radiopharmaceutical_start_time)
    raise SuvError("neither RadiopharmaceuticalStartDateTime nor RadiopharmaceuticalStartTime: injection time unknown")


def _scan_start(headers: Sequence[PetHeader]) -> datetime:
    first = headers[0]
    series = parse_dt(first.series_date, first.series_time)
    earliest = min(parse_dt(h.acquisition_date, h.acquisition_time) for h in headers)
    if series <= earliest:
        return series
    if first.ge_post_injection_datetime.strip():
        return parse_dt(first.ge_post_injection_datetime)
    return earliest


def lean_body_mass_kg(weight_kg: float, height_m: float, sex: str) -> float:
    """Janmahasatian et al. (2005) lean body mass, used for SUL."""
    bmi = weight_kg / (height_m * height_m)
    if sex.upper().startswith("M"):
        return 9270.0 * weight_kg / (6680.0 + 216.0 * bmi)
    if sex.upper().startswith("F"):
        return 9270.0 * weight_kg / (8780.0 + 244.0 * bmi)
    raise SuvError(f"PatientSex {sex!r}: SUL needs M or F")


def _bqml_factors(headers: Sequence[PetHeader]) -> list[tuple[float, float | None]]:
    """Weight (g) / decayed dose (Bq) per instance, with the decay time used."""
    h = headers[0]
    weight_g = _required(h.patient_weight_kg, "PatientWeight") * 1000.0
    dose = _required(h.radionuclide_total_dose_bq, "RadionuclideTotalDose")
    mode = h.decay_correction.strip().upper()
    if mode == "ADMIN":
        return [(weight_g / dose, None)] * len(headers)
    half_life = _required(h.radionuclide_half_life_s, "RadionuclideHalfLife")
    injection = _injection(h)
    if mode == "START":
        references = [_scan_start(headers)] * len(headers)
    elif mode == "NONE":
        references = [parse_dt(x.acquisition_date, x.acquisition_time) for x in headers]
    else:
        raise SuvError(f"DecayCorrection {h.decay_correction!r} is not START, ADMIN or NONE")
    out: list[tuple[float, float | None]] = []
    for ref in references:
        decay_s = (ref - injection).total_seconds()
        if decay_s < 0:
            raise SuvError(f"the scan ({ref}) starts before the injection ({injection})")
        out.append((weight_g / (dose * 2.0 ** (-decay_s / half_life)), decay_s))
    return out


def _check_one_series(headers: Sequence[PetHeader]) -> None:
    keys = ("units", "decay_correction", "patient_weight_kg", "radionuclide_total_dose_bq", "radionuclide_half_life_s")
    for key in (*keys, "series_date", "series_time"):
        values = {getattr(h, key) for h in headers}
        if len(values) > 1:
            raise SuvError(f"{key} differs between the instances ({sorted(map(str, values))}): not one series")


def suv_factors(headers: Sequence[PetHeader]) -> list[SuvFactors]:
    """The SUVbw (and SUL) factor of every instance of one PET series (after Rescale Slope / Intercept)."""
    if not headers:
        raise SuvError("no PET instances")
    _check_one_series(headers)
    h = headers[0]
    units = h.units.strip().upper()
    mode = h.decay_correction.strip().upper()
    if mode in ("START", "ADMIN") and not {"ATTN", "DECY"} <= {c.upper() for c in h.corrected_image}:
        raise SuvError(f"CorrectedImage {h.corrected_image} lacks ATTN or DECY: not quantitative")
    if units == "BQML":
        base = _bqml_factors(headers)
    elif units == "CNTS":
        if all(x.philips_suv_scale for x in headers):
            base = [(float(x.philips_suv_scale or 0), None) for x in headers]
        elif all(x.philips_activity_scale for x in headers):
            bqml = _bqml_factors(headers)
            base = [(float(x.philips_activity_scale or 0) * f, d) for x, (f, d) in zip(headers, bqml, strict=True)]
        else:
            raise SuvError("Units CNTS without the Philips SUV (7053,1000) or activity (7053,1009) scale factor")
    elif units == "GML":
        base = [(1.0, None)] * len(headers)
    else:
        raise SuvError(f"Units {h.units!r}: SUV needs BQML, CNTS (Philips) or GML")
    lbm_ratio: float | None = None
    if h.patient_sex and h.patient_size_m and h.patient_weight_kg:
        weight = h.patient_weight_kg
        lbm_ratio = lean_body_mass_kg(weight, h.patient_size_m, h.patient_sex) / weight
    return [SuvFactors(f, f * lbm_ratio if lbm_ratio else None, d) for f, d in base]
