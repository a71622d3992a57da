"""Chest CT lung nodules: lung field -> 2.5-D U-Net -> 3-D components -> Res-MTNet -> Findings.

1. Lung fields from :mod:`dicom_node.pipelines.ct_lung_field`; the search region is each lung's
   per-slice convex hull (so juxtapleural nodules, which notch the lung outline, stay inside).
2. The lung bounding box is resampled in-plane to 1 mm pixels and every slice goes through a 2.5-D
   U-Net (3 adjacent slices in, nodule probability out).
3. Probabilities >= ``grow_threshold`` inside the region are grouped into 3-D connected components;
   those reaching ``threshold`` somewhere are kept (hysteresis: confident seed, softer outline).
4. Each component's patch (3 slices + its mask on the key slice) goes through Res-MTNet: nodule vs.
   false positive (vessels, bronchial walls), malignancy, composition, diameter; and, when the bundle
   has one, a 32 mm cube around it (isotropic 1 mm, with its mask) through FPR3D, a 3-D network that
   tells a nodule from a vessel by what continues above and below.
5. Features of each component (size, elongation, HU statistics, dense tissue around it, pleural
   contact, outline shape of the mask and of an HU-defined outline) and the Res-MTNet logits go
   through the bundle's calibrators (small logistic / linear models stored as JSON in its
   metadata, fitted on calibration data): detection score, malignancy probability, diameter.
6. Components scoring >= ``min_score`` become Findings (Category.NODULE) with the mask on the
   original grid, long/short axis (mm) on the key slice, volume (mm3), mean HU, diameter (network),
   evaluations ``malignancy_likelihood`` in {"low", "intermediate", "high"} and ``composition`` in
   {"solid", "part_solid", "ground_glass"}; ``score`` = the detection score.

Research use only, not for diagnosis.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from pydicom.dataset import Dataset
from scipy import ndimage as ndi

from dicom_node.findings import Category, Evaluation, Finding, Findings, Measurement, Quantity
from dicom_node.imaging.ct import load_ct_series
from dicom_node.imaging.series import normalize_hu, resample_inplane, resize_to, stack_25d
from dicom_node.imaging.volume import Volume
from dicom_node.nets.boosted import BoostedTrees
from dicom_node.pipelines.base import register
from dicom_node.pipelines.ct_lung_field import ct_applies_to, segment_lungs

logger = logging.getLogger(__name__)

WORK_MM = 1.0
PATCH = 48
COMPOSITIONS = ("solid", "part_solid", "ground_glass")
DEFAULT_BUNDLE = Path(__file__).resolve().parents[2] / "models" / "ct_lung_nodule"
MALIGNANCY_CUTS = (0.3, 0.7)
SCREEN_LOGIT = -4.0  # FPR3D single-view logit under which a candidate skips the ensemble's other views
FAINT_MIN_LOGIT = 1.0  # FPR3D logit a faint candidate needs to be kept (chosen on the validation seed)
FAINT_SCREEN_LOGIT = -2.5  # their one-view screen (kept ones scored >= -1.2 there on validation; 80% stop here)


@dataclass
class Candidate:
    """One detected component on the working grid (1 mm pixels) of the lung crop."""

    box: tuple[slice, slice, slice]  # bounding box on the working grid
    local: np.ndarray  # bool mask inside ``box``
    shape: tuple[int, int, int]  # working grid shape
    prob_max: float
    prob_mean: float
    key_slice: int
    center: tuple[int, int, int]
    p_nodule: float = 1.0
    p_malignant: float = 0.5
    composition: dict[str, float] = field(default_factory=dict)
    diameter: float = 0.0
    nodule_weight: float = 0.5
    features: dict[str, float] = field(default_factory=dict)
    raw_box: tuple[slice, slice, slice] | None = None  # the U-Net outline before HU refinement
    raw_local: np.ndarray | None = None
    p_detect: float | None = None  # the bundle's detection calibrator, when it has one

    @property
    def score(self) -> float:
        """Detection score: the calibrated detection probability when the bundle has a calibrator, else the
        U-Net peak probability and Res-MTNet nodule probability, geometrically weighted."""
        if self.p_detect is not None:
            return float(self.p_detect)
        w = self.nodule_weight
        return float(self.prob_max ** (1.0 - w) * self.p_nodule**w)

    @property
    def mask(self) -> np.ndarray:
        """The full-size mask on the working grid (allocates; prefer ``box``/``local``)."""
        full = np.zeros(self.shape, dtype=bool)
        full[self.box] = self.local
        return full

    def plane(self, k: int) -> np.ndarray:
        """The mask on working-grid slice ``k`` (rows, cols)."""
        out = np.zeros(self.shape[1:], dtype=bool)
        if self.box[0].start <= k < self.box[0].stop:
            out[self.box[1], self.box[2]] = self.local[k - self.box[0].start]
        return out


def long_short_axes(mask2d: np.ndarray, pixel_mm: tuple[float, float]) -> tuple[float, float]:
    """Longest in-plane diameter (max Feret) and the largest extent perpendicular to it, in mm.

    Each pixel counts with its full width (a one-pixel mask measures one pixel).
    """
    rows, cols = np.nonzero(mask2d)
    if rows.size == 0:
        return 0.0, 0.0
    pts = np.stack([rows * pixel_mm[0], cols * pixel_mm[1]], axis=1).astype(float)
    if len(pts) > 3:
        from scipy.spatial import ConvexHull, QhullError

        try:
            hull = pts[ConvexHull(pts).vertices]
        except QhullError:
            hull = pts
    else:
        hull = pts
    d = np.linalg.norm(hull[:, None, :] - hull[None, :, :], axis=-1)
    i, j = np.unravel_index(int(np.argmax(d)), d.shape)
    pix = float(np.mean(pixel_mm))
    long_axis = float(d[i, j])
    if long_axis == 0:
        return pix, pix
    u = (hull[j] - hull[i]) / long_axis
    perp = np.array([-u[1], u[0]])
    proj = pts @ perp
    return long_axis + pix, float(proj.max() - proj.min()) + pix


def search_region(lung: np.ndarray, left: np.ndarray | None = None, right: np.ndarray | None = None) -> np.ndarray:
    """Per-slice convex hull of each lung (juxtapleural nodules included)."""
    from skimage.morphology import convex_hull_image

    parts = [m for m in (left, right) if m is not None] or [lung]
    out = np.zeros(lung.shape, dtype=bool)
    for m in parts:
        for k in range(m.shape[0]):
            if m[k].sum() < 3:
                continue
            rows = np.nonzero(m[k].any(axis=1))[0]
            cols = np.nonzero(m[k].any(axis=0))[0]
            box = (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
            try:
                out[k][box] |= convex_hull_image(m[k][box])
            except ValueError:
                out[k][box] |= m[k][box]
    return out


def extract_patch(norm: np.ndarray, plane: np.ndarray, k: int, cy: int, cx: int, size: int = PATCH) -> np.ndarray:
    """Res-MTNet input (4, size, size): slices k-1, k, k+1 of ``norm`` and the mask ``plane`` of slice k."""
    half = size // 2
    out = np.zeros((4, size, size), dtype=np.float32)
    n, h, w = norm.shape
    y0, x0 = cy - half, cx - half
    ys, xs = max(y0, 0), max(x0, 0)
    ye, xe = min(y0 + size, h), min(x0 + size, w)
    if ye <= ys or xe <= xs:
        return out
    for c, kk in enumerate((max(k - 1, 0), k, min(k + 1, n - 1))):
        out[c, ys - y0 : ye - y0, xs - x0 : xe - x0] = norm[kk, ys:ye, xs:xe]
    out[3, ys - y0 : ye - y0, xs - x0 : xe - x0] = plane[ys:ye, xs:xe]
    return out


def extract_patch3d(norm: np.ndarray, c: Candidate, dz: float, size: int = 32) -> np.ndarray:
    """FPR3D input (2, size, size, size): ``norm`` and the candidate's mask around the mask's centroid, on
    an isotropic grid of the working grid's in-plane pixels (slices linearly interpolated along z; outside
    the volume, zeros)."""
    zz, yy, xx = np.nonzero(c.local)
    cz = float(zz.mean()) + c.box[0].start
    cy = round(float(yy.mean())) + c.box[1].start
    cx = round(float(xx.mean())) + c.box[2].start
    n, h, w = norm.shape
    half = size // 2
    pos = cz + (np.arange(size) - half + 0.5) / dz  # slice coordinate of each output plane (1 mm apart)
    lo = np.floor(pos).astype(int)
    frac = (pos - lo).astype(np.float32)
    y0, x0 = cy - half, cx - half
    ys, xs, ye, xe = max(y0, 0), max(x0, 0), min(y0 + size, h), min(x0 + size, w)
    z0, z1 = max(int(lo[0]), 0), min(int(lo[-1]) + 2, n)  # the slices the planes interpolate between
    out = np.zeros((2, size, size, size), dtype=np.float32)
    if ye <= ys or xe <= xs or z1 <= z0:
        return out
    image = norm[z0:z1, ys:ye, xs:xe].astype(np.float32)
    mask = np.zeros_like(image)
    bz, by, bx = c.box
    cut = [(max(b.start, lo_), min(b.stop, hi_)) for b, lo_, hi_ in ((bz, z0, z1), (by, ys, ye), (bx, xs, xe))]
    if all(a < b for a, b in cut):  # the candidate's mask where its box meets the crop
        (za, zb), (ya, yb), (xa, xb) = cut
        mask[za - z0 : zb - z0, ya - ys : yb - ys, xa - xs : xb - xs] = c.local[
            za - bz.start : zb - bz.start, ya - by.start : yb - by.start, xa - bx.start : xb - bx.start
        ]
    for ch, vol in enumerate((image, mask)):
        for i in range(size):
            a = int(lo[i]) - z0
            va = vol[a] if 0 <= a < z1 - z0 else 0.0
            vb = vol[a + 1] if 0 <= a + 1 < z1 - z0 else 0.0
            out[ch, i, ys - y0 : ye - y0, xs - x0 : xe - x0] = (1.0 - frac[i]) * va + frac[i] * vb
    return out


HU_LO, HU_HI = -1000.0, 500.0  # normalize_hu's window: features read HU back from the normalized input

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


def candidate_features(
    norm: np.ndarray, prob: np.ndarray, region: np.ndarray, spacing: tuple[float, float, float], c: Candidate
) -> dict[str, float]:
    """Hand-made features of one candidate (its mask, HU and surroundings) for the bundle's calibrators.

    Everything is read from the working grid: the normalized input (HU back from it, clipped at
    ``HU_HI``), the U-Net probability and the search region.
    """
    dz, dy, dx = spacing
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
    reg = region[box]
    vals = hu[comp]
    voxel = dz * dy * dx
    zz, yy, xx = np.nonzero(comp)
    pts = np.stack([zz * dz, yy * dy, xx * dx], axis=1)
    cov = np.cov(pts.T) if len(pts) > 1 else np.zeros((3, 3))
    cov = cov + np.diag([dz * dz / 12.0, dy * dy / 12.0, dx * dx / 12.0])
    ev = np.clip(np.linalg.eigvalsh(cov), 1e-6, None)
    shell = ndi.binary_dilation(comp, structure=np.ones((3, 5, 5), bool)) & ~comp & reg
    shell_dense = float((hu[shell] > -500).mean()) if shell.any() else 0.0
    around = ndi.binary_dilation(comp, structure=np.ones((3, 5, 5), bool)) & ~comp
    air_shell = float((hu[around] < -500).mean()) if around.any() else 0.0
    edge = ~ndi.binary_erosion(reg, structure=np.ones((1, 5, 5), bool), border_value=1)
    pleural = float((comp & edge).sum() / max(comp.sum(), 1))
    k = c.key_slice - z0
    key = comp[k]
    # An HU-defined outline: halfway between the nodule's core and the surrounding parenchyma.
    core = float(np.percentile(vals, 75))
    bg_vals = hu[shell & (hu < -500)]
    bg = float(np.median(bg_vals)) if bg_vals.size else -850.0
    thr = (core + bg) / 2.0
    # Outline shape on every slice at least half as large as the largest: of the U-Net outline (before
    # HU refinement, which follows attached vessels and spicules) and of its part above the HU level;
    # spicules from the refined outline (what an opening removes).
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
    long_ax = long_short_axes(key, (dy, dx))[0]
    opened_key = ndi.binary_opening(key, structure=np.ones((3, 3), bool))
    long_open = long_short_axes(opened_key, (dy, dx))[0] if opened_key.any() else long_ax
    return {
        "prob_max": c.prob_max,
        "prob_mean": c.prob_mean,
        "log_volume": float(np.log(max(comp.sum() * voxel, 1.0))),
        "z_extent_mm": float((bz.stop - bz.start) * dz),
        "inplane_extent_mm": float(max(by.stop - by.start, bx.stop - bx.start) * dy),
        "elongation": float(0.5 * np.log(ev[-1] / ev[0])),
        "hu_mean": float(vals.mean()),
        "hu_std": float(vals.std()),
        "hu_p90": float(np.percentile(vals, 90)),
        "calcified_fraction": float((vals > 200).mean()),
        "shell_dense": shell_dense,
        "air_shell": air_shell,
        "pleural": pleural,
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
        "log_diameter": float(np.log(max(long_ax, 1.0))),
        "long_axis_mm": long_ax,
        "long_axis_open_mm": long_open,
        "equiv_diameter_mm": float(2.0 * np.sqrt(key.sum() * dy * dx / np.pi)),
    }


@dataclass
class Calibrator:
    """A logistic (or, with ``kind="linear"``, linear) model on named features, stored as JSON in the bundle."""

    features: tuple[str, ...]
    mean: np.ndarray
    scale: np.ndarray
    coef: np.ndarray
    intercept: float
    kind: str = "logistic"

    def __call__(self, feats: dict[str, float]) -> float:
        x = np.array([feats.get(f, 0.0) for f in self.features], dtype=float)
        z = float(((x - self.mean) / self.scale) @ self.coef + self.intercept)
        if self.kind == "linear":
            return z
        return float(1.0 / (1.0 + np.exp(-np.clip(z, -30, 30))))

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "features": list(self.features),
            "mean": [round(float(v), 6) for v in self.mean],
            "scale": [round(float(v), 6) for v in self.scale],
            "coef": [round(float(v), 6) for v in self.coef],
            "intercept": round(float(self.intercept), 6),
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Calibrator:
        return cls(
            features=tuple(d["features"]),
            mean=np.asarray(d["mean"], dtype=float),
            scale=np.asarray(d["scale"], dtype=float),
            coef=np.asarray(d["coef"], dtype=float),
            intercept=float(d["intercept"]),
            kind=str(d.get("kind", "logistic")),
        )


ScoreModel = Calibrator | BoostedTrees  # what a bundle's "calibrators" entries load as


def calibrator_from_json(d: dict[str, Any]) -> ScoreModel:
    """A bundle's calibrator entry: boosted trees (``"kind": "boosted_trees"``) or a logistic / linear
    :class:`Calibrator`."""
    if d.get("kind") == BoostedTrees.kind:
        return BoostedTrees.from_json(d)
    return Calibrator.from_json(d)


class NoduleModel:
    """The networks plus the numeric steps, on arrays (no DICOM): used by the pipeline and by evaluation."""

    def __init__(
        self,
        unet: Any,
        resmtnet: Any | None,
        device: str = "cpu",
        threshold: float = 0.5,
        min_volume_mm3: float = 8.0,
        batch: int = 16,
        nodule_weight: float = 0.5,
        grow_threshold: float | None = None,
        detector: ScoreModel | None = None,
        malignancy: ScoreModel | None = None,
        diameter: ScoreModel | None = None,
        hu_refine: float | None = None,
        fpr3d: Any | None = None,
        screen_logit: float = SCREEN_LOGIT,
        faint_levels: tuple[float, float] | None = None,
        faint_min_logit: float = FAINT_MIN_LOGIT,
        faint_screen_logit: float = FAINT_SCREEN_LOGIT,
    ) -> None:
        self.unet = unet
        self.fpr3d = fpr3d
        self.screen_logit = screen_logit
        self.faint_levels = faint_levels
        self.faint_min_logit = faint_min_logit
        self.faint_screen_logit = faint_screen_logit
        self.resmtnet = resmtnet
        self.device = device
        self.threshold = threshold
        self.min_volume_mm3 = min_volume_mm3
        self.batch = batch
        self.nodule_weight = nodule_weight
        self.grow_threshold = threshold if grow_threshold is None else min(grow_threshold, threshold)
        self.detector = detector
        self.malignancy = malignancy
        self.diameter = diameter
        self.hu_refine = hu_refine

    def probabilities(self, norm: np.ndarray, slices: Sequence[int] | None = None) -> np.ndarray:
        """U-Net nodule probability for every slice of a normalized working-grid volume."""
        import torch

        n, h, w = norm.shape
        prob = np.zeros(norm.shape, dtype=np.float32)
        todo = list(range(n)) if slices is None else list(slices)
        if not todo:
            return prob
        ph, pw = (-h) % 16, (-w) % 16
        inputs = stack_25d(norm)
        use_amp = self.device.startswith("cuda")
        with torch.inference_mode():
            for i in range(0, len(todo), self.batch):
                idx = todo[i : i + self.batch]
                x = torch.from_numpy(np.pad(inputs[idx], ((0, 0), (0, 0), (0, ph), (0, pw)))).to(self.device)
                with torch.autocast("cuda", enabled=use_amp):
                    logits = self.unet(x)
                prob[idx] = torch.sigmoid(logits.float())[:, 0, :h, :w].cpu().numpy()
        return prob

    def components(
        self,
        prob: np.ndarray,
        region: np.ndarray,
        spacing: tuple[float, float, float],
        levels: tuple[float, float] | None = None,
    ) -> list[Candidate]:
        """3-D connected components of ``prob >= grow`` inside ``region`` that reach ``seed`` (hysteresis: a
        component needs a confident seed; its outline follows the lower level). ``levels`` = (seed, grow),
        by default (``threshold``, ``grow_threshold``)."""
        seed, grow = (self.threshold, self.grow_threshold) if levels is None else levels
        binary = (prob >= grow) & region
        labels, n = ndi.label(binary)
        if n == 0:
            return []
        if grow < seed:
            seeded = np.zeros(n + 1, dtype=bool)
            seeded[np.unique(labels[(prob >= seed) & binary])] = True
            seeded[0] = False
            labels = np.where(seeded[labels], labels, 0)
        voxel = float(np.prod(spacing))
        out = []
        for i, sl in enumerate(ndi.find_objects(labels), start=1):
            if sl is None:
                continue
            comp = labels[sl] == i
            if comp.sum() * voxel < self.min_volume_mm3:
                continue
            p = prob[sl][comp]
            areas = comp.reshape(comp.shape[0], -1).sum(axis=1)
            k_local = int(np.argmax(areas))
            k = k_local + sl[0].start
            rr, cc = np.nonzero(comp[k_local])
            rr = rr + sl[1].start
            cc = cc + sl[2].start
            out.append(
                Candidate(
                    box=(sl[0], sl[1], sl[2]),
                    local=comp,
                    shape=(int(prob.shape[0]), int(prob.shape[1]), int(prob.shape[2])),
                    prob_max=float(p.max()),
                    prob_mean=float(p.mean()),
                    key_slice=k,
                    center=(k, round(float(rr.mean())), round(float(cc.mean()))),
                )
            )
        return out

    def faint_components(
        self, prob: np.ndarray, region: np.ndarray, spacing: tuple[float, float, float], confident: list[Candidate]
    ) -> list[Candidate]:
        """Components seeded at the low ``faint_levels`` (seed, grow) that touch no ``confident`` candidate
        (none without ``faint_levels`` or an FPR3D network, which must vouch for each: see :meth:`detect`).

        Faint nodules (ground glass, often against the pleura) can peak at a U-Net probability of 0.05,
        below the confident seed; so do many vessels and fissures.
        """
        if self.faint_levels is None or self.fpr3d is None:
            return []
        taken = np.zeros(prob.shape, dtype=bool)
        for c in confident:
            taken[c.box] |= c.local
        return [c for c in self.components(prob, region, spacing, self.faint_levels) if not taken[c.box][c.local].any()]

    def refine(self, norm: np.ndarray, region: np.ndarray, candidates: list[Candidate]) -> None:
        """HU-aware outline inside each component's neighbourhood (in place; no-op unless ``hu_refine``).

        The nodule's level is the 25th HU percentile inside the U-Net component (so a part-solid
        nodule's ground glass counts), the parenchyma's is the median HU below -500 in a shell around
        it; voxels above ``bg + hu_refine * (level - bg)`` within 2 voxels of the component, inside the
        region and connected to the component, form the new mask. This follows the partial-volume
        edge (the truth is "at least half nodule") where the U-Net's outline is smoother.
        """
        if not self.hu_refine:
            return
        n, h, w = norm.shape
        for c in candidates:
            box = tuple(
                slice(max(b.start - 2, 0), min(b.stop + 2, size)) for b, size in zip(c.box, (n, h, w), strict=True)
            )
            comp = np.zeros([b.stop - b.start for b in box], dtype=bool)
            comp[tuple(slice(b.start - o.start, b.stop - o.start) for b, o in zip(c.box, box, strict=True))] = c.local
            hu = norm[box].astype(np.float32) * (HU_HI - HU_LO) + HU_LO
            reg = region[box]
            shell = ndi.binary_dilation(comp, structure=np.ones((3, 5, 5), bool)) & ~comp & reg
            bg_vals = hu[shell & (hu < -500)]
            bg = float(np.median(bg_vals)) if bg_vals.size else -850.0
            level = float(np.percentile(hu[comp], 25))
            if level <= bg:
                continue
            near = ndi.binary_dilation(comp, structure=np.ones((3, 3, 3), bool), iterations=2) & reg
            mask = (hu >= bg + self.hu_refine * (level - bg)) & near
            lab, nl = ndi.label(mask)
            if nl == 0:
                continue
            keep = np.zeros(nl + 1, dtype=bool)
            keep[np.unique(lab[mask & comp])] = True
            keep[0] = False
            mask = keep[lab]
            if not mask.any():
                continue
            c.raw_box, c.raw_local = c.box, c.local
            zz, yy, xx = np.nonzero(mask)
            inner = (
                slice(int(zz.min()), int(zz.max()) + 1),
                slice(int(yy.min()), int(yy.max()) + 1),
                slice(int(xx.min()), int(xx.max()) + 1),
            )
            c.box = tuple(  # type: ignore[assignment]
                slice(int(o.start + i.start), int(o.start + i.stop)) for o, i in zip(box, inner, strict=True)
            )
            c.local = mask[inner]
            areas = c.local.reshape(c.local.shape[0], -1).sum(axis=1)
            k_local = int(np.argmax(areas))
            rr, cc = np.nonzero(c.local[k_local])
            c.key_slice = int(k_local + c.box[0].start)
            c.center = (
                c.key_slice,
                int(round(float(rr.mean())) + c.box[1].start),
                int(round(float(cc.mean())) + c.box[2].start),
            )

    def classify(self, norm: np.ndarray, candidates: list[Candidate]) -> None:
        """Fill each candidate's Res-MTNet outputs in place (no-op without a Res-MTNet)."""
        if self.resmtnet is None or not candidates:
            return
        import torch

        patches = np.stack([extract_patch(norm, c.plane(c.center[0]), *c.center) for c in candidates])
        with torch.inference_mode():
            out = self.resmtnet(torch.from_numpy(patches).to(self.device))
        nod_logit = out["nodule"].float().cpu().numpy()
        mal_logit = out["malignancy"].float().cpu().numpy()
        comp = torch.softmax(out["composition"].float(), dim=1).cpu().numpy()
        diam = out["diameter"].float().cpu().numpy()
        for i, c in enumerate(candidates):
            c.p_nodule = float(1.0 / (1.0 + np.exp(-nod_logit[i])))
            c.p_malignant = float(1.0 / (1.0 + np.exp(-mal_logit[i])))
            c.composition = {name: float(comp[i, j]) for j, name in enumerate(COMPOSITIONS)}
            c.diameter = float(max(diam[i], 0.0))
            c.nodule_weight = self.nodule_weight
            c.features["nodule_logit"] = float(np.clip(nod_logit[i], -20, 20))
            c.features["malignancy_logit"] = float(np.clip(mal_logit[i], -20, 20))
            c.features["diameter_net"] = c.diameter

    def verify(self, norm: np.ndarray, dz: float, candidates: list[Candidate], screen: float | None = None) -> None:
        """The FPR3D logit (nodule vs. false positive, from a 3-D patch) of each candidate as its
        ``fpr_logit`` feature, in place (no-op without an FPR3D network).

        With an ensemble (several members, or the eight flips of each cube), a single view of its first
        member screens the candidates first: one scoring below ``screen`` (default ``screen_logit``) keeps
        that logit, a certain false positive whose detection score it leaves near 0, and skips the other views.
        """
        if self.fpr3d is None or not candidates:
            return
        import torch

        def logits(net: Any, cubes: np.ndarray) -> np.ndarray:
            out = [
                net(torch.from_numpy(cubes[i : i + self.batch]).to(self.device).contiguous(memory_format=fast))
                .float()
                .cpu()
                .numpy()
                for i in range(0, len(cubes), self.batch)
            ]
            return np.concatenate(out) if out else np.zeros(0, dtype=np.float32)

        fast = torch.channels_last_3d
        cubes = np.stack([extract_patch3d(norm, c, dz) for c in candidates])
        members = list(getattr(self.fpr3d, "members", []))
        views = len(members) * len(getattr(self.fpr3d, "flips", ((),)))
        with torch.inference_mode():
            if views > 1:
                z = logits(self.fpr3d.readers(torch.device(self.device))[0], cubes)
                keep = z >= (self.screen_logit if screen is None else screen)
                z[keep] = logits(self.fpr3d, cubes[keep])
            else:
                z = logits(self.fpr3d, cubes)
        for c, value in zip(candidates, z, strict=True):
            c.features["fpr_logit"] = float(np.clip(value, -20, 20))

    def describe(
        self,
        norm: np.ndarray,
        prob: np.ndarray,
        region: np.ndarray,
        spacing: tuple[float, float, float],
        candidates: list[Candidate],
    ) -> None:
        """Mask features of each candidate, then the bundle's calibrators (detection score, malignancy,
        diameter) where it has them; in place."""
        for c in candidates:
            c.features.update(candidate_features(norm, prob, region, spacing, c))
            if self.detector is not None:
                c.p_detect = self.detector(c.features)
            if self.resmtnet is not None and self.malignancy is not None:
                c.p_malignant = self.malignancy(c.features)
            if self.resmtnet is not None and self.diameter is not None:
                c.diameter = float(max(self.diameter(c.features), 0.0))

    def detect(self, norm: np.ndarray, region: np.ndarray, spacing: tuple[float, float, float]) -> list[Candidate]:
        """Probabilities, components, classification and calibration for a normalized working-grid volume."""
        slices = [int(k) for k in np.nonzero(region.any(axis=(1, 2)))[0]]
        prob = self.probabilities(norm, slices)
        cands = self.components(prob, region, spacing)
        faint = self.faint_components(prob, region, spacing, cands)
        self.refine(norm, region, cands + faint)
        if faint:  # FPR3D first: only the faint candidates it takes for nodules are described
            self.verify(norm, spacing[0], faint, screen=self.faint_screen_logit)
            faint = [c for c in faint if c.features["fpr_logit"] >= self.faint_min_logit]
        self.verify(norm, spacing[0], cands)
        cands += faint
        self.classify(norm, cands)
        self.describe(norm, prob, region, spacing, cands)
        return cands


@dataclass
class Detection:
    """A candidate mapped back onto the original volume grid."""

    candidate: Candidate
    mask: np.ndarray  # bool, original volume shape


def detect_in_volume(
    model: NoduleModel,
    hu: np.ndarray,
    spacing: tuple[float, float, float],
    lung: np.ndarray,
    left: np.ndarray | None = None,
    right: np.ndarray | None = None,
    margin_mm: float = 8.0,
    min_score: float = 0.0,
) -> list[Detection]:
    """Run ``model`` on an HU volume with its lung mask.

    Masks of the candidates scoring at least ``min_score`` come back on the volume's grid.
    """
    region = search_region(lung, left, right)
    if not region.any():
        return []
    idx = np.nonzero(region)
    my = int(np.ceil(margin_mm / spacing[1]))
    mx = int(np.ceil(margin_mm / spacing[2]))
    z0, z1 = int(idx[0].min()), int(idx[0].max()) + 1
    y0, y1 = max(int(idx[1].min()) - my, 0), min(int(idx[1].max()) + my + 1, hu.shape[1])
    x0, x1 = max(int(idx[2].min()) - mx, 0), min(int(idx[2].max()) + mx + 1, hu.shape[2])
    crop = hu[z0:z1, y0:y1, x0:x1]
    zoom = (spacing[1] / WORK_MM, spacing[2] / WORK_MM)
    work = resample_inplane(crop, zoom, order=1)
    reg_w = resample_inplane(region[z0:z1, y0:y1, x0:x1].astype(np.float32), zoom, order=1) >= 0.5
    work_spacing = (
        spacing[0],
        crop.shape[1] * spacing[1] / work.shape[1],
        crop.shape[2] * spacing[2] / work.shape[2],
    )
    cands = model.detect(normalize_hu(work), reg_w, work_spacing)
    out = []
    fy, fx = crop.shape[1] / work.shape[1], crop.shape[2] / work.shape[2]
    for c in cands:
        if c.score < min_score:
            continue
        bz, by, bx = c.box
        # Native rows/cols covered by the working box (pixel edges scaled), then the local mask resized.
        ny0, ny1 = int(np.floor(by.start * fy)), min(int(np.ceil(by.stop * fy)), crop.shape[1])
        nx0, nx1 = int(np.floor(bx.start * fx)), min(int(np.ceil(bx.stop * fx)), crop.shape[2])
        local = resize_to(c.local.astype(np.float32), (ny1 - ny0, nx1 - nx0), order=1)
        back = local >= 0.5
        if not back.any():
            back = resize_to(c.local.astype(np.float32), (ny1 - ny0, nx1 - nx0), order=0) > 0
        full = np.zeros(hu.shape, dtype=bool)
        full[z0 + bz.start : z0 + bz.stop, y0 + ny0 : y0 + ny1, x0 + nx0 : x0 + nx1] = back
        out.append(Detection(candidate=c, mask=full))
    return out


def malignancy_key(p: float) -> str:
    """ "low" / "intermediate" / "high" from the malignancy probability."""
    if p < MALIGNANCY_CUTS[0]:
        return "low"
    if p < MALIGNANCY_CUTS[1]:
        return "intermediate"
    return "high"


def load_model(bundle: str | Path | None, device: str) -> tuple[NoduleModel, str]:
    """A :class:`NoduleModel` from a bundle folder or a TorchScript/export file; returns (model, version).

    A single-network file is taken as the U-Net (2.5-D, 3 channels in, 1 logit out); classification
    then falls back to the shipped bundle's Res-MTNet when that exists.
    """
    from dicom_node.nets.bundle import load_bundle

    path = Path(bundle) if bundle else DEFAULT_BUNDLE
    b = load_bundle(path, device=device)
    unet = b.network("unet") or b.network("network")
    if unet is None:
        raise ValueError(f"{path}: the bundle has no 'unet' network (has {sorted(b.networks)})")
    resmtnet = b.network("resmtnet")
    if resmtnet is None and path != DEFAULT_BUNDLE and (DEFAULT_BUNDLE / "models" / "model.pt").exists():
        resmtnet = load_bundle(DEFAULT_BUNDLE, device=device).network("resmtnet")
    cfg = b.metadata.get("inference", {}) if isinstance(b.metadata.get("inference"), dict) else {}
    cal = cfg.get("calibrators", {}) if isinstance(cfg.get("calibrators"), dict) else {}
    faint = cfg.get("faint_levels")
    model = NoduleModel(
        unet,
        resmtnet,
        device=device,
        threshold=float(cfg.get("threshold", 0.5)),
        min_volume_mm3=float(cfg.get("min_volume_mm3", 8.0)),
        nodule_weight=float(cfg.get("nodule_weight", 0.5)),
        grow_threshold=float(cfg["grow_threshold"]) if "grow_threshold" in cfg else None,
        hu_refine=float(cfg["hu_refine"]) if cfg.get("hu_refine") else None,
        detector=calibrator_from_json(cal["detection"]) if "detection" in cal else None,
        malignancy=calibrator_from_json(cal["malignancy"]) if "malignancy" in cal else None,
        diameter=calibrator_from_json(cal["diameter"]) if "diameter" in cal else None,
        fpr3d=fpr3d_verifier(b.networks, bool(cfg.get("fpr3d_flips", False))),
        screen_logit=float(cfg.get("fpr3d_screen_logit", SCREEN_LOGIT)),
        faint_levels=(float(faint[0]), float(faint[1])) if faint else None,
        faint_min_logit=float(cfg.get("faint_min_logit", FAINT_MIN_LOGIT)),
        faint_screen_logit=float(cfg.get("faint_screen_logit", FAINT_SCREEN_LOGIT)),
    )
    model_min_score = float(cfg.get("min_score", 0.5))
    setattr(model, "min_score", model_min_score)  # noqa: B010
    return model, b.version


def fpr3d_verifier(networks: dict[str, Any], flips: bool) -> Any | None:
    """The bundle's FPR3D networks ("fpr3d", "fpr3d_2", ...) as one :class:`FPR3DEnsemble` (None without
    any); ``flips`` averages each over the eight flips of its cube."""
    from dicom_node.nets.fpr3d import FPR3DEnsemble, member_name

    members: list[Any] = []
    while member_name(len(members)) in networks:
        members.append(networks[member_name(len(members))])
    return FPR3DEnsemble(members, flips=flips).eval() if members else None


@register("ct_lung_nodule")
class CtLungNodule:
    """Lung nodule detection, segmentation and characterisation on chest CT (research use only)."""

    name = "ct_lung_nodule"

    def __init__(self, bundle: str | None = None, min_score: float | None = None, min_slices: int = 3) -> None:
        self.bundle = bundle
        self.min_slices = int(min_slices)
        self._min_score = min_score
        self._model: NoduleModel | None = None
        self._device = ""
        self.version = self._bundle_version()

    def _bundle_version(self) -> str:
        import json

        path = Path(self.bundle) if self.bundle else DEFAULT_BUNDLE
        meta = path / "configs" / "metadata.json"
        if meta.exists():
            return str(json.loads(meta.read_text()).get("version", "0"))
        return path.stem if path.exists() else "unavailable"

    def applies_to(self, series: Sequence[Dataset]) -> str | None:
        """None for an axial CT stack of at least ``min_slices`` slices, else the reason."""
        return ct_applies_to(series, self.min_slices)

    def load(self, paths: Sequence[str]) -> Volume:
        """HU volume of the series (see :func:`dicom_node.imaging.ct.load_ct_series`)."""
        return load_ct_series(paths)

    def model(self, device: str) -> NoduleModel:
        """The loaded networks for ``device`` (loaded once per pipeline instance and device)."""
        if self._model is None or self._device != device:
            self._model, self.version = load_model(self.bundle, device)
            self._device = device
        return self._model

    def warm_up(self, device: str) -> None:
        """Load the bundle for ``device`` (MONAI's import alone takes seconds) and import what the
        candidate features use, ahead of the first study."""
        import skimage.measure
        import skimage.morphology  # noqa: F401

        self.model(device)

    def run(self, volume: Volume, device: str = "cpu") -> Findings:
        """Detect nodules; "nothing found" is an empty findings list with a conclusion."""
        import torch

        torch_threads = torch.get_num_threads()
        t0 = time.perf_counter()
        model = self.model(device)
        result = Findings(pipeline=self.name, version=self.version)
        fields = segment_lungs(volume)
        t1 = time.perf_counter()
        result.timings["lung_s"] = t1 - t0
        if not fields.both.any():
            result.conclusions.append("No aerated lung found: no nodule search was done.")
            return result
        min_score = self._min_score
        if min_score is None:
            min_score = float(getattr(model, "min_score", 0.5))
        detections = detect_in_volume(
            model, volume.pixels, volume.spacing, fields.both, fields.left, fields.right, min_score=min_score
        )
        result.timings["detect_s"] = time.perf_counter() - t1
        kept = [d for d in detections if d.candidate.score >= min_score]
        kept.sort(key=lambda d: -d.candidate.score)
        for i, d in enumerate(kept, start=1):
            result.findings.append(self._finding(volume, d, i, model.resmtnet is not None))
        if result.findings:
            result.conclusions.append(f"{len(result.findings)} lung nodule candidate(s) detected.")
        else:
            result.conclusions.append("No lung nodule detected.")
        result.timings["total_s"] = time.perf_counter() - t0
        logger.debug("ct_lung_nodule done", extra={"threads": torch_threads, "timings": result.timings})
        return result

    @staticmethod
    def _finding(volume: Volume, det: Detection, index: int, classified: bool) -> Finding:
        c = det.candidate
        mask = det.mask
        areas = mask.reshape(mask.shape[0], -1).sum(axis=1)
        k = int(np.argmax(areas))
        long_ax, short_ax = long_short_axes(mask[k], (volume.spacing[1], volume.spacing[2]))
        voxel = float(np.prod(volume.spacing))
        measurements = [
            Measurement(Quantity.LONG_AXIS, long_ax),
            Measurement(Quantity.SHORT_AXIS, short_ax),
            Measurement(Quantity.VOLUME, float(mask.sum()) * voxel),
            Measurement(Quantity.MEAN_HU, float(volume.pixels[mask].mean())),
        ]
        evaluations: dict[Evaluation, str] = {}
        if classified:
            measurements.append(Measurement(Quantity.DIAMETER, c.diameter))
            evaluations[Evaluation.MALIGNANCY_LIKELIHOOD] = malignancy_key(c.p_malignant)
            evaluations[Evaluation.COMPOSITION] = max(c.composition, key=lambda n: c.composition[n])
        return Finding(
            category=Category.NODULE,
            mask=mask,
            label=f"nodule {index}",
            measurements=measurements,
            evaluations=evaluations,
            score=float(np.clip(c.score, 0.0, 1.0)),
            key_slice=k,
        )
