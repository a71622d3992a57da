"""Image noise in the lungs, and bringing a noisy series into the range the networks were trained on.

The networks learnt on phantoms whose lung noise, measured on the working grid as below, is 5-21 HU. Real
chest CT is often noisier (lung kernels, low dose): the real 5 mm whole chest in ../shared measures 30 HU.
On it, noise added on purpose (a scratch experiment, the same scan with correlated Gaussian noise) made the
model lose the 69 mm tumour at 63 HU (native grid) and report 3 false positives at 101 HU; smoothing the
working grid back to :data:`TARGET_NOISE_HU` first kept the tumour at every level tried (up to 101 HU).

The noise is a robust standard deviation (1.4826 x MAD) of each voxel's difference from its 3x3 in-plane
median, over aerated lung parenchyma (lung field under -600 HU once smoothed, eroded by 2 pixels so that no
edge counts), the median over up to :data:`SAMPLE_SLICES` slices with enough lung.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from dicom_node.imaging.series import resample_inplane

TARGET_NOISE_HU = 20.0  # the noisiest training phantoms measure 21 HU (validation seed 777: 5-21)
MAX_NOISE_HU = 120.0  # over this the series is refused (see scope.too_noisy)
SAMPLE_SLICES = 8
MIN_PARENCHYMA_PX = 2000
_MAX_SIGMA_PX = 3.0


def sampled_slices(lung: np.ndarray) -> list[int]:
    """Up to :data:`SAMPLE_SLICES` slices spread over those with the most lung field."""
    counts = lung.reshape(lung.shape[0], -1).sum(axis=1)
    usable = [int(k) for k in np.nonzero(counts >= MIN_PARENCHYMA_PX)[0]]
    step = max(1, len(usable) // SAMPLE_SLICES)
    return usable[::step][:SAMPLE_SLICES]


def parenchyma_mask(image: np.ndarray, lung: np.ndarray) -> np.ndarray:
    """Aerated parenchyma of one slice: lung field under -600 HU once smoothed (so that noise does not
    riddle it), eroded by 2 pixels."""
    aerated = ndi.gaussian_filter(image, 1.5) < -600
    return np.asarray(ndi.binary_erosion(lung & aerated, structure=np.ones((5, 5), bool)))


def _slice_noise(image: np.ndarray, parenchyma: np.ndarray) -> float:
    if parenchyma.sum() < MIN_PARENCHYMA_PX // 4:
        return float("nan")
    rows, cols = np.nonzero(parenchyma)
    box = (slice(max(rows.min() - 1, 0), rows.max() + 2), slice(max(cols.min() - 1, 0), cols.max() + 2))
    diff = (image[box] - ndi.median_filter(image[box], size=(3, 3)))[parenchyma[box]]
    return float(1.4826 * np.median(np.abs(diff - np.median(diff))))


def lung_noise(hu: np.ndarray, lung: np.ndarray) -> float | None:
    """The lung parenchyma's noise in HU (see the module's docstring), or None when no slice has
    :data:`MIN_PARENCHYMA_PX` pixels of it."""
    values = [_slice_noise(hu[k], parenchyma_mask(hu[k], lung[k])) for k in sampled_slices(lung)]
    values = [v for v in values if np.isfinite(v)]
    return float(np.median(values)) if values else None


def on_working_grid(
    hu: np.ndarray, lung: np.ndarray, spacing: tuple[float, float, float], pixel_mm: float
) -> tuple[np.ndarray, np.ndarray] | None:
    """The :func:`sampled_slices` of ``hu`` and ``lung`` resampled in-plane to ``pixel_mm`` pixels, as the
    networks' working grid shows them (None when no slice holds lung)."""
    slices = sampled_slices(lung)
    if not slices:
        return None
    zoom = (spacing[1] / pixel_mm, spacing[2] / pixel_mm)
    work = resample_inplane(hu[slices], zoom, order=1)
    return work, resample_inplane(lung[slices].astype(np.float32), zoom, order=1) >= 0.5


def smoothing_for(hu: np.ndarray, lung: np.ndarray, target: float = TARGET_NOISE_HU) -> float:
    """The in-plane Gaussian sigma (pixels) that brings :func:`lung_noise` down to ``target``; 0 when it
    is there already (found by bisection on the sampled slices alone, to 0.05 pixel)."""
    slices = sampled_slices(lung)
    parenchyma = {k: parenchyma_mask(hu[k], lung[k]) for k in slices}
    slices = [k for k in slices if parenchyma[k].sum() >= MIN_PARENCHYMA_PX // 4]
    if not slices:
        return 0.0

    def noise_at(sigma: float) -> float:
        values = []
        for k in slices:
            image = ndi.gaussian_filter(hu[k], sigma) if sigma > 0 else hu[k]
            values.append(_slice_noise(image, parenchyma[k]))
        return float(np.median(values))

    if noise_at(0.0) <= target:
        return 0.0
    lo, hi = 0.0, _MAX_SIGMA_PX
    while hi - lo > 0.05:
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if noise_at(mid) > target else (lo, mid)
    return hi


def harmonise(hu: np.ndarray, lung: np.ndarray, target: float = TARGET_NOISE_HU) -> tuple[np.ndarray, float]:
    """``hu`` smoothed in-plane just enough that its lung noise is ``target`` (unchanged when it is not
    over it), and the sigma used (pixels)."""
    sigma = smoothing_for(hu, lung, target)
    if sigma <= 0:
        return hu, 0.0
    smoothed = ndi.gaussian_filter(hu.astype(np.float32, copy=False), (0.0, sigma, sigma))
    return np.asarray(smoothed, dtype=np.float32), sigma
