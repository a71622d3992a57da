"""``pet_tumour``: FDG PET/CT tumour segmentation with SUV measured as nuclear medicine measures it.

A route with ``wait_for = "study"`` sends the PT series; the worker adds the study's CT series (the
pipeline's :attr:`PetTumour.companions`). ``load`` reads the PT series as SUVbw
(:mod:`dicom_node.imaging.pet`, QIBA rules, a missing field refused with its name) and resamples the CT of
the same Frame of Reference onto the PET grid through both real geometries, keeping the CT's own grid so that
the SEG is also written on the CT; a PT series without such a CT runs as PET only (noted in the report).
``run`` segments tumours (the network of the bundle, or a threshold baseline when the route's option
``method`` says so), one finding per connected lesion with SUVmax, SUVmean, SUVpeak (1 ml sphere), MTV and TLG,
and as its score the network's highest tumour probability in it (1.0 for a threshold baseline); the study's
total MTV and TLG go into the conclusions.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset

from dicom_node.findings import Category, Finding, Findings, Measurement, Quantity
from dicom_node.imaging.pet import is_pet, load_pet_series, resample_onto, same_frame
from dicom_node.imaging.suv import PetHeader, SuvError, suv_factors
from dicom_node.imaging.volume import Volume, geometry_only
from dicom_node.pipelines.base import register
from dicom_node.pipelines.pet_tumour.baselines import METHODS
from dicom_node.pipelines.pet_tumour.detect import lesion_labels, method_mask, network_probabilities, network_regions
from dicom_node.pipelines.pet_tumour.measures import lesion_stats
from dicom_node.pipelines.pet_tumour.model import CONTEXT, DEFAULT_BUNDLE, TumourNet, load_net
from dicom_node.pipelines.pet_tumour.tracer import tracer_note, tracer_refusal

log = logging.getLogger(__name__)
MIN_SLICES = 2 * CONTEXT + 1  # the slices the network reads around each one


@dataclass
class PetCtVolume(Volume):
    """The PET volume (SUVbw) with, where paired, the CT (HU) resampled onto its grid (``ct``) and the CT
    series' own grid (``ct_volume``: its sources and geometry, for a SEG on the CT; its pixels are not kept)."""

    ct: np.ndarray | None = None
    refusal: str | None = None
    ct_volume: Volume | None = None

    def paired_volumes(self) -> list[Volume]:
        """The CT's grid when a CT is paired: the findings' SEG is written on it too."""
        return [self.ct_volume] if self.ct_volume is not None else []


@register("pet_tumour")
class PetTumour:
    """FDG PET/CT tumour segmentation (options: ``bundle``, ``method`` = network | suv25 | percent40)."""

    name = "pet_tumour"
    companions: tuple[str, ...] = ("CT",)
    """Modalities of the same study the worker adds to the job's files (the CT of a PET/CT)."""

    def __init__(self, bundle: str | None = None, method: str = "network") -> None:
        if method not in METHODS:
            raise ValueError(f"pet_tumour method {method!r}: one of {', '.join(METHODS)}")
        self.method = method
        self.bundle = Path(bundle) if bundle else DEFAULT_BUNDLE
        self._net: TumourNet | None = None
        self.version = self._read_version()

    def _read_version(self) -> str:
        if self.method != "network":
            return f"{self.method}-1.0.0"
        import json

        meta = self.bundle / "configs" / "metadata.json"
        return str(json.loads(meta.read_text()).get("version", "0")) if meta.exists() else "0"

    def warm_up(self, device: str) -> None:
        """Load the network (network method only)."""
        if self.method == "network" and (self._net is None or self._net.device != device):
            self._net = load_net(self.bundle, device)
            self.version = self._net.version

    def applies_to(self, series: Sequence[Dataset]) -> str | None:
        """None when the files hold a PT series; else the reason."""
        if not any(is_pet(ds) for ds in series):
            return "no PET (PT) image in the series"
        return None

    def load(self, paths: Sequence[str]) -> Volume:
        """The PT series as SUVbw, with the CT of the same Frame of Reference on its grid (if any)."""
        headers = [(p, pydicom.dcmread(p, stop_before_pixels=True, force=True)) for p in paths]
        pet_paths = [p for p, ds in headers if is_pet(ds)]
        pet_headers = [ds for _, ds in headers if is_pet(ds)]
        try:
            suv_factors([PetHeader.from_dataset(ds) for ds in pet_headers])
        except SuvError as exc:
            volume = _placeholder(pet_headers)
            volume.refusal = f"SUV cannot be computed: {exc}"
            return volume
        pet = load_pet_series(pet_paths)
        ct_paths = _paired_ct(
            [(p, ds) for p, ds in headers if str(ds.get("Modality", "")).upper() == "CT"], pet_headers
        )
        out = PetCtVolume(pet.pixels, pet.spacing, "PT", pet.sources, notes=list(pet.notes))
        if ct_paths:
            from dicom_node.imaging.ct import load_ct_series

            ct = load_ct_series(ct_paths)
            out.ct = resample_onto(ct, pet, fill=-1000.0)
            out.ct_volume = geometry_only(ct)
            out.notes.append(f"CT of the same frame of reference resampled onto the PET grid ({len(ct_paths)} slices)")
        else:
            out.notes.append("PET only: no CT of the same frame of reference in the study")
        return out

    def run(self, volume: Volume, device: str) -> Findings:
        """Segment tumours and measure them (see the module docstring)."""
        timings: dict[str, float] = {}
        ct = volume.ct if isinstance(volume, PetCtVolume) else None
        refusal = volume.refusal if isinstance(volume, PetCtVolume) else None
        if refusal is not None:
            return Findings(self.name, self.version, not_applicable=refusal)
        if volume.modality != "PT":
            return Findings(self.name, self.version, not_applicable=f"modality {volume.modality} is not PET")
        if volume.shape[0] < MIN_SLICES:
            reason = (
                f"{volume.shape[0]} PET slice(s): a tumour survey needs a PET volume of at least {MIN_SLICES} adjacent "
                "slices (a single slice or key image cannot be read for lesions)"
            )
            return Findings(self.name, self.version, not_applicable=reason)
        tracer = tracer_refusal(volume.sources[0])
        if tracer is not None and self.method == "network":  # a threshold baseline is the same on any tracer
            return Findings(self.name, self.version, not_applicable=tracer)
        if self.method == "network":
            self.warm_up(device)
        t = time.perf_counter()
        prob: np.ndarray | None = None
        if self.method == "network" and self._net is not None:
            prob = network_probabilities(self._net, volume.pixels, ct, volume.spacing)
            mask = network_regions(prob, ct, self._net, volume.pixels, volume.spacing)
        else:
            mask = method_mask(self.method, volume.pixels, ct, volume.spacing, self._net)
        labels, count = lesion_labels(mask, volume.pixels)
        timings["segment_s"] = time.perf_counter() - t
        findings = []
        for i in range(1, count + 1):
            region = labels == i
            score = float(np.clip(prob[region].max(), 0.0, 1.0)) if prob is not None else 1.0
            findings.append(_finding(volume, region, i, score))
        conclusions = _conclusions(findings, ct is not None, self.method)
        note = tracer_note(volume.sources[0])
        if note is not None:
            conclusions.append(note)
        return Findings(self.name, self.version, findings=findings, conclusions=conclusions, timings=timings)


def _placeholder(headers: Sequence[Dataset]) -> PetCtVolume:
    """A one-voxel-per-slice stand-in for a PT series SUV cannot be computed for (the report says why)."""
    n = max(1, len(headers))
    rows = int(headers[0].get("Rows", 1)) if headers else 1
    cols = int(headers[0].get("Columns", 1)) if headers else 1
    return PetCtVolume(np.zeros((n, rows, cols), dtype=np.float32), (1.0, 1.0, 1.0), "PT", list(headers))


def _paired_ct(cts: Sequence[tuple[str, Dataset]], pet: Sequence[Dataset]) -> list[str]:
    """The paths of the largest CT series with the PET's Frame of Reference (empty when none)."""
    by_series: dict[str, list[tuple[str, Dataset]]] = {}
    for p, ds in cts:
        by_series.setdefault(str(ds.get("SeriesInstanceUID", "")), []).append((p, ds))
    paired = [items for items in by_series.values() if same_frame([ds for _, ds in items], pet[:1])]
    if not paired:
        return []
    return [p for p, _ in max(paired, key=len)]


def _finding(volume: Volume, mask: np.ndarray, index: int, score: float) -> Finding:
    stats = lesion_stats(volume.pixels, mask, volume.spacing)
    measurements = [
        Measurement(Quantity.SUV_MAX, round(stats.suv_max, 3)),
        Measurement(Quantity.SUV_MEAN, round(stats.suv_mean, 3)),
        Measurement(Quantity.SUV_PEAK, round(stats.suv_peak, 3)),
        Measurement(Quantity.MTV, round(stats.mtv_ml, 3)),
        Measurement(Quantity.TLG, round(stats.tlg_g, 3)),
    ]
    return Finding(Category.TUMOUR, mask, label=f"tumour {index}", measurements=measurements, score=score)


def _conclusions(findings: list[Finding], paired: bool, method: str) -> list[str]:
    mtv = sum(f.measurement(Quantity.MTV) or 0.0 for f in findings)
    tlg = sum(f.measurement(Quantity.TLG) or 0.0 for f in findings)
    lines = [f"{len(findings)} tumour(s); total MTV {mtv:.2f} ml; total TLG {tlg:.2f} g (SUVbw)"]
    if not paired:
        lines.append("PET only: no CT of the same frame of reference was in the study")
    if method != "network":
        lines.append(f"method: {method} threshold baseline, not the network")
    return lines
