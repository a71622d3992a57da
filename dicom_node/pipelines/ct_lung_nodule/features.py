"""Hand-made features of a lung-nodule candidate (size, elongation, HU statistics, surroundings, outline
shape) for the bundle's calibrators, and the feature names they use."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

from dicom_node.pipelines.ct_lung_nodule.candidates import HU_HI, HU_LO, Candidate, long_short_axes

DETECT_FEATURES = (
    "prob_max",
    "prob_mean",
    "log_volume",
    "z_extent_mm",
    "inplane_extent_mm",
    "elongation",
    "hu_mean",
    "hu_std",
    "calcified_fraction",
    "shell_dense",
    "air_shell",
    "pleural",
    "nodule_logit",
    "solidity_2d",
    "radial_cv",
    "fpr_logit",  # 1.3.0; 0 for a bundle without FPR3D
)
# 1.6.0: boosted trees on every feature of the candidate except its size (1.2.0-1.5.0: a logistic model
# on malignancy_logit, calcified_fraction, hu_std and the outline-shape features). Size stays out: in the
# phantoms it is independent of the truth, unlike real nodules, and leaving it out cost nothing on
# validation. The HU level is in: the synthetic truth keeps composition independent of malignancy, but
# an outline feature reads differently on ground glass, and trees can use that.
MALIGNANCY_TREE_FEATURES = (
    "air_shell",
    "calcified_fraction",
    "circularity_hu",
    "elongation",
    "fpr_logit",
    "hu_mean",
    "hu_p90",
    "hu_std",
    "malignancy_logit",
    "nodule_logit",
    "notch_fraction",
    "notch_fraction_hu",
    "pleural",
    "prob_max",
    "prob_mean",
    "radial_cv",
    "radial_cv_hu",
    "radial_iqr",
    "radial_iqr_hu",
    "shell_dense",
    "solidity_2d",
    "solidity_2d_hu",
    "spicule_fraction",
)


def _solidity_and_radial(mask2d: np.ndarray) -> tuple[float, float, float]:
    """(area / convex-hull area, radial coefficient of variation of the outline, circularity) of a 2-D mask."""
    from skimage.measure import perimeter
    from skimage.morphology import convex_hull_image

    area = float(mask2d.sum())
    if area < 4:
        return 1.0, 0.0, 1.0
    try:
        hull = float(convex_hull_image(mask2d).sum())
    except ValueError:
        hull = area
    edge = mask2d & ~ndi.binary_erosion(mask2d)
    rr, cc = np.nonzero(mask2d)
    er, ec = np.nonzero(edge)
    radii = np.hypot(er - rr.mean(), ec - cc.mean())
    cv = float(radii.std() / max(radii.mean(), 1e-6))
    per = float(perimeter(mask2d))
    circ = float(4 * np.pi * area / max(per * per, 1e-6))
    return area / max(hull, area), cv, min(circ, 1.5)


def _contour_stats(mask2d: np.ndarray) -> tuple[float, float]:
    """(interquartile range / median, share of outline points closer than 0.85 x median) of the radii of
    a 2-D mask's outline from its centroid: lobulation notches raise both, a thin attached vessel
    hardly moves them."""
    from skimage.measure import find_contours

    if mask2d.sum() < 6:
        return 0.0, 0.0
    padded = np.pad(mask2d, 1)
    contours = find_contours(padded.astype(np.float32), 0.5)
    if not contours:
        return 0.0, 0.0
    c = max(contours, key=len)
    rr, cc = np.nonzero(padded)
    r = np.hypot(c[:, 0] - rr.mean(), c[:, 1] - cc.mean())
    med = float(np.median(r))
    if med <= 0:
        return 0.0, 0.0
    q1, q3 = np.percentile(r, [25, 75])
    return float((q3 - q1) / med), float((r < 0.85 * med).mean())


@dataclass
class _Neighbourhood:
    """A candidate's padded bounding box (its refined and its U-Net outline together) on the working grid."""

    z0: int  # first slice of the box
    comp: np.ndarray  # bool: the candidate's (refined) mask
    raw: np.ndarray  # bool: its U-Net outline before HU refinement (the mask itself without one)
    hu: np.ndarray  # float32 HU, read back from the normalized input
    reg: np.ndarray  # bool: the search region


def _neighbourhood(norm: np.ndarray, region: np.ndarray, c: Candidate) -> _Neighbourhood:
    """The box around both outlines of ``c``, padded by 1 slice and 3 pixels, clipped to the volume."""
    pad = (1, 3, 3)
    n, h, w = norm.shape
    bz, by, bx = c.box
    rb = c.raw_box if c.raw_box is not None and c.raw_local is not None else c.box
    rl = c.raw_local if c.raw_box is not None and c.raw_local is not None else c.local
    z0, z1 = max(min(bz.start, rb[0].start) - pad[0], 0), min(max(bz.stop, rb[0].stop) + pad[0], n)
    y0, y1 = max(min(by.start, rb[1].start) - pad[1], 0), min(max(by.stop, rb[1].stop) + pad[1], h)
    x0, x1 = max(min(bx.start, rb[2].start) - pad[2], 0), min(max(bx.stop, rb[2].stop) + pad[2], w)
    box = (slice(z0, z1), slice(y0, y1), slice(x0, x1))
    comp = np.zeros((z1 - z0, y1 - y0, x1 - x0), dtype=bool)
    comp[bz.start - z0 : bz.stop - z0, by.start - y0 : by.stop - y0, bx.start - x0 : bx.stop - x0] = c.local
    raw = np.zeros_like(comp)
    raw[rb[0].start - z0 : rb[0].stop - z0, rb[1].start - y0 : rb[1].stop - y0, rb[2].start - x0 : rb[2].stop - x0] = rl
    hu = norm[box].astype(np.float32) * (HU_HI - HU_LO) + HU_LO
    return _Neighbourhood(z0=z0, comp=comp, raw=raw, hu=hu, reg=region[box])


def _elongation(comp: np.ndarray, spacing: tuple[float, float, float]) -> float:
    """Half the log ratio of the largest to the smallest eigenvalue of the mask's covariance (in mm, each
    voxel counted as a uniform box)."""
    dz, dy, dx = spacing
    zz, yy, xx = np.nonzero(comp)
    pts = np.stack([zz * dz, yy * dy, xx * dx], axis=1)
    cov = np.cov(pts.T) if len(pts) > 1 else np.zeros((3, 3))
    cov = cov + np.diag([dz * dz / 12.0, dy * dy / 12.0, dx * dx / 12.0])
    ev = np.clip(np.linalg.eigvalsh(cov), 1e-6, None)
    return float(0.5 * np.log(ev[-1] / ev[0]))


def _surroundings(nb: _Neighbourhood, shell: np.ndarray) -> dict[str, float]:
    """Dense tissue in the ``shell`` around the mask (inside the region), air around it, pleural contact."""
    comp, hu, reg = nb.comp, nb.hu, nb.reg
    shell_dense = float((hu[shell] > -500).mean()) if shell.any() else 0.0
    around = ndi.binary_dilation(comp, structure=np.ones((3, 5, 5), bool)) & ~comp
    air_shell = float((hu[around] < -500).mean()) if around.any() else 0.0
    edge = ~ndi.binary_erosion(reg, structure=np.ones((1, 5, 5), bool), border_value=1)
    pleural = float((comp & edge).sum() / max(comp.sum(), 1))
    return {"shell_dense": shell_dense, "air_shell": air_shell, "pleural": pleural}


def _outline_shape(nb: _Neighbourhood, shell: np.ndarray, vals: np.ndarray, key: np.ndarray) -> dict[str, float]:
    """Outline shape on every slice at least half as large as the largest: of the U-Net outline (before
    HU refinement, which follows attached vessels and spicules) and of its part above an HU level
    (halfway between the nodule's core and the surrounding parenchyma); spicules from the refined outline
    (what an opening removes). ``key`` is the mask on the key slice, the fallback for tiny masks."""
    comp, raw, hu = nb.comp, nb.raw, nb.hu
    core = float(np.percentile(vals, 75))
    bg_vals = hu[shell & (hu < -500)]
    bg = float(np.median(bg_vals)) if bg_vals.size else -850.0
    thr = (core + bg) / 2.0
    raw_areas = raw.reshape(raw.shape[0], -1).sum(axis=1)
    areas = comp.reshape(comp.shape[0], -1).sum(axis=1)
    thr_raw = bg + 0.5 * (float(np.percentile(hu[raw], 25)) - bg) if raw.any() else thr
    shape_net: list[tuple[float, float, float]] = []
    shape_hu: list[tuple[float, float, float]] = []
    contour: list[tuple[float, float, float, float]] = []
    spicule: list[float] = []
    for kk in np.nonzero(raw_areas >= max(0.5 * raw_areas.max(), 4))[0]:
        m = raw[kk]
        shape_net.append(_solidity_and_radial(m))
        hm = m & (hu[kk] >= thr_raw)
        if hm.sum() < 4:
            hm = m
        shape_hu.append(_solidity_and_radial(hm))
        contour.append((*_contour_stats(m), *_contour_stats(hm)))
    for kk in np.nonzero(areas >= max(0.5 * areas.max(), 4))[0]:
        opened = ndi.binary_opening(comp[kk], structure=np.ones((3, 3), bool))
        spicule.append(float((comp[kk] & ~opened).sum() / max(comp[kk].sum(), 1)))
    if not shape_net:
        shape_net = [_solidity_and_radial(key)]
        shape_hu = shape_net
        contour = [(*_contour_stats(key), *_contour_stats(key))]
    if not spicule:
        spicule = [0.0]
    sol, rcv, _ = np.mean(shape_net, axis=0)
    iqr, notch, iqr_hu, notch_hu = np.mean(contour, axis=0)
    sol_hu, rcv_hu, circ_hu = np.mean(shape_hu, axis=0)
    return {
        "solidity_2d": float(sol),
        "radial_cv": float(rcv),
        "solidity_2d_hu": float(sol_hu),
        "radial_cv_hu": float(rcv_hu),
        "circularity_hu": float(circ_hu),
        "radial_iqr": float(iqr),
        "notch_fraction": float(notch),
        "radial_iqr_hu": float(iqr_hu),
        "notch_fraction_hu": float(notch_hu),
        "spicule_fraction": float(np.mean(spicule)),
    }


def _key_slice_size(key: np.ndarray, dy: float, dx: float) -> dict[str, float]:
    """Sizes of the mask on the key slice: long axis (also after an opening, which drops spicules and
    attached vessels) and the diameter of the circle of the same area."""
    long_ax = long_short_axes(key, (dy, dx))[0]
    opened_key = ndi.binary_opening(key, structure=np.ones((3, 3), bool))
    long_open = long_short_axes(opened_key, (dy, dx))[0] if opened_key.any() else long_ax
    return {
        "log_diameter": float(np.log(max(long_ax, 1.0))),
        "long_axis_mm": long_ax,
        "long_axis_open_mm": long_open,
        "equiv_diameter_mm": float(2.0 * np.sqrt(key.sum() * dy * dx / np.pi)),
    }


def candidate_features(
    norm: np.ndarray, prob: np.ndarray, region: np.ndarray, spacing: tuple[float, float, float], c: Candidate
) -> dict[str, float]:
    """Hand-made features of one candidate (its mask, HU and surroundings) for the bundle's calibrators.

    Everything is read from the working grid: the normalized input (HU back from it, clipped at
    ``HU_HI``), the U-Net probability and the search region.
    """
    dz, dy, dx = spacing
    bz, by, bx = c.box
    nb = _neighbourhood(norm, region, c)
    comp = nb.comp
    vals = nb.hu[comp]
    voxel = dz * dy * dx
    shell = ndi.binary_dilation(comp, structure=np.ones((3, 5, 5), bool)) & ~comp & nb.reg
    key = comp[c.key_slice - nb.z0]
    return {
        "prob_max": c.prob_max,
        "prob_mean": c.prob_mean,
        "log_volume": float(np.log(max(comp.sum() * voxel, 1.0))),
        "z_extent_mm": float((bz.stop - bz.start) * dz),
        "inplane_extent_mm": float(max(by.stop - by.start, bx.stop - bx.start) * dy),
        "elongation": _elongation(comp, spacing),
        "hu_mean": float(vals.mean()),
        "hu_std": float(vals.std()),
        "hu_p90": float(np.percentile(vals, 90)),
        "calcified_fraction": float((vals > 200).mean()),
        **_surroundings(nb, shell),
        **_outline_shape(nb, shell, vals, key),
        **_key_slice_size(key, dy, dx),
    }
