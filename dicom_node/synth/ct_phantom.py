"""Synthetic chest CT phantoms with nodules and exact ground truth.

Anatomy (HU): air outside, a table, subcutaneous fat, chest-wall muscle, ribs and costal cartilage,
a vertebral body with spinal canal, mediastinum with heart, aorta, trachea/main bronchi (upper
levels), two lungs shaped by the level along a 250 mm lung height (apex narrow, bases with the liver
dome), parenchyma at about -860 HU with a gravity gradient and correlated texture, branching vessel
trees with accompanying bronchi, and 0..n nodules (:mod:`dicom_node.synth.ct_nodule`: 3-40 mm,
solid / part-solid / ground-glass, smooth, calcified, lobulated, spiculated; isolated, juxtapleural or
juxtavascular). The scene is drawn on a fine z grid (<= 1 mm) and box-averaged to the slice thickness
(0.6-5 mm), then blurred in-plane (kernel) and given correlated noise.

In-plane pixel spacing is :data:`PIXEL_MM` (the nodule network's working resolution).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage as ndi

from dicom_node.synth.ct_nodule import NoduleSpec, blend, random_spec, render_occupancy

logger = logging.getLogger(__name__)

PIXEL_MM = 1.0
THICKNESSES = (0.625, 1.0, 1.25, 1.5, 2.0, 2.5, 3.0, 5.0)


@dataclass
class Phantom:
    """A synthetic CT: HU volume, lung mask, nodule label map (0 = none, i = nodules[i-1])."""

    hu: np.ndarray
    spacing: tuple[float, float, float]
    lung: np.ndarray
    labels: np.ndarray
    nodules: list[NoduleSpec] = field(default_factory=list)
    vessels: list[tuple[np.ndarray, float]] = field(default_factory=list)


def _ellipse(yy: np.ndarray, xx: np.ndarray, cy: float, cx: float, ay: float, ax: float) -> np.ndarray:
    return np.asarray(((yy - cy) / ay) ** 2 + ((xx - cx) / ax) ** 2)


def _segments_tree(
    rng: np.random.Generator, start: np.ndarray, direction: np.ndarray, radius: float, out: list
) -> None:
    """Recursive vessel tree: (p0, p1, radius) segments; radius shrinks by ~0.72 per generation."""
    stack = [(start, direction, radius)]
    while stack:
        p0, d, r = stack.pop()
        if r < 0.5 or len(out) > 120:
            continue
        length = float(rng.uniform(10.0, 16.0) * (r**0.5) + 3.0)
        p1 = p0 + d * length
        out.append((p0, p1, r))
        for _ in range(2):
            nd = d + rng.normal(scale=0.4, size=3)
            nd[0] *= 0.8
            nd /= np.linalg.norm(nd)
            stack.append((p1, nd, r * float(rng.uniform(0.65, 0.8))))


def _draw_tubes(
    vol: np.ndarray, z: np.ndarray, y: np.ndarray, x: np.ndarray, segs: list, value: float, scale: float = 1.0
) -> np.ndarray:
    """Max-composite tube occupancies of ``segs`` (radius * scale) onto a float grid, returned separately."""
    occ = np.zeros(vol.shape, dtype=np.float32)
    for p0, p1, r0 in segs:
        r = r0 * scale
        lo = np.minimum(p0, p1) - r - 1.0
        hi = np.maximum(p0, p1) + r + 1.0
        zi = np.nonzero((z >= lo[0]) & (z <= hi[0]))[0]
        yi = np.nonzero((y >= lo[1]) & (y <= hi[1]))[0]
        xi = np.nonzero((x >= lo[2]) & (x <= hi[2]))[0]
        if not (zi.size and yi.size and xi.size):
            continue
        zz, yy, xx = np.meshgrid(z[zi], y[yi], x[xi], indexing="ij")
        p = np.stack([zz, yy, xx], axis=-1)
        d = p1 - p0
        t = np.clip(((p - p0) @ d) / max(float(d @ d), 1e-6), 0.0, 1.0)
        closest = p0 + t[..., None] * d
        dist = np.linalg.norm(p - closest, axis=-1)
        o = np.clip((r - dist) / 0.7 + 0.5, 0.0, 1.0).astype(np.float32)
        sub = occ[zi[0] : zi[-1] + 1, yi[0] : yi[-1] + 1, xi[0] : xi[-1] + 1]
        np.maximum(sub, o, out=sub)
    return occ


@dataclass
class _Grid:
    """The fine sampling grid the scene is drawn on (mm coordinates of voxel centres)."""

    t: float  # output slice thickness = spacing
    n_out: int  # output slices
    n_sub: int  # fine slices per output slice
    dz: float
    z: np.ndarray
    y: np.ndarray
    x: np.ndarray
    yy: np.ndarray
    xx: np.ndarray
    c: float  # in-plane centre


@dataclass
class _Body:
    """The random body shape: where the window sits along the lung, body ellipse, wall layers, ribs."""

    level0: float  # where the window sits along a 250 mm lung (0 apex, 1 base)
    ax: float
    ay: float
    cy: float
    fat: float
    muscle: float
    rib_period: float
    rib_phase: float
    rib_slope: float


def _grid(rng: np.random.Generator, thickness: float | None, size: int, extent_mm: float) -> _Grid:
    t = float(thickness if thickness is not None else rng.choice(THICKNESSES))
    n_out = max(3, round(extent_mm / t))
    n_sub = max(1, int(np.ceil(t / 1.0 - 1e-6)))
    dz = t / n_sub
    nz = n_out * n_sub
    z = (np.arange(nz) + 0.5) * dz
    y = (np.arange(size) + 0.5) * PIXEL_MM
    x = (np.arange(size) + 0.5) * PIXEL_MM
    yy, xx = np.meshgrid(y, x, indexing="ij")
    return _Grid(t, n_out, n_sub, dz, z, y, x, yy, xx, size * PIXEL_MM / 2.0)


def _body(rng: np.random.Generator, size: int, c: float) -> _Body:
    level0 = float(rng.uniform(0.15, 0.85))
    body_ax, body_ay = rng.uniform(0.40, 0.47) * size, rng.uniform(0.28, 0.33) * size
    body_cy = c + rng.uniform(-8, 8)
    fat = rng.uniform(6.0, 20.0)
    muscle = rng.uniform(7.0, 14.0)
    rib_period = rng.uniform(24.0, 32.0)
    rib_phase = rng.uniform(0, rib_period)
    rib_slope = rng.uniform(0.25, 0.45)
    return _Body(level0, body_ax, body_ay, body_cy, fat, muscle, rib_period, rib_phase, rib_slope)


def _wall_and_spine(s: np.ndarray, g: _Grid, b: _Body, zk: float) -> tuple[np.ndarray, float, float, float]:
    """Draw fat, muscle, ribs and spine of one slice ``s``; returns the cavity mask, its half axes and
    the spine centre row."""
    yy, xx, c = g.yy, g.xx, g.c
    e = _ellipse(yy, xx, b.cy, c, b.ay, b.ax)
    s[e <= 1.0] = -100.0  # fat
    inner_ay, inner_ax = b.ay - b.fat, b.ax - b.fat
    s[_ellipse(yy, xx, b.cy, c, inner_ay, inner_ax) <= 1.0] = 45.0  # muscle
    cav_ay, cav_ax = inner_ay - b.muscle, inner_ax - b.muscle
    cavity = _ellipse(yy, xx, b.cy, c, cav_ay, cav_ax) <= 1.0
    s[cavity] = 35.0
    # Ribs: slanted bands in the wall just outside the cavity.
    wall = (_ellipse(yy, xx, b.cy, c, cav_ay + 9, cav_ax + 9) <= 1.0) & ~cavity
    phase = (zk + b.rib_slope * (b.cy + b.ay - yy) + b.rib_phase) % b.rib_period
    rib = wall & (phase < 9.0)
    anterior = yy < b.cy - 0.5 * cav_ay
    s[rib & ~anterior] = 350.0
    s[rib & anterior] = 110.0  # costal cartilage
    cortex = rib & ~anterior & ~ndi.binary_erosion(rib, iterations=1)
    s[cortex] = 750.0
    # Spine
    sp_cy = b.cy + cav_ay - 22.0
    s[_ellipse(yy, xx, sp_cy, c, 17, 19) <= 1.0] = 280.0
    s[(_ellipse(yy, xx, sp_cy, c, 17, 19) <= 1.0) & (_ellipse(yy, xx, sp_cy, c, 15, 17) > 1.0)] = 700.0
    s[_ellipse(yy, xx, sp_cy + 25, c, 8, 9) <= 1.0] = 20.0
    return cavity, cav_ay, cav_ax, sp_cy


def _lung_fields(g: _Grid, b: _Body, cavity: np.ndarray, cav_ay: float, cav_ax: float, level: float) -> np.ndarray:
    """Both lungs of one slice (shape depends on level along the lung height)."""
    yy, xx, c = g.yy, g.xx, g.c
    out = np.zeros(cavity.shape, dtype=bool)
    width = np.clip(np.sqrt(max(0.0, 1.0 - ((level - 0.62) / 0.66) ** 2)), 0.15, 1.0)
    for side in (-1.0, 1.0):
        lcx = c + side * cav_ax * 0.47
        lax = cav_ax * 0.46 * width
        lay = cav_ay * 0.86 * (0.5 + 0.5 * width)
        le = _ellipse(yy, xx, b.cy + 4, lcx, lay, lax)
        # flatten the medial side (mediastinum)
        medial = side * (xx - c) < cav_ax * (0.16 if side > 0 else 0.10)
        lung_k = (le <= 1.0) & cavity & ~medial
        if level > 0.75 and side < 0:  # liver dome intrudes into the right base
            dome = _ellipse(yy, xx, b.cy + 10, lcx, lay * (level - 0.75) * 4, lax * (level - 0.75) * 4)
            lung_k &= dome > 1.0
        if level > 0.85 and side > 0:
            dome = _ellipse(yy, xx, b.cy + 10, lcx, lay * (level - 0.85) * 5, lax * (level - 0.85) * 5)
            lung_k &= dome > 1.0
        out |= lung_k
    return out


def _draw_slice(s: np.ndarray, lung_k: np.ndarray, g: _Grid, b: _Body, zk: float) -> None:
    """Draw the anatomy of one fine slice into ``s`` (HU) and ``lung_k`` (lung mask), in place."""
    yy, xx, c = g.yy, g.xx, g.c
    level = b.level0 + (zk - g.z[-1] / 2) / 250.0
    s[(yy > b.cy + b.ay + 12) & (yy < b.cy + b.ay + 16)] = 150.0  # table
    cavity, cav_ay, cav_ax, sp_cy = _wall_and_spine(s, g, b, zk)
    lung_k |= _lung_fields(g, b, cavity, cav_ay, cav_ax, level)
    # Heart (lower levels), aorta, trachea (upper levels).
    if level > 0.45:
        hr = min(1.0, (level - 0.45) * 3.0)
        heart = _ellipse(yy, xx, b.cy - cav_ay * 0.2, c + cav_ax * 0.12, cav_ay * 0.45 * hr, cav_ax * 0.32 * hr)
        lung_k &= heart > 1.0
        s[heart <= 1.0] = 40.0
    aorta = _ellipse(yy, xx, sp_cy - 28, c + 16, 12, 12) <= 1.0
    lung_k &= ~aorta
    if level < 0.35:
        trachea_c = (b.cy - 10, c)
        tr = _ellipse(yy, xx, trachea_c[0], trachea_c[1], 9, 10)
        lung_k &= tr > 1.6
        s[tr <= 1.25] = 20.0
        s[tr <= 1.0] = -1000.0
    # Parenchyma with gravity gradient.
    grad = (yy - (b.cy - cav_ay)) / (2 * cav_ay)
    s[lung_k] = (-880.0 + 60.0 * grad)[lung_k]


def _vessel_segments(rng: np.random.Generator, lung: np.ndarray, g: _Grid, b: _Body) -> tuple[list, list]:
    """Vessel trees from the hila (the first segments of each also carry a bronchus) and scattered
    peripheral vessels (short, thin, roughly radial: the dots and lines that mimic nodules)."""
    z, y, x, c = g.z, g.y, g.x, g.c
    cav_ax = b.ax - b.fat - b.muscle
    segs: list = []
    bronchi: list = []
    for side in (-1.0, 1.0):
        cols = np.nonzero(lung.any(axis=(0, 1)))[0]
        if cols.size == 0:
            continue
        for _ in range(int(rng.integers(5, 9))):
            hilum = np.array([rng.uniform(0, z[-1]), b.cy + rng.uniform(-15, 15), c + side * cav_ax * 0.22])
            d = np.array([rng.normal(scale=0.7), rng.normal(scale=0.8), side * rng.uniform(0.5, 1.2)])
            d /= np.linalg.norm(d)
            tree: list = []
            _segments_tree(rng, hilum + rng.normal(scale=3.0, size=3), d, float(rng.uniform(2.5, 4.5)), tree)
            segs.extend(tree)
            bronchi.extend(tree[:6])
    lz, ly, lx = np.nonzero(lung[:, ::4, ::4])
    if lz.size:
        for i in rng.integers(lz.size, size=int(rng.integers(150, 300))):
            p0 = np.array([z[lz[i]], y[ly[i] * 4], x[lx[i] * 4]])
            d = np.array([rng.normal(scale=0.6), p0[1] - b.cy, p0[2] - c])
            d /= max(np.linalg.norm(d), 1e-6)
            d = d + rng.normal(scale=0.3, size=3)
            d /= np.linalg.norm(d)
            segs.append((p0, p0 + d * rng.uniform(5.0, 20.0), float(rng.uniform(0.5, 1.8))))
    return segs, bronchi


def _hilar_segments(rng: np.random.Generator, g: _Grid, b: _Body) -> tuple[list, list]:
    """Large hilar vessels: per side 1-2 pulmonary artery / vein trunks (12-24 mm across) from the edge
    of the mediastinum into the lung, each with 2-4 lobar branches (6-16 mm across) running in and
    through the plane; returns (trunks and lobar branches, the ordinary vessel trees they go on as)."""
    cav_ax = b.ax - b.fat - b.muscle
    big: list = []
    trees: list = []
    for side in (-1.0, 1.0):
        edge = g.c + side * cav_ax * (0.16 if side > 0 else 0.10)
        for _ in range(int(rng.integers(1, 3))):
            r = float(rng.uniform(6.0, 12.0))
            p0 = np.array([rng.uniform(0.1, 0.9) * g.z[-1], b.cy + rng.uniform(-20, 15), edge - side * 0.5 * r])
            d = np.array([rng.normal(scale=0.5), rng.normal(scale=0.4), side * rng.uniform(0.6, 1.0)])
            d /= np.linalg.norm(d)
            p1 = p0 + d * rng.uniform(12.0, 25.0)
            big.append((p0, p1, r))
            for _ in range(int(rng.integers(2, 5))):
                br = r * float(rng.uniform(0.5, 0.7))
                nd = np.array([rng.normal(scale=1.0), rng.normal(scale=0.7), side * rng.uniform(0.2, 1.0)])
                nd /= np.linalg.norm(nd)
                q = p1 + nd * rng.uniform(15.0, 30.0)
                big.append((p1, q, br))
                tree: list = []
                _segments_tree(rng, q, nd, br * 0.72, tree)
                trees.extend(tree[:40])
    return big, trees


def _draw_hilar(hu: np.ndarray, lung: np.ndarray, g: _Grid, big: list, value: float) -> None:
    """Composite the hilar trunks and lobar branches (soft tissue ``value``) into the lungs and the soft
    tissue of ``hu``, and take them out of ``lung`` (both in place)."""
    occ = _draw_tubes(hu, g.z, g.y, g.x, big, value)
    occ *= lung | ((hu > -150.0) & (hu < 120.0))
    hu[:] = hu * (1 - occ) + value * occ
    lung &= occ < 0.5


def _draw_vessels(
    rng: np.random.Generator, hu: np.ndarray, lung: np.ndarray, g: _Grid, segs: list, bronchi: list
) -> None:
    """Composite vessels (soft tissue) and bronchi (wall and air lumen) into the lungs of ``hu``, in place."""
    vessel_occ = _draw_tubes(hu, g.z, g.y, g.x, segs, 40.0)
    vessel_occ *= lung
    vessel_hu = rng.uniform(20.0, 60.0)
    hu[:] = hu * (1 - vessel_occ) + vessel_hu * vessel_occ
    if bronchi:
        shifted = [(p0 + 1.5, p1 + 1.5, r * 0.8) for p0, p1, r in bronchi]
        wall_occ = _draw_tubes(hu, g.z, g.y, g.x, shifted, 0.0) * lung
        lumen_occ = _draw_tubes(hu, g.z, g.y, g.x, shifted, 0.0, scale=0.6) * lung
        hu[:] = hu * (1 - wall_occ) + 10.0 * wall_occ
        hu[:] = hu * (1 - lumen_occ) - 1000.0 * lumen_occ


def _add_nodules(
    rng: np.random.Generator,
    hu: np.ndarray,
    lung: np.ndarray,
    g: _Grid,
    segs: list,
    n_nodules: int | tuple[int, int],
    min_diameter: float,
) -> tuple[np.ndarray, list[NoduleSpec]]:
    """Place and blend the nodules into ``hu`` (in place); returns the label map and the specs."""
    z, y, x = g.z, g.y, g.x
    count = n_nodules if isinstance(n_nodules, int) else int(rng.integers(n_nodules[0], n_nodules[1] + 1))
    labels = np.zeros(hu.shape, dtype=np.int16)
    specs: list[NoduleSpec] = []
    inside = ndi.distance_transform_edt(lung, sampling=(g.dz, PIXEL_MM, PIXEL_MM))
    big_vessels = [(p0, p1, r) for p0, p1, r in segs if r > 1.2]
    for _ in range(count):
        spec = _place_nodule(rng, lung, inside, z, y, x, big_vessels, specs, min_diameter)
        if spec is None:
            continue
        r = spec.radius * 2.8 + 2.0
        zi = np.nonzero(np.abs(z - spec.center[0]) <= r)[0]
        yi = np.nonzero(np.abs(y - spec.center[1]) <= r)[0]
        xi = np.nonzero(np.abs(x - spec.center[2]) <= r)[0]
        if not (zi.size and yi.size and xi.size):
            continue
        box = (slice(zi[0], zi[-1] + 1), slice(yi[0], yi[-1] + 1), slice(xi[0], xi[-1] + 1))
        occ, core, calc = render_occupancy(spec, z[box[0]], y[box[1]], x[box[2]], g.dz)
        allowed = ndi.binary_dilation(lung[box], iterations=1).astype(np.float32)
        occ, core, calc = occ * allowed, core * allowed, calc * allowed
        hu[box] = blend(hu[box], spec, occ, core, calc)
        specs.append(spec)
        lab = labels[box]
        lab[(occ >= 0.5) & (lab == 0)] = len(specs)
    return labels, specs


def _acquire(
    rng: np.random.Generator, hu: np.ndarray, lung: np.ndarray, labels: np.ndarray, n_specs: int, g: _Grid
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """To the output slice thickness (box profile), then kernel blur and correlated noise."""
    size = hu.shape[1]
    if g.n_sub > 1:
        hu = hu.reshape(g.n_out, g.n_sub, size, size).mean(axis=1)
        lung = lung.reshape(g.n_out, g.n_sub, size, size).mean(axis=1) >= 0.5
        new_labels = np.zeros((g.n_out, size, size), dtype=np.int16)
        for i in range(1, n_specs + 1):
            frac = (labels == i).reshape(g.n_out, g.n_sub, size, size).mean(axis=1)
            new_labels[(frac >= 0.5) & (new_labels == 0)] = i
        labels = new_labels
    blur = float(rng.uniform(0.4, 1.0))
    hu = ndi.gaussian_filter(hu, (0, blur, blur))
    sigma_noise = float(rng.uniform(8.0, 45.0))
    noise = ndi.gaussian_filter(rng.normal(size=hu.shape).astype(np.float32), (0, 0.7, 0.7))
    noise *= sigma_noise / max(float(noise.std()), 1e-6)
    hu = np.clip(hu + noise, -1024.0, 3071.0).astype(np.float32)
    return hu, lung, labels


def make_phantom(
    rng: np.random.Generator,
    n_nodules: int | tuple[int, int] = (1, 4),
    thickness: float | None = None,
    size: int = 288,
    extent_mm: float = 64.0,
    min_diameter: float = 3.0,
    hilar: bool = False,
) -> Phantom:
    """Generate one chest CT phantom.

    Args:
        rng: random generator (all randomness comes from it).
        n_nodules: count, or an inclusive (min, max) range.
        thickness: slice thickness = spacing in mm (random from :data:`THICKNESSES` when None).
        size: rows = columns at :data:`PIXEL_MM`.
        extent_mm: z extent in mm.
        min_diameter: smallest nodule diameter drawn.
        hilar: also draw large hilar vessel trunks and lobar branches (:func:`_hilar_segments`); off by
            default, so that the phantoms of a seed stay those the shipped bundles were trained and
            evaluated on.

    Returns:
        A :class:`Phantom` (HU float32 (slices, size, size), lung mask, nodule labels, specs).
    """
    g = _grid(rng, thickness, size, extent_mm)
    body = _body(rng, size, g.c)
    hu = np.full((len(g.z), size, size), -1000.0, dtype=np.float32)
    lung = np.zeros((len(g.z), size, size), dtype=bool)
    for k in range(len(g.z)):
        _draw_slice(hu[k], lung[k], g, body, float(g.z[k]))
    # Parenchymal texture (correlated).
    tex = ndi.gaussian_filter(rng.normal(size=hu.shape).astype(np.float32), (1.5 / g.dz, 1.5, 1.5))
    tex *= rng.uniform(15.0, 35.0) / max(float(tex.std()), 1e-6)
    hu[lung] += tex[lung]
    big: list = []
    if hilar:
        big, hilar_trees = _hilar_segments(rng, g, body)
        _draw_hilar(hu, lung, g, big, float(rng.uniform(20.0, 60.0)))
    segs, bronchi = _vessel_segments(rng, lung, g, body)
    if hilar:
        segs += hilar_trees
    _draw_vessels(rng, hu, lung, g, segs, bronchi)
    segs += big
    labels, specs = _add_nodules(rng, hu, lung, g, segs, n_nodules, min_diameter)
    hu, lung, labels = _acquire(rng, hu, lung, labels, len(specs), g)
    return Phantom(hu=hu, spacing=(g.t, PIXEL_MM, PIXEL_MM), lung=lung, labels=labels, nodules=specs, vessels=segs)


def _place_nodule(
    rng: np.random.Generator,
    lung: np.ndarray,
    inside: np.ndarray,
    z: np.ndarray,
    y: np.ndarray,
    x: np.ndarray,
    vessels: list,
    existing: list[NoduleSpec],
    min_diameter: float,
) -> NoduleSpec | None:
    for _ in range(30):
        spec = random_spec(rng, (0.0, 0.0, 0.0))
        if spec.radius * 2 < min_diameter:
            continue
        r = spec.radius
        kind = rng.choice(["isolated", "juxtapleural", "juxtavascular"], p=[0.5, 0.3, 0.2])
        if kind == "juxtavascular" and vessels:
            p0, p1, vr = vessels[int(rng.integers(len(vessels)))]
            q = p0 + rng.uniform(0.2, 0.8) * (p1 - p0)
            d = rng.normal(size=3)
            axis = (p1 - p0) / max(np.linalg.norm(p1 - p0), 1e-6)
            d -= (d @ axis) * axis
            d /= max(float(np.linalg.norm(d)), 1e-6)
            cen = q + d * (r + vr * 0.3)
        else:
            if kind == "juxtapleural":
                cand = np.nonzero((inside > r * 0.75) & (inside < r * 1.05 + 0.5))
            else:
                cand = np.nonzero(inside > r + 2.0)
            if cand[0].size == 0:
                continue
            i = int(rng.integers(cand[0].size))
            cen = np.array([z[cand[0][i]], y[cand[1][i]], x[cand[2][i]]])
        zi = int(np.clip(np.searchsorted(z, cen[0]), 0, len(z) - 1))
        yi = int(np.clip(round(cen[1] / PIXEL_MM - 0.5), 0, len(y) - 1))
        xi = int(np.clip(round(cen[2] / PIXEL_MM - 0.5), 0, len(x) - 1))
        if not lung[zi, yi, xi]:
            continue
        if any(np.linalg.norm(np.asarray(e.center) - cen) < (e.radius + r) * 1.6 + 4 for e in existing):
            continue
        spec.center = (float(cen[0]), float(cen[1]), float(cen[2]))
        return spec
    return None
