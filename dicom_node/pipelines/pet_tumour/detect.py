"""From SUV (and CT) on the PET grid to a tumour label volume, by the network or a baseline method.

The network's regions go through two anatomical rules when a CT is paired. A region lying mostly outside the
torso (the largest body outline of its axial CT slice, lungs included) is dropped. The arms lie outside it, and
with them the injection site in the antecubital vein, the most frequent physiological call after brown fat;
an arm that touches the torso on the CT is part of the outline, so the rule then keeps what it would have
dropped (it errs towards calling). A second rule drops brown fat: a focus in fat on the CT whose mirror image
across the midline also holds hot fat (:func:`without_symmetric_fat`). Without a CT no rule applies.
The regions that remain get their boundary redrawn on the SUV (:func:`refine_boundaries`, PET only too) when
the bundle gives a refinement fraction.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from dicom_node.pipelines.pet_tumour.baselines import STRUCTURE, percent40, regions, suv25
from dicom_node.pipelines.pet_tumour.model import WORK_MM, TumourNet, from_work_grid, to_work_grid

MIN_VOXELS = 2  # a region of fewer PET voxels is noise, not a lesion
MIN_SUVMAX = 2.0  # nor is a region whose hottest voxel is below this SUVbw


def network_probabilities(
    net: TumourNet, suv: np.ndarray, ct: np.ndarray | None, spacing: tuple[float, float, float]
) -> np.ndarray:
    """The network's tumour probability on the PET grid."""
    work_suv = to_work_grid(suv, spacing)
    work_ct = to_work_grid(ct, spacing) if ct is not None else np.zeros_like(work_suv)
    return from_work_grid(net.probabilities(work_suv, work_ct), suv.shape)


CONTRAST_SEED = 0.8  # a region peaking this high but under the seed threshold is kept when it is also...
CONTRAST_RATIO = 2.0  # ...this many times hotter (SUVmax) than the median of the 2 voxels around it


def hysteresis(prob: np.ndarray, threshold: float, seed_threshold: float, suv: np.ndarray | None = None) -> np.ndarray:
    """Regions of ``prob >= threshold`` that reach ``seed_threshold`` somewhere; given ``suv``, also those that
    reach :data:`CONTRAST_SEED` and whose SUVmax (at least :data:`MIN_SUVMAX`) is :data:`CONTRAST_RATIO` times
    their surroundings' (:func:`surroundings_ratio`).

    The second way in was chosen on the validation phantoms (60 scans): regions peaking at 0.8-0.98 held 6
    tumours the seed threshold lost (small nodes and lung nodules, a 15 mm liver lesion of SUVmax 6.4 in a
    liver of 2.7) and 11 physiological foci, of which the contrast rule keeps 4 (focal soft-tissue uptake);
    blood pool, myocardium, bowel and liver, at 1.3-1.8 times their surroundings, stay out."""
    labels, count = regions(prob >= threshold)
    if count == 0 or seed_threshold <= threshold:
        return np.asarray(labels > 0)
    inside = labels > 0
    peaks = np.full(count + 1, -np.inf)
    np.maximum.at(peaks, labels[inside], prob[inside])  # only the labelled voxels (ndi.maximum sorts them all)
    keep = peaks >= seed_threshold
    keep[0] = False
    if suv is not None:
        for i, sl in enumerate(ndi.find_objects(labels), start=1):
            if sl is not None and CONTRAST_SEED <= peaks[i] < seed_threshold:
                keep[i] = surroundings_ratio(labels, i, sl, suv) >= CONTRAST_RATIO
    return np.asarray(keep[labels])


def surroundings_ratio(labels: np.ndarray, index: int, box: tuple[slice, ...], suv: np.ndarray) -> float:
    """SUVmax of region ``index`` over the median SUV of the 2-voxel shell around it (0 when its SUVmax is under
    :data:`MIN_SUVMAX`)."""
    near = tuple(slice(max(0, s.start - 3), min(n, s.stop + 3)) for s, n in zip(box, labels.shape, strict=True))
    own = labels[near] == index
    peak = float(suv[near][own].max())
    if peak < MIN_SUVMAX:
        return 0.0
    shell = ndi.binary_dilation(own, STRUCTURE, iterations=2) & ~own
    return peak / max(float(np.median(suv[near][shell])), 0.1)


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
    labels, count = regions(mask)  # count >= 1: the mask has a voxel
    torso = torso_mask(ct) if torso is None else torso
    inside = labels > 0
    voxels = np.bincount(labels[inside], minlength=count + 1)
    in_torso = np.bincount(labels[inside], weights=torso[inside].astype(np.float64), minlength=count + 1)
    keep = in_torso >= TORSO_SHARE * np.maximum(voxels, 1)
    keep[0] = False
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
    labels, count = regions(mask)  # count >= 1: the mask has a voxel
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


REFINE_FRACTION = 0.35  # boundary at this share of the way from the local background up to the lesion's SUVmax
REFINE_REACH_MM = 4.0  # a refined lesion reaches at most this far beyond the network's region (one 4 mm voxel)
BACKGROUND_SHELL = 2  # voxels: the shell around the reach where the local background is measured
KEEP_SHARE = 0.5  # a contour keeping less than this share of the network's region is not trusted


def _ball(spacing: tuple[float, float, float], radius_mm: float) -> np.ndarray:
    """A structuring element: the voxels within ``radius_mm`` of the centre voxel (at least the centre)."""
    half = [max(0, int(np.floor(radius_mm / s))) for s in spacing]
    zz, yy, xx = np.ogrid[-half[0] : half[0] + 1, -half[1] : half[1] + 1, -half[2] : half[2] + 1]
    dist2 = (zz * spacing[0]) ** 2 + (yy * spacing[1]) ** 2 + (xx * spacing[2]) ** 2
    return np.asarray(dist2 <= radius_mm**2 + 1e-6)


def refine_boundaries(
    mask: np.ndarray,
    suv: np.ndarray,
    spacing: tuple[float, float, float],
    fraction: float = REFINE_FRACTION,
    reach_mm: float = REFINE_REACH_MM,
) -> np.ndarray:
    """Each region of ``mask`` redrawn on the SUV: the voxels of SUV >= background + ``fraction`` x (SUVmax -
    background) that are connected to the region, within ``reach_mm`` of it, and not hotter than its SUVmax.

    The background is the median SUV of a :data:`BACKGROUND_SHELL`-voxel shell around that reach (other regions
    of the mask left out). The network draws a lesion's extent only roughly (a large faint node as its hot core,
    a small hot one with a rim of blur); the iso-contour between the lesion's own peak and its surroundings is
    where a uniform lesion's edge lies after the PET blur. The reach keeps a hot physiological neighbour from
    being absorbed, and so does the cap at the lesion's SUVmax (uptake hotter than the lesion is not the lesion).
    A region whose contour would keep less than :data:`KEEP_SHARE` of it (or fewer than :data:`MIN_VOXELS`
    voxels) is kept as the network drew it: that happens when a hot neighbour (the myocardium next to a lung
    tumour) gives both the region's SUVmax and most of its surroundings, and the contour then holds the
    neighbour's edge instead of the lesion."""
    if fraction <= 0.0 or not mask.any():
        return mask
    labels, _ = regions(mask)
    reach = _ball(spacing, reach_mm)
    pad = [h // 2 + BACKGROUND_SHELL + 1 for h in reach.shape]
    out = np.zeros(mask.shape, dtype=bool)
    for i, sl in enumerate(ndi.find_objects(labels), start=1):
        if sl is None:
            continue
        box = tuple(slice(max(0, s.start - p), min(n, s.stop + p)) for s, p, n in zip(sl, pad, mask.shape, strict=True))
        local, own = suv[box], labels[box] == i
        others = (labels[box] > 0) & ~own
        zone = ndi.binary_dilation(own, reach) & ~others
        shell = ndi.binary_dilation(zone, STRUCTURE, iterations=BACKGROUND_SHELL) & ~zone & ~others
        peak = float(local[own].max())
        background = float(np.median(local[shell])) if shell.any() else 0.0
        level = background + fraction * (peak - background)
        candidate = zone & (local >= level) & (local <= peak)
        parts, _ = regions(candidate)
        touching = np.unique(parts[own & candidate])
        refined = np.isin(parts, touching[touching > 0])
        kept = int((refined & own).sum())
        out[box] |= refined if kept >= max(MIN_VOXELS, KEEP_SHARE * int(own.sum())) else own
    return out


def network_regions(
    prob: np.ndarray,
    ct: np.ndarray | None,
    net: TumourNet,
    suv: np.ndarray | None = None,
    spacing: tuple[float, float, float] | None = None,
) -> np.ndarray:
    """The network's tumour mask from its probabilities: hysteresis at the bundle's thresholds, then
    :func:`anatomy_rules`, then (given ``suv``, on a grid of ``spacing``, 4 mm when not given) each region's
    boundary by :func:`refine_boundaries` at the bundle's ``refine_fraction`` (none when it is 0)."""
    mask = anatomy_rules(hysteresis(prob, net.threshold, net.seed_threshold, suv), ct, suv)
    if suv is None:
        return mask
    return refine_boundaries(mask, suv, spacing or (WORK_MM, WORK_MM, WORK_MM), net.refine_fraction)


def network_mask(
    net: TumourNet, suv: np.ndarray, ct: np.ndarray | None, spacing: tuple[float, float, float]
) -> np.ndarray:
    """The network's tumour mask on the PET grid (the bundle's thresholds, the torso rule with a CT)."""
    return network_regions(network_probabilities(net, suv, ct, spacing), ct, net, suv, spacing)


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
