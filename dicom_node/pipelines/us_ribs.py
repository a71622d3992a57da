"""Rib acoustic shadows along the probe's beams, anchored on the chosen pleural line, where the network has none.

The segmentation network, trained on synthetic frames, labels few of the rib shadows of real frames
(1 of 8 hand-marked ones in bundle 0.4.0). A sonographer finds a rib as a bright curved surface at
about the pleura's depth with an anechoic band straight below it along the beams, and the pleural
line interrupted there. This module looks for exactly that, given the pleural line that
:func:`dicom_node.pipelines.us_pleura.locate_pleura` chose:

1. The probe's beams: a convex probe's beams (and so its rib shadows) are rays from a virtual apex
   above the image, where the straight left and right edges of the cine's sector meet
   (:func:`apex_of`, on :func:`dicom_node.pipelines.us_pleura.sector_mask`); a linear probe's beams
   are the columns. The sector is cut into beams (:func:`beam_map`).
2. Per beam, means in three bands measured from the pleural line along the column: below it
   (:data:`BELOW`), just below it (:data:`NEAR`) and the chest wall just above it (:data:`ABOVE`).
   A beam is a shadow when its band below is dark compared with lit beams on BOTH sides
   (:data:`SHADOW_RATIO`; a fading sector edge has no lit beam beyond it and is never one), it is
   already dark just below the line (:data:`NEAR_RATIO`: the shadow begins at the pleura's depth,
   the pleural line is interrupted there) and the chest wall above it is lit (:data:`WALL_RATIO`).
   Beams beside the network's B-lines are neither shadows nor lit references (:data:`COMET_GUARD`:
   the dark aerated lung between two B-lines is no shadow). A run of shadow beams widens over the
   dark beams beside it (:data:`GROW_RATIO`) and is kept when it is :data:`RUN` of the sector's
   beams wide (a rib) (:func:`shadow_beams`).
3. The rib is labelled as the generator labels it (:mod:`dicom_node.synth.us_lung`: the rib's
   cortex and its whole shadow along the beam): from :data:`SURFACE` of the depth above the pleural
   line down to the bottom of the sector, in the run's beams (:func:`find_rib_shadows`).
4. A run is added to the label map only where the pleural line is interrupted (the line's label on
   at most :data:`INTERRUPTED` of its columns), where the network has no rib of its own in those
   beams, and only over background pixels (:func:`add_rib_shadows`). On the 200 synthetic frames of
   the evaluation it adds nothing (the network labels the generator's ribs; between B-lines the
   pleura runs on).

The thresholds were set on the hand-marked shadows of TRAIN-part frames
(``dicom_node/training/us_rib_refs.csv``) and on the synthetic frames, never on the check part.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

RIB, PLEURA, B_LINE = 1, 2, 3
BELOW = (0.03, 0.3)
NEAR = (0.02, 0.08)
ABOVE = (-0.12, -0.03)
"""Bands, as fractions of the depth measured from the pleural line (positive: below it), whose means per
beam decide: the lung below the line, the first part of it just below the line, the chest wall above."""
SHADOW_RATIO = 0.62
"""A shadow beam's mean below the line is at most this fraction of the brightest beam within
:data:`SIDE` on its darker side (so lit beams on both sides are required)."""
NEAR_RATIO = 0.75
"""... and just below the line at most this fraction of the same, taken on the :data:`NEAR` band."""
WALL_RATIO = 1.1
"""... and the chest wall above the line at least this many times brighter than just below it."""
MIN_LIT = 0.05
"""The lit beams beside a shadow have a mean below the line of at least this (0..1)."""
SIDE = 0.2
"""How far (fraction of the sector's beams) to each side the lit beams are looked for."""
RUN = (0.03, 0.25)
"""Width of a rib shadow as a fraction of the sector's beams."""
SURFACE = 0.02
"""The rib's label starts this fraction of the depth above the pleural line (its cortex lies at or a bit
above the pleura's depth) and runs to the bottom of the sector."""
COMET_GUARD = 0.03
"""Beams within this fraction of the sector's beams of a network B-line are neither shadows nor lit references."""
GROW_RATIO = 0.62
"""A shadow run widens over the beams beside it whose band below the line is at most this fraction of the lit
beams' (the rib's penumbra, where its curved surface no longer meets the near and wall conditions)."""
INTERRUPTED = 0.9
LINE_TOL = 0.02
"""A run is a rib only where the pleural line is interrupted: the pleural-line label lies within LINE_TOL of the
depth of the line in at most INTERRUPTED of the run's columns (between B-lines the pleura runs on)."""
BEAM_PX = 3
"""The sector is cut into one beam per BEAM_PX of its columns (wider beams, steadier means near the apex)."""
EDGE_ROWS = (0.05, 0.4)
"""The sector's side edges are fitted on this part of its rows (the upper part: deeper, a dark part of the fan
may be missing from the sector mask and its edge step inwards)."""
NETWORK_OVERLAP = 0.1
"""A run whose pixels the network already labels rib for more than this share is left to the network."""


def apex_of(sector: np.ndarray) -> tuple[float, float] | None:
    """(row, col) of the point the sector's straight side edges meet (above the image), or ``None`` when the
    edges are about vertical (a linear probe) or cannot be fitted."""
    rows, cols = sector.shape
    has = np.asarray(sector.any(axis=1), dtype=bool)
    r = np.flatnonzero(has)
    if r.size < 0.3 * rows:
        return None
    first = np.argmax(sector, axis=1).astype(float)
    last = (cols - 1 - np.argmax(sector[:, ::-1], axis=1)).astype(float)
    lo, hi = r[0] + int(EDGE_ROWS[0] * r.size), r[0] + int(EDGE_ROWS[1] * r.size)
    fits: list[tuple[float, float] | None] = []
    for edge, border in ((first, 0.0), (last, cols - 1.0)):
        rr = np.arange(lo, hi)
        keep = has[rr] & (np.abs(edge[rr] - border) > 1.5)
        if keep.sum() < 0.4 * rr.size:
            fits.append(None)
            continue
        fits.append(_edge_fit(rr[keep].astype(float), edge[rr][keep]))
    left, right = fits
    if left is None or right is None:
        return None
    if left[0] > -0.15 or right[0] < 0.15:  # edges not spreading: linear probe (or a cropped sector)
        return None
    row = (right[1] - left[1]) / (left[0] - right[0])
    col = left[0] * row + left[1]
    if row > 0.2 * rows or row < -3.0 * rows:
        return None
    return float(row), float(col)


def _edge_fit(r: np.ndarray, c: np.ndarray) -> tuple[float, float]:
    """(slope, intercept) of col = slope * row + intercept of a sector edge, robust to a stretch where a dark part
    of the fan is missing from the sector mask (its edge steps inwards): lines fitted on each third of the rows,
    the one that most rows lie within 2 px of refitted on those rows."""
    best: tuple[int, np.ndarray] | None = None
    for part in np.array_split(np.arange(r.size), 3):
        if part.size < 3:
            continue
        slope, icpt = np.polyfit(r[part], c[part], 1)
        inliers = np.abs(c - (slope * r + icpt)) <= 2.0
        if best is None or int(inliers.sum()) > best[0]:
            best = (int(inliers.sum()), inliers)
    keep = best[1] if best is not None and best[0] >= 3 else np.ones(r.size, dtype=bool)
    slope, icpt = np.polyfit(r[keep], c[keep], 1)
    return float(slope), float(icpt)


def beam_map(sector: np.ndarray, apex: tuple[float, float] | None, n_beams: int) -> np.ndarray:
    """Beam index (0..n_beams-1) of every pixel of the sector (-1 outside): angle bins about ``apex``, or columns."""
    rows, cols = sector.shape
    rr, cc = np.indices((rows, cols), dtype=float)
    angle = cc if apex is None else np.arctan2(cc - apex[1], rr - apex[0])
    inside = angle[sector]
    if inside.size == 0:
        return np.full((rows, cols), -1)
    lo, hi = float(inside.min()), float(inside.max())
    beams = np.floor((angle - lo) / max(hi - lo, 1e-9) * n_beams).astype(int).clip(0, n_beams - 1)
    return np.where(sector, beams, -1)


def beam_means(image: np.ndarray, beams: np.ndarray, mask: np.ndarray, n: int, least: int = 4) -> np.ndarray:
    """Per beam: the mean of ``image`` over the beam's pixels in ``mask`` (nan with fewer than ``least``)."""
    sel = mask & (beams >= 0)
    count = np.bincount(beams[sel], minlength=n)
    total = np.bincount(beams[sel], weights=image[sel], minlength=n)
    return np.where(count >= least, total / np.maximum(count, 1), np.nan)


def side_max(values: np.ndarray, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Per beam: the brightest value within ``width`` beams on the left and on the right (-1 where none)."""
    v = np.where(np.isfinite(values), values, -1.0)
    n = len(v)
    left = np.array([v[max(0, i - width) : i].max() if i > 0 else -1.0 for i in range(n)])
    right = np.array([v[i + 1 : i + 1 + width].max() if i < n - 1 else -1.0 for i in range(n)])
    return left, right


def shadow_beams(
    image: np.ndarray, line_rows: np.ndarray, beams: np.ndarray, n: int, comet: np.ndarray | None = None
) -> np.ndarray:
    """Which of the ``n`` beams are rib shadows below the pleural line ``line_rows`` (module docstring, 2).

    Beams with the network's B-lines (``comet``) below the line, and their neighbours within
    :data:`COMET_GUARD`, are neither shadows nor lit references: the dark lung between two B-lines is
    aerated lung, not a shadow between lit lung. A run of shadow beams is then widened over the beams
    beside it that are still dark (:data:`GROW_RATIO`), the penumbra of the same rib.
    """
    rows = image.shape[0]
    offset = np.arange(rows)[:, None] - line_rows[None, :]

    def band(lo: float, hi: float) -> np.ndarray:
        return beam_means(image, beams, (offset >= lo * rows) & (offset <= hi * rows), n)

    below, near, above = band(*BELOW), band(*NEAR), band(*ABOVE)
    if comet is not None and comet.any():
        share = beam_means(comet.astype(np.float32), beams, (offset >= BELOW[0] * rows), n)
        guard = np.asarray(ndimage.binary_dilation(np.nan_to_num(share) > 0.05, np.ones(2 * int(COMET_GUARD * n) + 1)))
        below, near = np.where(guard, np.nan, below), np.where(guard, np.nan, near)
    width = max(3, int(SIDE * n))
    left, right = side_max(below, width)
    lit_side = np.minimum(left, right)
    near_left, near_right = side_max(near, width)
    dark = np.isfinite(below) & (lit_side >= MIN_LIT)
    shadow = (
        dark
        & (np.nan_to_num(below, nan=1.0) <= SHADOW_RATIO * lit_side)
        & (np.nan_to_num(near, nan=1.0) <= NEAR_RATIO * np.minimum(near_left, near_right))
        & (np.nan_to_num(above, nan=0.0) >= WALL_RATIO * np.nan_to_num(near, nan=1.0))
    )
    shadow = np.asarray(ndimage.binary_opening(shadow, np.ones(2)))
    runs, k = ndimage.label(shadow)
    for i in range(1, k + 1):
        if (runs == i).sum() < RUN[0] * n:
            shadow[runs == i] = False
    penumbra = dark & (np.nan_to_num(below, nan=1.0) <= GROW_RATIO * lit_side)
    shadow = np.asarray(ndimage.binary_propagation(shadow, mask=penumbra | shadow))
    runs, k = ndimage.label(shadow)
    for i in range(1, k + 1):
        if (runs == i).sum() > RUN[1] * n:
            shadow[runs == i] = False
    return shadow


def find_rib_shadows(
    frame: np.ndarray,
    sector: np.ndarray,
    line_rows: np.ndarray,
    apex: tuple[float, float] | None,
    labels: np.ndarray | None = None,
) -> list[np.ndarray]:
    """Pixel masks of the rib shadows (rib surface and shadow, as the generator labels a rib) of one frame.

    Args:
        frame: (rows, cols) in 0..1.
        sector: the cine's imaged sector (:func:`dicom_node.pipelines.us_pleura.sector_mask`).
        line_rows: the chosen pleural line's row per column (``PleuraLine.rows``).
        apex: the probe's apex (:func:`apex_of`) or ``None`` for parallel beams.
        labels: the frame's label map, if any (its B-lines are left out of the beams' means).
    """
    rows = frame.shape[0]
    n = max(16, int(sector.any(axis=0).sum()) // BEAM_PX)
    beams = beam_map(sector, apex, n)
    comet = None if labels is None else labels == B_LINE
    shadow = shadow_beams(frame.astype(np.float32), line_rows, beams, n, comet)
    runs, k = ndimage.label(shadow)
    below = (np.arange(rows)[:, None] - line_rows[None, :]) >= -SURFACE * rows
    beam_of = np.where(beams >= 0, beams, 0)
    masks = []
    for i in range(1, k + 1):
        in_run = np.flatnonzero(runs == i)
        masks.append(sector & below & np.isin(beam_of, in_run))
    return masks


def add_rib_shadows(
    labels: np.ndarray, frame: np.ndarray, sector: np.ndarray, line_rows: np.ndarray, apex: tuple[float, float] | None
) -> np.ndarray:
    """``labels`` with the rib shadows of :func:`find_rib_shadows` added where the network has no rib
    (:data:`NETWORK_OVERLAP`), over background pixels only (pleural line and B-line labels stay)."""
    out = labels.copy()
    rows = labels.shape[0]
    tol = max(2, round(LINE_TOL * rows))
    on_line = np.abs(np.arange(rows)[:, None] - line_rows[None, :]) <= tol
    pleura_cols = ((labels == PLEURA) & on_line).any(axis=0)
    for mask in find_rib_shadows(frame, sector, line_rows, apex, labels):
        if not mask.any() or (labels[mask] == RIB).mean() > NETWORK_OVERLAP:
            continue
        cols = (mask & on_line).any(axis=0)  # the run's columns at the line's depth
        if not cols.any() or pleura_cols[cols].mean() > INTERRUPTED:
            continue
        out[mask & (out == 0)] = RIB
    return out
