"""From SUV (and CT) on the PET grid to a tumour label volume, by the network or a baseline method."""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from dicom_node.pipelines.pet_tumour.baselines import percent40, regions, suv25
from dicom_node.pipelines.pet_tumour.model import TumourNet, from_work_grid, to_work_grid

MIN_VOXELS = 2  # a region of fewer PET voxels is noise, not a lesion
MIN_SUVMAX = 2.0  # nor is a region whose hottest voxel is below this SUVbw


def network_probabilities(
    net: TumourNet, suv: np.ndarray, ct: np.ndarray | None, spacing: tuple[float, float, float]
) -> np.ndarray:
    """The network's tumour probability on the PET grid."""
    work_suv = to_work_grid(suv, spacing)
    work_ct = to_work_grid(ct, spacing) if ct is not None else np.zeros_like(work_suv)
    return from_work_grid(net.probabilities(work_suv, work_ct), suv.shape)


def hysteresis(prob: np.ndarray, threshold: float, seed_threshold: float) -> np.ndarray:
    """Regions of ``prob >= threshold`` that reach ``seed_threshold`` somewhere."""
    labels, count = regions(prob >= threshold)
    if count == 0 or seed_threshold <= threshold:
        return np.asarray(labels > 0)
    peaks = ndi.maximum(prob, labels, index=np.arange(1, count + 1))
    keep = np.concatenate([[False], np.asarray(peaks) >= seed_threshold])
    return np.asarray(keep[labels])


def network_mask(
    net: TumourNet, suv: np.ndarray, ct: np.ndarray | None, spacing: tuple[float, float, float]
) -> np.ndarray:
    """The network's tumour mask on the PET grid (the bundle's threshold and seed threshold)."""
    return hysteresis(network_probabilities(net, suv, ct, spacing), net.threshold, net.seed_threshold)


def method_mask(
    method: str,
    suv: np.ndarray,
    ct: np.ndarray | None,
    spacing: tuple[float, float, float],
    net: TumourNet | None,
) -> np.ndarray:
    """The raw mask of ``method`` ("network", "suv25" or "percent40")."""
    if method == "network":
        if net is None:
            raise ValueError("the network method needs a loaded bundle")
        return network_mask(net, suv, ct, spacing)
    if method == "suv25":
        return suv25(suv)
    if method == "percent40":
        return percent40(suv)
    raise ValueError(f"unknown method {method!r}: network, suv25 or percent40")


def lesion_labels(mask: np.ndarray, suv: np.ndarray) -> tuple[np.ndarray, int]:
    """Connected lesions of ``mask`` (at least :data:`MIN_VOXELS`, SUVmax >= :data:`MIN_SUVMAX`), numbered
    from the hottest: label volume and count."""
    labels, count = regions(mask)
    keep: list[tuple[float, int]] = []
    for i in range(1, count + 1):
        region = labels == i
        if int(region.sum()) < MIN_VOXELS:
            continue
        peak = float(suv[region].max())
        if peak >= MIN_SUVMAX:
            keep.append((peak, i))
    out = np.zeros(mask.shape, dtype=np.int32)
    for n, (_, i) in enumerate(sorted(keep, reverse=True), start=1):
        out[labels == i] = n
    return out, len(keep)
