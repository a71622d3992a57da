"""The registered ``ct_lung_nodule`` pipeline: DICOM series in, nodule Findings out."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset

from dicom_node.findings import Category, Evaluation, Finding, Findings, Measurement, Quantity
from dicom_node.imaging.ct import load_ct_series
from dicom_node.imaging.volume import Volume
from dicom_node.pipelines.base import register
from dicom_node.pipelines.ct_lung_field import LungFields, ct_applies_to, segment_lungs
from dicom_node.pipelines.ct_lung_nodule.candidates import WORK_MM, long_short_axes
from dicom_node.pipelines.ct_lung_nodule.contrast import vessel_core_hu
from dicom_node.pipelines.ct_lung_nodule.detection import Detection, detect_in_volume, malignancy_key
from dicom_node.pipelines.ct_lung_nodule.level import PHANTOM_LUNG_HU, REPORT_SHIFT_HU, level_shift, lung_level
from dicom_node.pipelines.ct_lung_nodule.mass import grow_mass
from dicom_node.pipelines.ct_lung_nodule.model import DEFAULT_BUNDLE, NoduleModel, load_model
from dicom_node.pipelines.ct_lung_nodule.noise import TARGET_NOISE_HU, lung_noise, on_working_grid
from dicom_node.pipelines.ct_lung_nodule.scope import (
    contrast_enhanced,
    is_mass,
    not_a_chest,
    out_of_range,
    too_noisy,
)

__all__ = ["DEFAULT_BUNDLE", "CtLungNodule"]

logger = logging.getLogger("dicom_node.pipelines.ct_lung_nodule")  # the package's name, as before the split


@register("ct_lung_nodule")
class CtLungNodule:
    """Lung nodule detection, segmentation and characterisation on chest CT (research use only)."""

    name = "ct_lung_nodule"

    def __init__(self, bundle: str | None = None, min_score: float | None = None, min_slices: int = 3) -> None:
        self.bundle = bundle
        self.min_slices = int(min_slices)
        self._min_score = min_score
        self._model: NoduleModel | None = None
        self._device = ""
        self.version = self._bundle_version()

    def _bundle_version(self) -> str:
        import json

        path = Path(self.bundle) if self.bundle else DEFAULT_BUNDLE
        meta = path / "configs" / "metadata.json"
        if meta.exists():
            return str(json.loads(meta.read_text()).get("version", "0"))
        return path.stem if path.exists() else "unavailable"

    def applies_to(self, series: Sequence[Dataset]) -> str | None:
        """None for an axial CT stack of at least ``min_slices`` slices, else the reason."""
        return ct_applies_to(series, self.min_slices)

    def load(self, paths: Sequence[str]) -> Volume:
        """HU volume of the series (see :func:`dicom_node.imaging.ct.load_ct_series`)."""
        return load_ct_series(paths)

    def model(self, device: str) -> NoduleModel:
        """The loaded networks for ``device`` (loaded once per pipeline instance and device)."""
        if self._model is None or self._device != device:
            self._model, self.version = load_model(self.bundle, device)
            self._device = device
        return self._model

    def warm_up(self, device: str) -> None:
        """Load the bundle for ``device`` (MONAI's import alone takes seconds) and import what the
        candidate features use, ahead of the first study."""
        import skimage.measure
        import skimage.morphology  # noqa: F401

        self.model(device)

    def run(self, volume: Volume, device: str = "cpu") -> Findings:
        """Detect nodules and masses; "nothing found" is an empty findings list with a conclusion, and a
        series outside the model's range (see :mod:`~dicom_node.pipelines.ct_lung_nodule.scope`) is
        "not applicable" with the reason."""
        import torch

        torch_threads = torch.get_num_threads()
        t0 = time.perf_counter()
        model = self.model(device)
        result = Findings(pipeline=self.name, version=self.version)
        result.not_applicable = out_of_range(volume)
        if result.not_applicable:
            return result
        fields = segment_lungs(volume)
        t1 = time.perf_counter()
        result.timings["lung_s"] = t1 - t0
        result.not_applicable = not_a_chest(fields.both, volume.spacing)
        if result.not_applicable:
            return result
        sample = on_working_grid(volume.pixels, fields.both, volume.spacing, WORK_MM)  # noise and level read it
        noise = lung_noise(*sample) if sample is not None else None
        result.not_applicable = too_noisy(noise) or contrast_enhanced(
            vessel_core_hu(volume.pixels, fields.both, volume.spacing)
        )
        if result.not_applicable:
            return result
        level = lung_level(*sample) if sample is not None else None
        min_score = self._min_score
        if min_score is None:
            min_score = float(getattr(model, "min_score", 0.5))
        detections = detect_in_volume(
            model,
            volume.pixels,
            volume.spacing,
            fields.both,
            fields.left,
            fields.right,
            min_score=min_score,
            lung_level=level,
        )
        result.timings["detect_s"] = time.perf_counter() - t1
        kept = [d for d in detections if d.candidate.score >= min_score]
        kept.sort(key=lambda d: -d.candidate.score)
        for i, d in enumerate(kept, start=1):
            result.findings.append(self._finding(volume, fields, d, i, model.resmtnet is not None))
        masses = sum(f.category is Category.MASS for f in result.findings)
        nodules = len(result.findings) - masses
        if masses:
            result.conclusions.append(
                f"{masses} lung mass{'es' if masses > 1 else ''} (30 mm or more) detected; masses are outside the "
                "range the nodule classifier was trained on, so malignancy and composition are not graded."
            )
        if nodules:
            result.conclusions.append(f"{nodules} lung nodule candidate{'s' if nodules > 1 else ''} detected.")
        if not result.findings:
            result.conclusions.append("No lung nodule or mass detected.")
        shift = level_shift(level)
        if level is not None and abs(shift) >= REPORT_SHIFT_HU:
            result.conclusions.append(
                f"Lung parenchyma {level:.0f} HU (median of the aerated lung): mapped to "
                f"{level + shift:.0f} HU before detection ({PHANTOM_LUNG_HU:.0f} HU is the level the model was "
                "trained on; air, soft tissue and the reported HU unchanged)."
            )
        if noise is not None and noise > TARGET_NOISE_HU:
            result.conclusions.append(
                f"Image noise in the lungs {noise:.0f} HU: smoothed to {TARGET_NOISE_HU:.0f} HU before detection "
                "(the noise range the model was trained on)."
            )
        result.timings["total_s"] = time.perf_counter() - t0
        logger.debug("ct_lung_nodule done", extra={"threads": torch_threads, "timings": result.timings})
        return result

    @staticmethod
    def _finding(volume: Volume, fields: LungFields, det: Detection, index: int, classified: bool) -> Finding:
        c = det.candidate
        mask = det.mask
        pixel = (volume.spacing[1], volume.spacing[2])
        k = int(np.argmax(mask.reshape(mask.shape[0], -1).sum(axis=1)))
        long_ax, short_ax = long_short_axes(mask[k], pixel)
        if is_mass(long_ax):
            mask = grow_mass(mask, volume.pixels, volume.spacing, fields.left, fields.right)
            k = int(np.argmax(mask.reshape(mask.shape[0], -1).sum(axis=1)))
            long_ax, short_ax = long_short_axes(mask[k], pixel)
        voxel = float(np.prod(volume.spacing))
        measurements = [
            Measurement(Quantity.LONG_AXIS, long_ax),
            Measurement(Quantity.SHORT_AXIS, short_ax),
            Measurement(Quantity.VOLUME, float(mask.sum()) * voxel),
            Measurement(Quantity.MEAN_HU, float(volume.pixels[mask].mean())),
        ]
        evaluations: dict[Evaluation, str] = {}
        if classified and not is_mass(long_ax):  # Res-MTNet grades nodules; a mass is outside its training range
            measurements.append(Measurement(Quantity.DIAMETER, c.diameter))
            evaluations[Evaluation.MALIGNANCY_LIKELIHOOD] = malignancy_key(c.p_malignant)
            evaluations[Evaluation.COMPOSITION] = max(c.composition, key=lambda n: c.composition[n])
        category = Category.MASS if is_mass(long_ax) else Category.NODULE
        return Finding(
            category=category,
            mask=mask,
            label=f"{category.value} {index}",
            measurements=measurements,
            evaluations=evaluations,
            score=float(np.clip(c.score, 0.0, 1.0)),
            key_slice=k,
        )
