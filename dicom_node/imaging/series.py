"""Grid helpers shared by the CT pipelines and their training: in-plane resampling and HU scaling."""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

HU_WINDOW = (-1000.0, 500.0)


def normalize_hu(hu: np.ndarray) -> np.ndarray:
    """HU clipped to :data:`HU_WINDOW` and scaled to [0, 1] (float32): the networks' input scale."""
    lo, hi = HU_WINDOW
    return ((np.clip(hu, lo, hi) - lo) / (hi - lo)).astype(np.float32)


def inplane_zoom(spacing: tuple[float, float, float], target_mm: float) -> tuple[float, float]:
    """Zoom factors (rows, cols) that bring ``spacing`` to ``target_mm`` pixels."""
    return spacing[1] / target_mm, spacing[2] / target_mm


def resample_inplane(volume: np.ndarray, zoom: tuple[float, float], order: int = 1) -> np.ndarray:
    """Resample every slice of a (slices, rows, cols) array by ``zoom`` (no change along slices)."""
    if abs(zoom[0] - 1.0) < 1e-3 and abs(zoom[1] - 1.0) < 1e-3:
        return np.asarray(volume)
    return np.asarray(ndi.zoom(volume, (1.0, zoom[0], zoom[1]), order=order, mode="nearest", prefilter=False))


def resize_to(volume: np.ndarray, shape: tuple[int, int], order: int = 1) -> np.ndarray:
    """Resample every slice of ``volume`` to exactly ``shape`` (rows, cols): the inverse of a zoom."""
    if volume.shape[1:] == shape:
        return np.asarray(volume)
    factors = (1.0, shape[0] / volume.shape[1], shape[1] / volume.shape[2])
    out = ndi.zoom(volume, factors, order=order, mode="nearest", prefilter=False, grid_mode=True)
    return np.asarray(out[:, : shape[0], : shape[1]])


def neighbours(volume: np.ndarray, k: int, offset: int = 1) -> np.ndarray:
    """Slices k-offset, k, k+offset (edges repeated): the 2.5-D input of slice ``k``, (3, rows, cols)."""
    n = volume.shape[0]
    idx = [min(max(k + d, 0), n - 1) for d in (-offset, 0, offset)]
    return np.stack([volume[i] for i in idx])


def stack_25d(volume: np.ndarray, offset: int = 1) -> np.ndarray:
    """All 2.5-D inputs of a volume at once, shape (slices, 3, rows, cols)."""
    n = volume.shape[0]
    lo = np.clip(np.arange(n) - offset, 0, n - 1)
    hi = np.clip(np.arange(n) + offset, 0, n - 1)
    return np.stack([volume[lo], volume, volume[hi]], axis=1)
