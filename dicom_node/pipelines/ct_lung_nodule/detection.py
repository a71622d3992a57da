"""Running a :class:`NoduleModel` on an HU volume with its lung mask: crop, resample to the working grid,
detect, and map each candidate's mask back onto the volume's grid."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dicom_node.imaging.series import normalize_hu, resample_inplane, resize_to
from dicom_node.pipelines.ct_lung_nodule.candidates import WORK_MM, Candidate, search_region
from dicom_node.pipelines.ct_lung_nodule.level import PHANTOM_LUNG_HU, harmonise_level
from dicom_node.pipelines.ct_lung_nodule.model import NoduleModel
from dicom_node.pipelines.ct_lung_nodule.noise import TARGET_NOISE_HU, harmonise
from dicom_node.pipelines.ct_lung_nodule.scope import inside_lungs, inside_lungs_local

MALIGNANCY_CUTS = (0.3, 0.7)


@dataclass
class Detection:
    """A candidate mapped back onto the original volume grid."""

    candidate: Candidate
    mask: np.ndarray  # bool, original volume shape


def detect_in_volume(
    model: NoduleModel,
    hu: np.ndarray,
    spacing: tuple[float, float, float],
    lung: np.ndarray,
    left: np.ndarray | None = None,
    right: np.ndarray | None = None,
    margin_mm: float = 8.0,
    min_score: float = 0.0,
    lung_rule: bool = True,
    noise_target: float | None = TARGET_NOISE_HU,
    level_target: float | None = PHANTOM_LUNG_HU,
    lung_level: float | None = None,
) -> list[Detection]:
    """Run ``model`` on an HU volume with its lung mask.

    On the working grid, the lung parenchyma is first brought to ``level_target``
    (:func:`~dicom_node.pipelines.ct_lung_nodule.level.harmonise_level`, from the measured ``lung_level``, by
    default measured there; None leaves the HU as they are), then a series noisier than ``noise_target`` is
    smoothed in-plane down to it (:func:`~dicom_node.pipelines.ct_lung_nodule.noise.harmonise`; None leaves
    it as it is).
    Masks of the candidates scoring at least ``min_score`` come back on the volume's grid; with ``lung_rule``
    a candidate that is not inside the lungs (:func:`~dicom_node.pipelines.ct_lung_nodule.scope.inside_lungs`)
    is dropped.
    """
    region = search_region(lung, left, right)
    if not region.any():
        return []
    idx = np.nonzero(region)
    my = int(np.ceil(margin_mm / spacing[1]))
    mx = int(np.ceil(margin_mm / spacing[2]))
    z0, z1 = int(idx[0].min()), int(idx[0].max()) + 1
    y0, y1 = max(int(idx[1].min()) - my, 0), min(int(idx[1].max()) + my + 1, hu.shape[1])
    x0, x1 = max(int(idx[2].min()) - mx, 0), min(int(idx[2].max()) + mx + 1, hu.shape[2])
    crop = hu[z0:z1, y0:y1, x0:x1]
    zoom = (spacing[1] / WORK_MM, spacing[2] / WORK_MM)
    work = resample_inplane(crop, zoom, order=1)
    reg_w = resample_inplane(region[z0:z1, y0:y1, x0:x1].astype(np.float32), zoom, order=1) >= 0.5
    work_spacing = (
        spacing[0],
        crop.shape[1] * spacing[1] / work.shape[1],
        crop.shape[2] * spacing[2] / work.shape[2],
    )
    lung_w = resample_inplane(lung[z0:z1, y0:y1, x0:x1].astype(np.float32), zoom, order=1) >= 0.5
    if level_target is not None:
        work, _ = harmonise_level(work, lung_w, level_target, lung_level)
    if noise_target is not None:
        work, _ = harmonise(work, lung_w, noise_target)
    keep = None
    if lung_rule:  # applied on the working grid first (before the networks), then on the volume's grid

        def keep(c: Candidate) -> bool:
            return inside_lungs_local(c.box, c.local, lung_w, work_spacing)

    cands = model.detect(normalize_hu(work), reg_w, work_spacing, keep=keep)
    out = []
    fy, fx = crop.shape[1] / work.shape[1], crop.shape[2] / work.shape[2]
    for c in cands:
        if c.score < min_score:
            continue
        bz, by, bx = c.box
        # Native rows/cols covered by the working box (pixel edges scaled), then the local mask resized.
        ny0, ny1 = int(np.floor(by.start * fy)), min(int(np.ceil(by.stop * fy)), crop.shape[1])
        nx0, nx1 = int(np.floor(bx.start * fx)), min(int(np.ceil(bx.stop * fx)), crop.shape[2])
        local = resize_to(c.local.astype(np.float32), (ny1 - ny0, nx1 - nx0), order=1)
        back = local >= 0.5
        if not back.any():
            back = resize_to(c.local.astype(np.float32), (ny1 - ny0, nx1 - nx0), order=0) > 0
        full = np.zeros(hu.shape, dtype=bool)
        full[z0 + bz.start : z0 + bz.stop, y0 + ny0 : y0 + ny1, x0 + nx0 : x0 + nx1] = back
        if lung_rule and not inside_lungs(full, lung, spacing):
            continue
        out.append(Detection(candidate=c, mask=full))
    return out


def malignancy_key(p: float) -> str:
    """ "low" / "intermediate" / "high" from the malignancy probability."""
    if p < MALIGNANCY_CUTS[0]:
        return "low"
    if p < MALIGNANCY_CUTS[1]:
        return "intermediate"
    return "high"
