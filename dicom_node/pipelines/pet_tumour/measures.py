"""Per-lesion PET quantities: SUVmax, SUVmean, SUVpeak (1 ml sphere), MTV (ml) and TLG (g).

SUVpeak follows PERCIST: the highest mean SUV of a 1 ml sphere (radius 6.2 mm) centred on a voxel of the
lesion; the sphere's mean is taken over the voxels whose centres lie in it (the sphere may reach outside the
lesion, as in PERCIST). MTV is the lesion's voxel count times the voxel volume; TLG = SUVmean x MTV.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

PEAK_RADIUS_MM = float((3.0 / (4.0 * np.pi)) ** (1.0 / 3.0) * 10.0)  # 1 ml sphere: 6.2 mm


@dataclass(frozen=True)
class LesionStats:
    """SUVbw statistics (g/ml), MTV (ml), TLG (g) of one lesion mask."""

    suv_max: float
    suv_mean: float
    suv_peak: float
    mtv_ml: float
    tlg_g: float


def sphere_kernel(spacing: tuple[float, float, float], radius_mm: float = PEAK_RADIUS_MM) -> np.ndarray:
    """Voxels (as a boolean kernel) whose centres lie within ``radius_mm`` of the centre voxel."""
    half = [int(np.floor(radius_mm / s)) for s in spacing]
    zz, yy, xx = np.ogrid[-half[0] : half[0] + 1, -half[1] : half[1] + 1, -half[2] : half[2] + 1]
    return np.asarray((zz * spacing[0]) ** 2 + (yy * spacing[1]) ** 2 + (xx * spacing[2]) ** 2 <= radius_mm**2)


def lesion_stats(suv: np.ndarray, mask: np.ndarray, spacing: tuple[float, float, float]) -> LesionStats:
    """The quantities of one lesion (``mask`` non-empty, same shape as ``suv``)."""
    if not mask.any():
        raise ValueError("empty lesion mask")
    values = suv[mask]
    voxel_ml = float(np.prod(spacing)) / 1000.0
    mtv = float(mask.sum()) * voxel_ml
    mean = float(values.mean())
    sl = ndi.find_objects(mask.astype(np.uint8))[0]
    kernel = sphere_kernel(spacing)
    pad = [k // 2 for k in kernel.shape]
    box = tuple(slice(max(0, s.start - p), s.stop + p) for s, p in zip(sl, pad, strict=True))
    local = suv[box].astype(np.float64)
    sums = ndi.convolve(local, kernel.astype(np.float64), mode="constant", cval=0.0)
    counts = ndi.convolve(np.ones_like(local), kernel.astype(np.float64), mode="constant", cval=0.0)
    means = sums / np.maximum(counts, 1.0)
    peak = float(means[mask[box]].max())
    return LesionStats(float(values.max()), mean, peak, mtv, mean * mtv)
