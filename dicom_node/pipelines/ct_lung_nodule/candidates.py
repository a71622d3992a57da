"""Lung-nodule candidates on the working grid (1 mm pixels) of the lung crop, their search region,
in-plane axes, and the patches the networks read (Res-MTNet 2.5-D, FPR3D 3-D)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

WORK_MM = 1.0  # in-plane pixel of the working grid
PATCH = 48  # Res-MTNet patch (pixels of the working grid)
HU_LO, HU_HI = -1000.0, 500.0  # normalize_hu's window: features read HU back from the normalized input


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
