"""The standard threshold methods the network is compared with (and can be run as, by option).

- ``suv25``: every voxel with SUVbw >= 2.5 (fixed threshold), split into connected regions.
- ``percent40``: every region of SUVbw >= 2.5, re-thresholded at 40% of its own SUVmax inside the region
  dilated by two voxels (the iso-contour most PET software offers).
- ``percist``: PERCIST-style liver-referenced threshold 1.5 x liver mean + 2 x liver SD (Wahl et al. 2009),
  measured in a 3 cm sphere in the right liver lobe; a region counts when it reaches the threshold.

None of them knows anatomy: the brain, myocardium, kidneys, bladder and injection site are "lesions" to them.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

STRUCTURE = np.ones((3, 3, 3), dtype=bool)  # 26-connectivity


def regions(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """Connected regions (26-connectivity) of ``mask``: label volume and count."""
    labels, count = ndi.label(mask, structure=STRUCTURE)
    return labels.astype(np.int32), int(count)


def suv25(suv: np.ndarray, threshold: float = 2.5) -> np.ndarray:
    """Fixed SUV threshold."""
    return np.asarray(suv >= threshold)


def percent40(suv: np.ndarray, fraction: float = 0.4, seed_threshold: float = 2.5) -> np.ndarray:
    """40% of each region's SUVmax (regions from the fixed threshold, grown by two voxels at most)."""
    labels, count = regions(suv >= seed_threshold)
    out = np.zeros(suv.shape, dtype=bool)
    for i, sl in enumerate(ndi.find_objects(labels), start=1):
        if sl is None:
            continue
        grown = tuple(slice(max(0, s.start - 2), s.stop + 2) for s in sl)
        inside = ndi.binary_dilation(labels[grown] == i, STRUCTURE, iterations=2)
        local = suv[grown]
        peak = float(local[labels[grown] == i].max())
        out[grown] |= inside & (local >= fraction * peak)
    del count
    return out


def liver_reference(
    suv: np.ndarray, center_index: tuple[float, float, float], spacing: tuple[float, ...]
) -> tuple[float, float]:
    """Mean and SD of SUV in a 3 cm sphere centred at ``center_index`` (slice, row, col)."""
    zz, yy, xx = np.ogrid[: suv.shape[0], : suv.shape[1], : suv.shape[2]]
    k, r, c = center_index
    dist2 = ((zz - k) * spacing[0]) ** 2 + ((yy - r) * spacing[1]) ** 2 + ((xx - c) * spacing[2]) ** 2
    sphere = dist2 <= 15.0**2
    if not sphere.any():
        raise ValueError("the liver reference sphere lies outside the image")
    values = suv[sphere]
    return float(values.mean()), float(values.std())


def percist(suv: np.ndarray, liver_mean: float, liver_sd: float) -> np.ndarray:
    """Voxels above the PERCIST threshold 1.5 x liver mean + 2 x SD."""
    return np.asarray(suv >= 1.5 * liver_mean + 2.0 * liver_sd)


METHODS = ("network", "suv25", "percent40")
