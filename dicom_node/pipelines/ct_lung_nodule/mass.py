"""A mass outlined whole: the detector's outline of a large lesion grown into the solid tissue around it.

The U-Net was trained on nodules of up to about 30 mm; on a real tumour of 5 cm it outlines the aerated,
ground-glass rim that lies inside the lung field and misses the solid part that the lung field leaves out
(solid tissue touching the chest wall or the mediastinum is not a hole in the lung). A mass is therefore
grown, within :data:`GROW_MM` of the detector's outline, into soft-tissue voxels (:data:`SOLID_HU`) that the
lung field left out and that lie inside the per-slice convex hull of the same lung, so that chest wall, spine
and the other side's mediastinum stay out, and so do the vessels next to a mass inside the lung (there the
detector's outline is trusted). On the real adenocarcinoma in ../shared this raised the share of the outline
inside the tumour's box from 0.51 to 0.70 and the share of the box covered from 0.08 to 0.25 (the rest of the
box is partly the tumour's spread beyond the lung's hull, partly normal tissue around it). The outline is then
made solid slice by slice (:func:`_solid_outline`: no holes, no speckled edge; share in the box 0.67, box
covered 0.26), as a radiologist would draw it.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

GROW_MM = 20.0
SOLID_HU = (-400.0, 150.0)
CLOSE_MM = 1.5


def _hull_per_slice(side: np.ndarray, slices: range) -> np.ndarray:
    from skimage.morphology import convex_hull_image

    out = np.zeros(side.shape, dtype=bool)
    for k in slices:
        if side[k].sum() > 3:
            out[k] = convex_hull_image(side[k])
    return out


def _solid_outline(mask: np.ndarray, spacing: tuple[float, float, float]) -> np.ndarray:
    """``mask`` as a radiologist outlines a mass, slice by slice: the gaps of up to about
    2 x :data:`CLOSE_MM` between its parts closed and the holes inside filled (aerated bronchi, cavitation
    and the darker speckles of a spiculated or ground-glass edge are part of the lesion)."""
    ry, rx = (max(round(CLOSE_MM / s), 1) for s in spacing[1:])
    yy, xx = np.ogrid[-ry : ry + 1, -rx : rx + 1]
    disk = ((yy * spacing[1]) ** 2 + (xx * spacing[2]) ** 2) <= CLOSE_MM**2
    out = np.zeros_like(mask)
    for k in np.nonzero(mask.any(axis=(1, 2)))[0]:
        padded = np.pad(mask[k], ((ry, ry), (rx, rx)))
        closed = ndi.binary_closing(padded, disk)[ry:-ry, rx:-rx] | mask[k]
        out[k] = ndi.binary_fill_holes(closed)
    return out


def grow_mass(
    mask: np.ndarray,
    hu: np.ndarray,
    spacing: tuple[float, float, float],
    left: np.ndarray,
    right: np.ndarray,
) -> np.ndarray:
    """``mask`` grown into the solid tissue next to it, inside the hull of the lung that holds most of it."""
    side = left if int((mask & left).sum()) >= int((mask & right).sum()) else right
    idx = np.nonzero(mask)
    if idx[0].size == 0:
        return mask
    pad = [int(np.ceil(GROW_MM / s)) + 1 for s in spacing]
    box = tuple(
        slice(max(int(i.min()) - p, 0), min(int(i.max()) + p + 1, n))
        for i, p, n in zip(idx, pad, mask.shape, strict=True)
    )
    sub_mask = mask[box]
    hull = _hull_per_slice(side[box], range(sub_mask.shape[0]))
    near = ndi.distance_transform_edt(~sub_mask, sampling=spacing) <= GROW_MM
    sub_hu = hu[box]
    outside = ~(left[box] | right[box])  # the detector's outline is trusted inside the lung field
    solid = (sub_hu > SOLID_HU[0]) & (sub_hu < SOLID_HU[1]) & hull & near & outside
    labels, _ = ndi.label(sub_mask | solid)
    touching = np.unique(labels[sub_mask])
    grown = np.isin(labels, touching[touching > 0])
    grown = ndi.binary_opening(grown, np.ones((1, 3, 3), dtype=bool)) | sub_mask
    grown = _solid_outline(grown, spacing)
    out = np.zeros_like(mask)
    out[box] = grown
    return out
