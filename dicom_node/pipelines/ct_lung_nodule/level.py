"""The lung parenchyma's HU level, and bringing a series to the level the networks were trained on.

Every training phantom draws its aerated parenchyma at the same level (-880 HU plus a 60 HU gravity
gradient, :mod:`dicom_node.synth.ct_phantom`): measured as below, the 12 validation phantoms of seed 777
sit at -848 to -846 HU. Real chests differ by inflation, age and scanner calibration: on the working grid
the real 5 mm whole chest in ../shared measures -872 HU, the 8 mm one -830, the LIDC slab -887. The
networks learnt the level along with the anatomy: the real whole chest shifted by -15 HU (every voxel) gave
2 false positives at hilar vessels, and +30 HU none.

:func:`harmonise_level` maps the series' HU monotonically, piecewise-linearly, through three anchors: air
(-1000 HU) stays, the measured parenchyma level goes to :data:`PHANTOM_LUNG_HU`, soft tissue (-100 HU) and
everything denser stay; values below -1000 HU stay too. Solid nodules, vessels and masses are thus left
as they are; ground glass (-700 to -300 HU) moves by the parenchyma's shift times the share of the way to
-100 HU that is left (a scan at -872 HU: -700 moves +19 HU, -500 +13, -300 +6). The shift applied is at
most :data:`MAX_LEVEL_SHIFT_HU` (a lung far from the phantoms' level, emphysema or diffuse disease, is only
partly moved).

The level is the median over aerated parenchyma (lung field under -600 HU once smoothed, eroded by 2
pixels: :func:`dicom_node.pipelines.ct_lung_nodule.noise.lung_noise`'s sample), pooled over up to 8 slices
with the most lung.
"""

from __future__ import annotations

import numpy as np

from dicom_node.pipelines.ct_lung_nodule.noise import (
    MIN_PARENCHYMA_PX,
    parenchyma_mask,
    sampled_slices,
)

PHANTOM_LUNG_HU = -847.0  # median of the 12 validation phantoms of seed 777 (each -848.5..-845.5)
AIR_HU = -1000.0
SOFT_TISSUE_HU = -100.0
MAX_LEVEL_SHIFT_HU = 80.0
REPORT_SHIFT_HU = 5.0  # a shift at least this large is said in the conclusions


def lung_level(hu: np.ndarray, lung: np.ndarray) -> float | None:
    """Median HU of the aerated lung parenchyma (see the module's docstring), or None when no sampled
    slice has a quarter of :data:`MIN_PARENCHYMA_PX` pixels of it."""
    values = []
    for k in sampled_slices(lung):
        parenchyma = parenchyma_mask(hu[k], lung[k])
        if parenchyma.sum() >= MIN_PARENCHYMA_PX // 4:
            values.append(hu[k][parenchyma])
    return float(np.median(np.concatenate(values))) if values else None


def level_shift(level: float | None, target: float = PHANTOM_LUNG_HU) -> float:
    """The parenchyma shift (HU) :func:`remap_level` applies for a measured ``level``: ``target - level``,
    at most :data:`MAX_LEVEL_SHIFT_HU` either way; 0 when the level is unknown."""
    if level is None or not np.isfinite(level):
        return 0.0
    return float(np.clip(target - level, -MAX_LEVEL_SHIFT_HU, MAX_LEVEL_SHIFT_HU))


def remap_level(hu: np.ndarray, level: float, shift: float) -> np.ndarray:
    """``hu`` mapped through the anchors (-1000 -> -1000, ``level`` -> ``level + shift``, -100 -> -100),
    linear between them, unchanged outside [-1000, -100] HU (float32)."""
    hu = np.asarray(hu, dtype=np.float32)
    if shift == 0.0 or not AIR_HU < level < SOFT_TISSUE_HU or not AIR_HU < level + shift < SOFT_TISSUE_HU:
        return hu
    inside = (hu > AIR_HU) & (hu < SOFT_TISSUE_HU)
    mapped = np.interp(hu[inside], [AIR_HU, level, SOFT_TISSUE_HU], [AIR_HU, level + shift, SOFT_TISSUE_HU])
    out = hu.copy()
    out[inside] = mapped.astype(np.float32)
    return out


def harmonise_level(
    hu: np.ndarray, lung: np.ndarray, target: float = PHANTOM_LUNG_HU, level: float | None = None
) -> tuple[np.ndarray, float]:
    """``hu`` with its lung parenchyma brought to ``target`` (:func:`remap_level`), and the shift applied
    (HU; 0 and ``hu`` itself when there is nothing to move). ``level`` is the measured parenchyma level,
    by default :func:`lung_level` of ``hu``."""
    if level is None:
        level = lung_level(hu, lung)
    shift = level_shift(level, target)
    if shift == 0.0 or level is None:
        return hu, 0.0
    return remap_level(hu, level, shift), shift
