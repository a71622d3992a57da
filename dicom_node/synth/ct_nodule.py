"""Synthetic lung nodules: random specifications and partial-volume rendering on any CT grid.

A nodule is described by :class:`NoduleSpec` (centre in mm, radius, margin shape, composition) and
rendered as two occupancy fields in [0, 1]: ``occ`` (the whole nodule, ground glass included) and
``core`` (its solid part). Blending into a CT volume: ``hu = bg * (1 - occ) + hu_ggo * (occ - core) +
hu_solid * core``. Rendering supersamples along z over the slice thickness, so thick slices show the
partial-volume dimming a real scanner produces.

Ground truth used for training: malignancy follows the margin (lobulated or spiculated = malignant,
smooth or calcified = benign); composition is solid / part_solid / ground_glass.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np

logger = logging.getLogger(__name__)

SHAPES = ("smooth", "calcified", "lobulated", "spiculated")
COMPOSITIONS = ("solid", "part_solid", "ground_glass")
MALIGNANT_SHAPES = ("lobulated", "spiculated")


@dataclass
class NoduleSpec:
    """One synthetic nodule. Positions and sizes in mm, in the volume's (z, y, x) patient-aligned frame."""

    center: tuple[float, float, float]
    radius: float
    shape: str
    composition: str
    hu_solid: float = 40.0
    hu_ggo: float = -550.0
    hu_calc: float = 600.0
    axes: tuple[float, float, float] = (1.0, 1.0, 1.0)
    rotation: np.ndarray = field(default_factory=lambda: np.eye(3))
    lobes: list[tuple[np.ndarray, float]] = field(default_factory=list)
    spicules: list[tuple[np.ndarray, float, float]] = field(default_factory=list)
    core_frac: float = 1.0
    calc_frac: float = 0.0
    texture_seed: int = 0

    @property
    def malignant(self) -> bool:
        return self.shape in MALIGNANT_SHAPES


def random_spec(
    rng: np.random.Generator,
    center: tuple[float, float, float],
    diameter: float | None = None,
    shape: str | None = None,
    composition: str | None = None,
) -> NoduleSpec:
    """A random nodule around ``center``: diameter 3-40 mm (log-uniform, most 4-25 mm)."""
    if diameter is None:
        diameter = float(np.exp(rng.uniform(np.log(3.0), np.log(32.0))))
        if rng.random() < 0.05:
            diameter = float(rng.uniform(30.0, 40.0))
    shape = shape or str(rng.choice(SHAPES, p=[0.3, 0.15, 0.3, 0.25]))
    if composition is None:
        composition = "solid" if shape == "calcified" else str(rng.choice(COMPOSITIONS, p=[0.6, 0.2, 0.2]))
    radius = diameter / 2.0
    q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    elong = rng.uniform(0.8, 1.15, size=3) if shape != "smooth" else rng.uniform(0.85, 1.1, size=3)
    spec = NoduleSpec(
        center=center,
        radius=radius,
        shape=shape,
        composition=composition,
        hu_solid=float(rng.uniform(0.0, 70.0)),
        hu_ggo=float(rng.uniform(-700.0, -400.0)),
        hu_calc=float(rng.uniform(250.0, 900.0)),
        axes=(float(elong[0]), float(elong[1]), float(elong[2])),
        rotation=q,
        texture_seed=int(rng.integers(1 << 30)),
    )
    if shape in ("lobulated", "spiculated"):
        n = int(rng.integers(3, 7))
        for _ in range(n):
            d = rng.normal(size=3)
            d /= np.linalg.norm(d)
            spec.lobes.append((d * radius * rng.uniform(0.35, 0.55), radius * rng.uniform(0.45, 0.7)))
    if shape == "spiculated":
        for _ in range(int(rng.integers(6, 18))):
            d = rng.normal(size=3)
            d[0] *= 0.6
            d /= np.linalg.norm(d)
            spec.spicules.append((d, radius * rng.uniform(0.6, 1.6), rng.uniform(0.35, 0.8)))
    if composition == "part_solid":
        spec.core_frac = float(rng.uniform(0.3, 0.65))
    elif composition == "ground_glass":
        spec.core_frac = 0.0
    if shape == "calcified":
        spec.calc_frac = float(rng.uniform(0.3, 0.8))
    return spec


def _soft(dist_inside: np.ndarray, edge: float = 0.35) -> np.ndarray:
    """Occupancy from a signed distance (positive inside, mm) with a sub-voxel soft edge."""
    return np.clip(dist_inside / (2 * edge) + 0.5, 0.0, 1.0)


def _body_distance(spec: NoduleSpec, p: np.ndarray, scale: float) -> np.ndarray:
    """Approximate signed distance (mm, positive inside) of points p (N, 3) to the nodule body."""
    r = spec.radius * scale
    local = p @ spec.rotation
    norm = np.linalg.norm(local / np.asarray(spec.axes), axis=1)
    if spec.lobes:
        main = r * 0.8 - norm
        for offset, lr in spec.lobes:
            d = lr * scale - np.linalg.norm(local - offset * scale, axis=1)
            main = np.maximum(main, d)
        return np.asarray(main)
    return np.asarray(r - norm)


def render_occupancy(
    spec: NoduleSpec, z: np.ndarray, y: np.ndarray, x: np.ndarray, thickness: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Occupancy of the nodule, its solid core and its calcification on a grid.

    Args:
        spec: the nodule.
        z, y, x: 1-D coordinate axes in mm (slice centres, row centres, column centres).
        thickness: slice thickness in mm; occupancy is averaged over it (box slice profile).

    Returns:
        (occ, core, calc), each shaped (len(z), len(y), len(x)), float32 in [0, 1].
    """
    n_sub = max(1, int(np.ceil(thickness / 0.5)))
    offsets = (np.arange(n_sub) + 0.5) / n_sub * thickness - thickness / 2.0
    occ = np.zeros((len(z), len(y), len(x)), dtype=np.float32)
    core = np.zeros_like(occ)
    calc = np.zeros_like(occ)
    yy, xx = np.meshgrid(y - spec.center[1], x - spec.center[2], indexing="ij")
    for off in offsets:
        for k, zk in enumerate(z):
            dz = zk + off - spec.center[0]
            if abs(dz) > spec.radius * 2.8 + 1.0:
                continue
            p = np.stack([np.full(yy.size, dz), yy.ravel(), xx.ravel()], axis=1)
            d = _body_distance(spec, p, 1.0)
            o = _soft(d)
            if spec.spicules:
                o = np.maximum(o, _spicules(spec, p))
            c = (
                o
                if spec.core_frac >= 1.0
                else (_soft(_body_distance(spec, p, spec.core_frac)) if spec.core_frac > 0 else 0 * o)
            )
            a = _soft(_body_distance(spec, p, spec.calc_frac)) if spec.calc_frac > 0 else 0 * o
            occ[k] += o.reshape(yy.shape).astype(np.float32)
            core[k] += np.minimum(c, o).reshape(yy.shape).astype(np.float32)
            calc[k] += np.minimum(a, o).reshape(yy.shape).astype(np.float32)
    occ /= n_sub
    core /= n_sub
    calc /= n_sub
    return occ, core, calc


def _spicules(spec: NoduleSpec, p: np.ndarray) -> np.ndarray:
    out = np.zeros(len(p))
    base = spec.radius * 0.7
    for direction, length, width in spec.spicules:
        t = p @ direction
        along = np.clip(t - base, 0.0, length)
        perp = np.linalg.norm(p - np.outer(t, direction), axis=1)
        taper = width * (1.0 - along / length)
        inside = (t > base * 0.5) & (t < base + length)
        d = np.where(inside, taper - perp, -10.0)
        out = np.maximum(out, _soft(d, 0.25))
    return out


def blend(background: np.ndarray, spec: NoduleSpec, occ: np.ndarray, core: np.ndarray, calc: np.ndarray) -> np.ndarray:
    """Blend a rendered nodule into HU ``background`` (same shape); returns the new HU array."""
    rng = np.random.default_rng(spec.texture_seed)
    texture = rng.normal(0.0, 1.0, size=occ.shape).astype(np.float32)
    from scipy import ndimage as ndi

    texture = ndi.gaussian_filter(texture, 1.0) * 3.0
    ggo = spec.hu_ggo + 60.0 * texture
    solid = spec.hu_solid + 15.0 * texture
    ggo_part = np.clip(occ - core, 0.0, 1.0)
    solid_part = np.clip(core - calc, 0.0, 1.0)
    out = background * (1.0 - occ) + ggo * ggo_part + solid * solid_part + spec.hu_calc * calc
    return np.asarray(out, dtype=np.float32)
