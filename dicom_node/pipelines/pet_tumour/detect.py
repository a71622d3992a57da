"""From SUV (and CT) on the PET grid to a tumour label volume, by the network or a baseline method.

The network's regions go through two anatomical rules when a CT is paired. A region lying mostly outside the
torso (the largest body outline of its axial CT slice, lungs included) is dropped. The arms lie outside it, and
with them the injection site in the antecubital vein, the most frequent physiological call after brown fat;
an arm that touches the torso on the CT is part of the outline, so the rule then keeps what it would have
dropped (it errs towards calling). A second rule drops brown fat: a focus in fat on the CT whose mirror image
across the midline also holds hot fat (:func:`without_symmetric_fat`). Without a CT no rule applies.
"""

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


BODY_HU = -500.0  # CT above this is body (below: air, and the lungs, which the outline fills in)
TORSO_SHARE = 0.5  # a region with less than this share of its voxels in the torso is dropped


def torso_mask(ct: np.ndarray) -> np.ndarray:
    """Per axial slice, the largest connected body outline (HU > :data:`BODY_HU`, holes filled)."""
    out = np.zeros(ct.shape, dtype=bool)
    for k in range(ct.shape[0]):
        body = ndi.binary_fill_holes(ct[k] > BODY_HU)
        labels, count = ndi.label(body)
        if count == 0:
            continue
        sizes = np.bincount(labels.ravel())[1:]
        out[k] = labels == 1 + int(np.argmax(sizes))
    return out


def inside_torso(mask: np.ndarray, ct: np.ndarray | None, torso: np.ndarray | None = None) -> np.ndarray:
    """``mask`` without its regions that lie mostly outside the torso (unchanged without a CT); ``torso`` the
    CT's :func:`torso_mask` when already computed."""
    if ct is None or not mask.any():
        return mask
    labels, count = regions(mask)
    if count == 0:
        return mask
    torso = torso_mask(ct) if torso is None else torso
    share = ndi.mean(torso.astype(np.float32), labels, index=np.arange(1, count + 1))
    keep = np.concatenate([[False], np.asarray(share) >= TORSO_SHARE])
    return np.asarray(keep[labels])


FAT_HU = (-150.0, -30.0)  # fat density on CT (brown fat is fat: about -70 HU; nodes and organs are above 0)
HOT_SUV = 2.5
FAT_CORE = 6  # fat-density voxels, of the 27 around the hottest one, that make a focus fat (not a lung nodule)
MIRROR_BOX = (8, 8, 6)  # slices, rows, columns (voxels) searched around the mirror image of a focus


def without_symmetric_fat(
    mask: np.ndarray, suv: np.ndarray, ct: np.ndarray | None, torso: np.ndarray | None = None
) -> np.ndarray:
    """``mask`` without its brown fat: regions whose hottest voxel sits in fat on the CT (at least
    :data:`FAT_CORE` of the 27 voxels around it of fat density, HU in :data:`FAT_HU`) and whose mirror image
    across the body's midline (the torso's centre column on that slice) also holds hot fat-density uptake
    (SUV >= :data:`HOT_SUV`), the bilateral pattern of activated brown fat. A small lung nodule, whose CT value
    the 4 mm voxels average down into the fat range at its centre only, and a fat-density focus on one side
    only are kept. Unchanged without a CT."""
    if ct is None or not mask.any():
        return mask
    labels, count = regions(mask)
    if count == 0:
        return mask
    torso = torso_mask(ct) if torso is None else torso
    fat = (ct >= FAT_HU[0]) & (ct <= FAT_HU[1])
    hot_fat = fat & (suv >= HOT_SUV) & torso
    keep = np.ones(count + 1, dtype=bool)
    keep[0] = False
    dk, dr, dc = MIRROR_BOX
    for i, sl in enumerate(ndi.find_objects(labels), start=1):
        if sl is None:
            continue
        local = np.where(labels[sl] == i, suv[sl], -np.inf)
        k, r, c = (int(a) + s.start for a, s in zip(np.unravel_index(np.argmax(local), local.shape), sl, strict=True))
        core = fat[max(0, k - 1) : k + 2, max(0, r - 1) : r + 2, max(0, c - 1) : c + 2]
        if not fat[k, r, c] or int(core.sum()) < FAT_CORE or not torso[k].any():
            continue
        cols = np.nonzero(torso[k].any(axis=0))[0]
        mirror = int(cols[0] + cols[-1] - c)
        if abs(mirror - c) < 2 * dc:
            continue  # on the midline: no other side
        box = hot_fat[max(0, k - dk) : k + dk + 1, max(0, r - dr) : r + dr + 1, max(0, mirror - dc) : mirror + dc + 1]
        if box.any():
            keep[i] = False
    return np.asarray(keep[labels])


def anatomy_rules(
    mask: np.ndarray, ct: np.ndarray | None, suv: np.ndarray | None = None, torso: np.ndarray | None = None
) -> np.ndarray:
    """``mask`` after the rules (with a CT): the torso rule and, given ``suv``, the symmetric brown fat rule;
    ``torso`` the CT's :func:`torso_mask` when already computed (it is computed once for both otherwise)."""
    if ct is not None and torso is None:
        torso = torso_mask(ct)
    mask = inside_torso(mask, ct, torso)
    return mask if suv is None else without_symmetric_fat(mask, suv, ct, torso)


def network_regions(
    prob: np.ndarray, ct: np.ndarray | None, net: TumourNet, suv: np.ndarray | None = None
) -> np.ndarray:
    """The network's tumour mask from its probabilities: hysteresis at the bundle's thresholds, then
    :func:`anatomy_rules`."""
    return anatomy_rules(hysteresis(prob, net.threshold, net.seed_threshold), ct, suv)


def network_mask(
    net: TumourNet, suv: np.ndarray, ct: np.ndarray | None, spacing: tuple[float, float, float]
) -> np.ndarray:
    """The network's tumour mask on the PET grid (the bundle's thresholds, the torso rule with a CT)."""
    return network_regions(network_probabilities(net, suv, ct, spacing), ct, net, suv)


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
