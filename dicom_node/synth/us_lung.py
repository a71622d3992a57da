"""Synthetic lung ultrasound (B-mode frames and cines) with pixel ground truth.

The scene is drawn in beam coordinates: ``u`` is the lateral position along the probe face (mm of
arc for a convex probe) and ``d`` the depth along the beam (mm). Every pixel of the output grid is
mapped to ``(u, d)`` once (linear: a rectangle; convex: a fan around a centre above the image), so
rib shadows and B-lines follow the beams and A-lines follow the probe face, as on real scanners.

Layers: chest wall (speckled soft tissue with fascia), ribs (bright curved cortex with a posterior
acoustic shadow to the bottom of the image), the pleural line (bright, slightly undulating, hidden
under ribs), below it one of four lung patterns - normal (A-line reverberations at multiples of the
pleural depth), B-lines (vertical comet tails from the pleura to the bottom, erasing A-lines),
consolidation (tissue-like, hypoechoic-to-isoechoic region with an irregular "shred" border and air
bronchograms) or effusion (anechoic layer under the parietal pleura with the lung line below).
Then speckle (Rayleigh, laterally correlated), depth attenuation (the residual after time-gain compensation),
overall gain, and for cines lung sliding (lung texture and B-lines move laterally, the chest wall
and ribs do not). Everything is deterministic by seed.

Ground truth: ``rib`` (cortex plus shadow), ``pleura`` (visible pleural line), ``b_lines``,
``consolidation``, ``effusion`` masks per frame, the frame class and the B-line count.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from enum import StrEnum

import numpy as np
from scipy import ndimage

logger = logging.getLogger(__name__)


class LungPattern(StrEnum):
    """Frame classes of the hierarchical classifier (first level: normal vs the other three)."""

    NORMAL = "normal"
    B_LINES = "b_lines"
    CONSOLIDATION = "consolidation"
    EFFUSION = "effusion"


PATTERNS: tuple[LungPattern, ...] = tuple(LungPattern)
ABNORMAL: tuple[LungPattern, ...] = (LungPattern.B_LINES, LungPattern.CONSOLIDATION, LungPattern.EFFUSION)


class Probe(StrEnum):
    LINEAR = "linear"
    CONVEX = "convex"


@dataclass
class LungUsSample:
    """One synthetic frame or cine with its ground truth; arrays are (frames, rows, cols)."""

    image: np.ndarray
    rib: np.ndarray
    pleura: np.ndarray
    b_lines: np.ndarray
    consolidation: np.ndarray
    effusion: np.ndarray
    fan: np.ndarray
    pattern: LungPattern
    b_line_count: int
    probe: Probe
    spacing_mm: float
    pleura_depth_mm: float


@dataclass(frozen=True)
class _Geometry:
    u: np.ndarray  # lateral mm, per pixel
    d: np.ndarray  # depth mm, per pixel
    fan: np.ndarray  # pixel inside the imaged field
    spacing: float
    depth: float
    u_min: float
    u_max: float


def _geometry(rng: np.random.Generator, probe: Probe, rows: int, cols: int) -> _Geometry:
    if probe is Probe.LINEAR:
        depth = float(rng.uniform(35.0, 60.0))
        s = depth / rows
        x = (np.arange(cols) - (cols - 1) / 2.0) * s
        y = np.arange(rows) * s
        u, d = np.meshgrid(x, y)
        fan = np.ones((rows, cols), dtype=bool)
        return _Geometry(u, d, fan, s, depth, float(x[0]), float(x[-1]))
    depth = float(rng.uniform(60.0, 100.0))
    radius = float(rng.uniform(25.0, 50.0))
    s = depth / rows
    half_width = (cols - 1) / 2.0 * s
    theta_max = float(np.arcsin(min(0.99, 0.97 * half_width / (radius + depth))))
    theta_max = min(theta_max, np.deg2rad(float(rng.uniform(28.0, 40.0))))
    x = (np.arange(cols) - (cols - 1) / 2.0) * s
    y = np.arange(rows) * s
    xx, yy = np.meshgrid(x, y)
    r = np.hypot(xx, yy + radius)
    theta = np.arctan2(xx, yy + radius)
    d = r - radius
    u = theta * radius
    fan = (np.abs(theta) <= theta_max) & (d >= 0) & (d <= depth)
    return _Geometry(u, d, fan, s, depth, -theta_max * radius, theta_max * radius)


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], sigma: tuple[float, float]) -> np.ndarray:
    field = ndimage.gaussian_filter(rng.standard_normal(shape), sigma)
    return field / (field.std() + 1e-6)


def _speckle(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    """Fully developed speckle: magnitude of laterally correlated complex noise, mean 1."""
    sigma = (0.7, float(rng.uniform(1.0, 2.0)))
    re = ndimage.gaussian_filter(rng.standard_normal(shape), sigma)
    im = ndimage.gaussian_filter(rng.standard_normal(shape), sigma)
    mag = np.hypot(re, im)
    return mag / (mag.mean() + 1e-6)


@dataclass
class _Scene:
    """Random parameters of one scene (shared by all frames of a cine)."""

    pattern: LungPattern
    pleura0: float
    pleura_amp: float
    pleura_period: float
    pleura_phase: float
    pleura_thick: float
    pleura_bright: float
    wall_level: float
    fascia: list[tuple[float, float, float]]
    ribs: list[tuple[float, float, float, float]]  # centre u, half width, top depth, curvature
    a_level: float
    a_decay: float
    b_lines: list[tuple[float, float, float]]  # u, half width, brightness
    cons: tuple[float, float, float, float] | None  # u0, u1, mean depth, brightness
    effusion: tuple[float, float, float] | None  # u0, u1, thickness
    lung_noise: float
    atten: float
    gain: float
    sliding: float
    period: float


def _intercostal_free(u: float, ribs: list[tuple[float, float, float, float]], margin: float) -> bool:
    return all(abs(u - c) > w + margin for c, w, _, _ in ribs)


def _scene(rng: np.random.Generator, geo: _Geometry, pattern: LungPattern) -> _Scene:
    span = geo.u_max - geo.u_min
    pleura0 = float(rng.uniform(0.22, 0.4) * geo.depth)
    n_ribs = int(rng.choice([0, 1, 2], p=[0.15, 0.35, 0.5]))
    ribs: list[tuple[float, float, float, float]] = []
    if n_ribs == 2:
        gap = float(rng.uniform(0.5, 0.75) * span)
        centre = float(rng.uniform(-0.1, 0.1) * span)
        positions = [centre - gap / 2, centre + gap / 2]
    elif n_ribs == 1:
        positions = [float(rng.uniform(geo.u_min + 0.1 * span, geo.u_max - 0.1 * span))]
        if abs(positions[0]) < 0.15 * span:
            positions = [positions[0] + np.sign(positions[0] + 1e-3) * 0.25 * span]
    else:
        positions = []
    for c in positions:
        half = float(rng.uniform(0.06, 0.11) * span)
        top = pleura0 - float(rng.uniform(1.5, 5.0))
        curvature = float(rng.uniform(0.015, 0.05))
        ribs.append((c, half, top, curvature))
    free = [u for u in np.linspace(geo.u_min + 2, geo.u_max - 2, 200) if _intercostal_free(u, ribs, 1.5)]
    if not free:
        free = [0.0]
    b_lines: list[tuple[float, float, float]] = []
    n_b = 0
    if pattern is LungPattern.NORMAL:
        n_b = int(rng.random() < 0.2)
    elif pattern is LungPattern.B_LINES:
        n_b = int(rng.integers(3, 8))
    elif pattern is LungPattern.CONSOLIDATION:
        n_b = int(rng.integers(0, 3))
    for _ in range(n_b):
        for _attempt in range(20):
            u = float(rng.choice(free))
            if all(abs(u - other) > 3.0 for other, _, _ in b_lines):
                b_lines.append((u, float(rng.uniform(0.6, 1.6)), float(rng.uniform(0.55, 0.9))))
                break
    cons = None
    if pattern is LungPattern.CONSOLIDATION:
        width = float(rng.uniform(0.25, 0.5) * span)
        u0 = float(rng.choice(free)) - width / 2
        cons = (u0, u0 + width, float(rng.uniform(0.25, 0.5) * geo.depth), float(rng.uniform(0.4, 0.6)))
    eff = None
    if pattern is LungPattern.EFFUSION:
        eff = (geo.u_min - 5, geo.u_max + 5, float(rng.uniform(0.12, 0.3) * geo.depth))
    fascia = [
        (float(rng.uniform(0.1, 0.9) * pleura0), float(rng.uniform(0.3, 0.8)), float(rng.uniform(0.15, 0.35)))
        for _ in range(int(rng.integers(1, 4)))
    ]
    return _Scene(
        pattern=pattern,
        pleura0=pleura0,
        pleura_amp=float(rng.uniform(0.0, 1.2)),
        pleura_period=float(rng.uniform(25.0, 80.0)),
        pleura_phase=float(rng.uniform(0, 2 * np.pi)),
        pleura_thick=float(rng.uniform(1.2, 2.2)),
        pleura_bright=float(rng.uniform(0.75, 1.0)),
        wall_level=float(rng.uniform(0.25, 0.45)),
        fascia=fascia,
        ribs=ribs,
        a_level=float(rng.uniform(0.35, 0.65)),
        a_decay=float(rng.uniform(0.5, 0.8)),
        b_lines=b_lines,
        cons=cons,
        effusion=eff,
        lung_noise=float(rng.uniform(0.06, 0.14)),
        atten=float(rng.uniform(0.004, 0.02)),
        gain=float(rng.uniform(0.75, 1.3)),
        sliding=float(rng.uniform(0.5, 2.0)),
        period=float(rng.uniform(8, 20)),
    )


def _rib_masks(geo: _Geometry, sc: _Scene) -> tuple[np.ndarray, np.ndarray]:
    """Ribs: the cortex, and the rib with its shadow below, along the beam."""
    u, d = geo.u, geo.d
    rib_mask = np.zeros(u.shape, dtype=bool)
    cortex = np.zeros(u.shape, dtype=bool)
    for c, w, top, k in sc.ribs:
        within = np.abs(u - c) < w
        surface = top + k * (u - c) ** 2
        rib_mask |= within & (d >= surface)
        cortex |= within & (d >= surface) & (d < surface + float(1.2 + 0.3 * w / 10))
    return rib_mask, cortex


def _wall_echo(
    rng: np.random.Generator, geo: _Geometry, sc: _Scene, pleura_d: np.ndarray, rib_mask: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Tissue echogenicity before speckle: chest wall with fasciae, and the pleural line; returns it with
    the wall, pleura and lung masks."""
    u, d = geo.u, geo.d
    half_t = sc.pleura_thick / 2
    echo = np.zeros(u.shape, dtype=np.float64)
    wall = d < pleura_d - half_t
    echo[wall] = sc.wall_level
    for depth, thick, bright in sc.fascia:
        echo += wall * bright * np.exp(-(((d - depth - 0.3 * np.sin(u / 9.0)) / thick) ** 2))
    pleura = (np.abs(d - pleura_d) <= half_t) & ~rib_mask
    lung = (d > pleura_d + half_t) & ~rib_mask
    grain = 0.75 + 0.25 * np.clip(_smooth_noise(rng, u.shape, (0.5, 2.0)), -1, 1)
    echo[pleura] = sc.pleura_bright * grain[pleura]
    return echo, wall, pleura, lung


def _lung_echo(
    rng: np.random.Generator, geo: _Geometry, sc: _Scene, pleura_d: np.ndarray, lung: np.ndarray, shred: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Echogenicity below the pleura: aerated lung noise, effusion (anechoic, with the lung surface line)
    and consolidation (tissue-like, with border and air bronchograms); returns it and both masks."""
    u, d = geo.u, geo.d
    half_t = sc.pleura_thick / 2
    lung_echo = np.full(u.shape, sc.lung_noise)
    lung_top = pleura_d.copy()
    eff_mask = np.zeros(u.shape, dtype=bool)
    if sc.effusion is not None:
        eff_thick = sc.effusion[2] * (1 + 0.15 * np.sin(u / 11.0))
        eff_mask = lung & (d < pleura_d + half_t + eff_thick)
        lung_top = pleura_d + half_t + eff_thick
        line = np.abs(d - lung_top - 0.8) < 0.8
        lung_echo = np.where(eff_mask, 0.015, lung_echo)
        lung_echo = np.where(line & lung & ~eff_mask, 0.55, lung_echo)
    cons_mask = np.zeros(u.shape, dtype=bool)
    if sc.cons is not None:
        u0, u1, depth_c, bright = sc.cons
        taper = np.clip(np.minimum(u - u0, u1 - u) / 4.0, 0, 1)
        bottom = pleura_d + half_t + depth_c * taper * (0.75 + 0.25 * shred)
        cons_mask = lung & (u > u0) & (u < u1) & (d < bottom) & (taper > 0.05)
        lung_echo = np.where(cons_mask, bright, lung_echo)
        border = lung & (u > u0) & (u < u1) & (np.abs(d - bottom) < 0.9) & (taper > 0.05)
        lung_echo = np.where(border, 0.7, lung_echo)
        bronch = cons_mask & (_smooth_noise(rng, u.shape, (0.8, 2.5)) > 2.0)
        lung_echo = np.where(bronch, 0.85, lung_echo)
    return lung_echo, eff_mask, cons_mask


def _artefacts(
    geo: _Geometry, sc: _Scene, shift: float, pleura_d: np.ndarray, lung: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """B-lines (vertical, moving with the sliding lung) and A-lines (reverberations of the pleura at
    multiples of its depth, from the lung surface): B-line mask, B-line echo, A-line echo."""
    u, d = geo.u, geo.d
    b_mask = np.zeros(u.shape, dtype=bool)
    b_echo = np.zeros(u.shape)
    for ub, w, bright in sc.b_lines:
        centre = ub + shift
        profile = np.exp(-(((u - centre) / w) ** 2))
        b_echo = np.maximum(b_echo, bright * profile * (0.85 + 0.15 * np.exp(-(d - pleura_d) / 40.0)))
        b_mask |= (np.abs(u - centre) < w) & lung
    a_gain = sc.a_level * (0.3 if sc.b_lines and sc.pattern is LungPattern.B_LINES else 1.0)
    a_echo = np.zeros(u.shape)
    if sc.pattern is not LungPattern.EFFUSION:
        for k in range(2, 12):
            a_depth = k * sc.pleura0
            if a_depth > geo.depth:
                break
            a_echo += a_gain * sc.a_decay ** (k - 2) * np.exp(-(((d - k * pleura_d) / sc.pleura_thick) ** 2))
    return b_mask, b_echo, a_echo


def _frame(
    rng: np.random.Generator,
    geo: _Geometry,
    sc: _Scene,
    shift: float,
    wall_speckle: np.ndarray,
    lung_speckle: np.ndarray,
    shred: np.ndarray,
) -> dict[str, np.ndarray]:
    u, d = geo.u, geo.d
    pleura_d: np.ndarray = sc.pleura0 + sc.pleura_amp * np.sin(2 * np.pi * u / sc.pleura_period + sc.pleura_phase)
    if sc.cons is not None:
        inside = (u > sc.cons[0]) & (u < sc.cons[1])
        pleura_d = pleura_d + inside * 0.6 * shred
    rib_mask, cortex = _rib_masks(geo, sc)
    echo, wall, pleura, lung = _wall_echo(rng, geo, sc, pleura_d, rib_mask)
    lung_echo, eff_mask, cons_mask = _lung_echo(rng, geo, sc, pleura_d, lung, shred)
    b_mask, b_echo, a_echo = _artefacts(geo, sc, shift, pleura_d, lung)
    a_echo = np.where(cons_mask | eff_mask, 0.0, a_echo) * (1 - np.clip(b_echo * 2, 0, 1))
    lung_total = np.where(cons_mask | eff_mask, lung_echo, np.maximum(lung_echo, b_echo) + a_echo)
    lung_total = np.where(eff_mask, lung_echo, lung_total)
    echo = np.where(lung, lung_total * lung_speckle, echo * np.where(wall, wall_speckle, 1.0))
    echo[pleura] *= 0.8 + 0.2 * wall_speckle[pleura]
    echo[cortex] = 0.95 * (0.85 + 0.15 * wall_speckle[cortex])
    shadow = rib_mask & ~cortex
    echo[shadow] = 0.03 * wall_speckle[shadow]
    # residual depth attenuation (after TGC), overall gain, soft compression
    echo *= np.exp(-sc.atten * d)
    echo = 1.0 - np.exp(-2.2 * sc.gain * echo)
    echo = np.clip(echo / (1.0 - np.exp(-2.2)), 0.0, 1.0)
    echo[~geo.fan] = 0.0
    b_mask &= ~cons_mask & ~eff_mask
    return {
        "image": echo.astype(np.float32),
        "rib": rib_mask & geo.fan,
        "pleura": pleura & geo.fan,
        "b_lines": b_mask & geo.fan,
        "consolidation": cons_mask & geo.fan,
        "effusion": eff_mask & geo.fan,
    }


def generate(
    seed: int,
    size: tuple[int, int] = (128, 128),
    frames: int = 1,
    pattern: LungPattern | str | None = None,
    probe: Probe | str | None = None,
) -> LungUsSample:
    """Generate one synthetic lung-US frame or cine.

    Args:
        seed: the only source of randomness; the same arguments give the same sample.
        size: (rows, cols) of each frame.
        frames: number of cine frames (1 for a still frame).
        pattern: lung pattern; random (uniform over the four) when ``None``.
        probe: linear or convex; random when ``None``.

    Returns:
        The frames in 0..1 and their ground-truth masks.
    """
    rng = np.random.default_rng(seed)
    chosen = LungPattern(pattern) if pattern is not None else PATTERNS[int(rng.integers(0, len(PATTERNS)))]
    kind = Probe(probe) if probe is not None else (Probe.LINEAR if rng.random() < 0.5 else Probe.CONVEX)
    rows, cols = size
    geo = _geometry(rng, kind, rows, cols)
    sc = _scene(rng, geo, chosen)
    wall_speckle = _speckle(rng, (rows, cols))
    pad = cols
    lung_base = _speckle(rng, (rows, cols + 2 * pad))
    shred = np.clip(_smooth_noise(rng, (rows, cols), (1.0, 3.0)), -2, 2)
    keys = ("image", "rib", "pleura", "b_lines", "consolidation", "effusion")
    out: dict[str, list[np.ndarray]] = {k: [] for k in keys}
    for t in range(frames):
        shift = sc.sliding * float(np.sin(2 * np.pi * t / sc.period)) if frames > 1 else 0.0
        px = round(shift / geo.spacing)
        lung_speckle = lung_base[:, pad - px : pad - px + cols]
        fresh = _speckle(rng, (rows, cols)) if frames > 1 else lung_speckle
        lung_speckle = np.sqrt(0.85) * lung_speckle + (1 - np.sqrt(0.85)) * fresh if frames > 1 else lung_speckle
        frame = _frame(rng, geo, sc, shift, wall_speckle, lung_speckle, shred)
        for k in keys:
            out[k].append(frame[k])
    return LungUsSample(
        image=np.stack(out["image"]),
        rib=np.stack(out["rib"]),
        pleura=np.stack(out["pleura"]),
        b_lines=np.stack(out["b_lines"]),
        consolidation=np.stack(out["consolidation"]),
        effusion=np.stack(out["effusion"]),
        fan=np.repeat(geo.fan[np.newaxis], frames, axis=0),
        pattern=chosen,
        b_line_count=len(sc.b_lines) if chosen is not LungPattern.EFFUSION else 0,
        probe=kind,
        spacing_mm=geo.spacing,
        pleura_depth_mm=sc.pleura0,
    )


def generate_set(n: int, seed: int, size: tuple[int, int] = (128, 128)) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``n`` still frames for training: images (n, 1, H, W), labels (n, H, W) int64, classes (n,).

    Labels: 0 background, 1 rib (cortex and shadow), 2 pleural line, 3 B-line. Classes index :data:`PATTERNS`.
    Frame ``i`` is ``generate(seed * 100_003 + i)`` with the pattern cycling through the four classes.
    """
    images = np.zeros((n, 1, *size), dtype=np.float32)
    labels = np.zeros((n, *size), dtype=np.int64)
    classes = np.zeros(n, dtype=np.int64)
    for i in range(n):
        sample = generate(seed * 100_003 + i, size=size, pattern=PATTERNS[i % len(PATTERNS)])
        images[i, 0] = sample.image[0]
        labels[i][sample.b_lines[0]] = 3
        labels[i][sample.rib[0]] = 1
        labels[i][sample.pleura[0]] = 2
        classes[i] = PATTERNS.index(sample.pattern)
    return images, labels, classes
