"""Which line of one lung-ultrasound frame is the pleura, and which rib labels are shadows, from the anatomy.

A sonographer finds the pleura as the first bright, roughly horizontal echo below the soft tissue of
the chest wall that lies at the depth where the ribs' acoustic shadows begin (the "bat sign"), and
knows that the A-lines below it are its copies at multiples of its depth. The segmentation network
labels bright horizontal lines well on real frames but does not know which of them is the pleura:
its pleural-line label also covers fascia of the chest wall above the pleura and A-lines below it.
This module chooses among the network's lines the way the sonographer does:

1. The network's pleural-line pixels (on the frame resampled to :data:`WORK` rows) are grouped into
   lines: pieces at about one depth, or side by side with facing ends at about one row (a convex
   probe's pleura is an arc broken by rib shadows) (:func:`network_lines`).
2. Per line: its mass (summed confidence), the rib shadows that begin at its depth
   (:func:`shadow_columns`: dark vertical columns below the line between lit columns, dark already
   just below it and lit above it; the dark outside of a convex probe's sector is masked from the
   cine's own geometry, :func:`sector_mask`, and a fading sector edge is no shadow because it has no
   lit column beyond it), the echo texture just below it (fascia has tissue lines below it, aerated
   lung does not), its depth (a line with almost no chest wall above it is skin), and whether it is a
   fainter copy (x2, x3 of the depth) of a shallower line (an A-line).
3. The pleura is the best scoring line above :data:`MAX_DEPTH` that is not a copy (:func:`locate_pleura`).

:func:`refine_labels` then keeps only that line as the pleural line, follows its ridge into columns
the network missed (:func:`follow_ridge`), and drops network rib regions that are not shadows
(:func:`refine_ribs`: outside the sector, dim chest wall above them, or a dark area deep in the lung),
and adds the rib shadows the network missed, found along the probe's beams below the interrupted line
(:func:`dicom_node.pipelines.us_ribs.add_rib_shadows`). The weights were set on the hand-checked depths of
TRAIN-part frames (``dicom_node/training/us_pleura_refs.csv``, ``us_rib_refs.csv``), never on the check part.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from dicom_node.pipelines.us_ribs import add_rib_shadows, apex_of

WORK = 128
"""Rows (and columns) of the working image."""
GROUP_GAP = 0.04
"""Network line pieces whose depths differ by at most this fraction of the depth are one line."""
JOIN_STEP = 0.06
"""Pieces side by side whose facing ends differ by at most this fraction of the depth are one line."""
COPY_RATIOS = ((1.75, 2.3), (2.7, 3.3))
COPY_ECHO = 0.8
"""Depth ratios at which a deeper line is taken as an A-line copy of a shallower one, when the shallower
line's echo is at least COPY_ECHO of the deeper one's (A-lines are fainter than the pleura they copy; a
faint fascia line is not copied as a bright line at twice its depth)."""
ONSET_BONUS = 2.0
TEXTURE_WEIGHT = 8.0
"""Score = sqrt(mass share) x (1 + ONSET_BONUS x rib shadows beginning at the line) / (1 + TEXTURE_WEIGHT x
texture below): rib shadows that begin at a line make it the pleura, tissue lines below it make it fascia."""
ONSET_FULL = 0.06
"""Fraction of the width of shadow onset that earns the whole bonus (a rib shadow is about 4-15 %)."""
FOLLOW = 0.4
"""Least line response, as a fraction of the labelled part's, for the ridge to be followed further."""
MAX_DEPTH = 0.6
"""Lines deeper than this fraction of the depth are never the pleura (the lung-US gate's own upper
depth limit, :data:`dicom_node.pipelines.us_lung.DEPTH_RANGE`; e.g. the bright bottom arc of a sector)."""
MIN_WALL = 0.08
"""A line shallower than this fraction of the depth has little chest wall above it (skin, subcutis): its
score is scaled down in proportion."""
RIB_START = (0.15, 0.3)
"""A rib region must start at most this fraction of the depth above / below the pleural line."""
SHADOW_DARK = 0.6
"""A deep rib region is kept only when the columns between the pleural line and its top are dark (at
most this fraction of the sector's mean at those rows): the lower part of a shadow from the line."""
WALL_BAND = (0.10, 0.02)
WALL_LIT = 0.6
"""The chest wall just above a rib region (WALL_BAND: from this fraction of the depth above its start
to this one) must be lit, at least WALL_LIT of the sector's mean at those rows: a rib shadow begins
under lit tissue, a fading sector edge or a dark corner is dim all the way up."""
EDGE_RING = 0.05
EDGE_SHARE = 0.5
"""A rib region with this share of its pixels within EDGE_RING of the width from the sector's outside
(not from the image border: a linear probe's edge is no sector edge) hugs the sector's edge."""
RIB, PLEURA, B_LINE = 1, 2, 3


@dataclass
class PleuraLine:
    """The chosen pleural line of one frame, at the frame's own size.

    ``rows[c]`` is the line's row in column ``c`` (interpolated where the network did not label it),
    ``covered[c]`` whether the network labelled it there, ``followed[c]`` whether the line's ridge was
    followed into column ``c`` beyond the network's label (:func:`follow_ridge`), ``shadow[c]`` whether
    column ``c`` is a rib's acoustic shadow below it; ``depth`` the median row as a fraction of the
    height, ``onset`` the fraction of the width where a shadow begins at the line, ``candidates`` how
    many lines there were.
    """

    rows: np.ndarray
    covered: np.ndarray
    followed: np.ndarray
    shadow: np.ndarray
    depth: float
    onset: float
    candidates: int


def sector_mask(pixels: np.ndarray) -> np.ndarray:
    """(rows, cols) mask of the imaged sector of a cine (n, rows, cols): in each row, the span from the
    first to the last column where any frame shows signal. A sector (or a linear probe's rectangle) has
    no holes across a row, so dark rib shadows inside it stay inside it, even where they reach its
    bottom edge; the black outside of a convex probe's fan does not."""
    lit = ndimage.gaussian_filter(pixels.max(axis=0).astype(np.float32), 1.5) > 0.02
    lit = np.asarray(ndimage.binary_opening(lit, iterations=2))
    cols = np.arange(lit.shape[1])
    first = np.where(lit.any(axis=1), np.argmax(lit, axis=1), lit.shape[1])
    last = np.where(lit.any(axis=1), lit.shape[1] - 1 - np.argmax(lit[:, ::-1], axis=1), -1)
    return (cols[None, :] >= first[:, None]) & (cols[None, :] <= last[:, None])


def _resample(image: np.ndarray, shape: tuple[int, int], order: int = 1) -> np.ndarray:
    factors = (shape[0] / image.shape[0], shape[1] / image.shape[1])
    if order > 0 and (factors[0] < 1 or factors[1] < 1):
        image = ndimage.gaussian_filter(image, (0.5 / min(factors[0], 1), 0.5 / min(factors[1], 1)))
    out = ndimage.zoom(image, factors, order=order, grid_mode=True, mode="nearest")
    return np.asarray(out[: shape[0], : shape[1]])


def line_response(image: np.ndarray) -> np.ndarray:
    """Bright thin horizontal structures: a vertical difference of Gaussians, smoothed along the rows."""
    fine = ndimage.gaussian_filter(image, (1.0, 2.0))
    coarse = ndimage.gaussian_filter(image, (5.0, 2.0))
    return np.clip(fine - coarse, 0.0, None) * np.sqrt(np.clip(fine, 0.0, 1.0))


def _band_mean(
    image: np.ndarray, field: np.ndarray, path: np.ndarray, lo: int, hi: int, inside_min: float = 0.6
) -> np.ndarray:
    """Per column: mean of ``image`` over rows path+lo .. path+hi inside ``field`` (nan where less than
    ``inside_min`` of the band is inside)."""
    r = np.arange(image.shape[0])[:, None]
    band = (r >= path[None, :] + lo) & (r <= path[None, :] + hi)
    inside = band & field
    count = inside.sum(axis=0)
    mean = (image * inside).sum(axis=0) / np.maximum(count, 1)
    return np.where(count >= inside_min * np.maximum(band.sum(axis=0), 1), mean, np.nan)


def _neighbour_max(values: np.ndarray, width: int) -> np.ndarray:
    """Per column: the smaller of the brightest value within ``width`` columns on the left and on the right.

    A side that reaches the image border through imaged columns only (a linear probe's edge) does not
    count; a side that runs out of the imaged field (the dark outside of a sector) counts as unlit, so
    a fading sector edge is never darker than its neighbours on both sides.
    """
    finite = np.isfinite(values)
    v = np.where(finite, values, -1.0)
    n = len(v)
    out = np.zeros(n)
    for c in range(n):
        sides = []
        for lo, hi in ((max(0, c - width), c), (c + 1, min(n, c + 1 + width))):
            seg = v[lo:hi]
            to_border = (lo == 0 and c < width and bool(finite[:c].all())) or (
                hi == n and c >= n - 1 - width and bool(finite[c + 1 :].all())
            )
            if to_border and (seg.size == 0 or seg.max() < v[c]):
                continue
            sides.append(float(seg.max()) if seg.size else -1.0)
        out[c] = max(0.0, min(sides)) if sides else 0.0
    return out


def shadow_columns(image: np.ndarray, field: np.ndarray, path: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(shadow, onset) per column for a line along ``path``.

    ``shadow``: the imaged field below the line is dark compared with lit columns on BOTH sides (a
    dark vertical column; a fading sector edge is not one). ``onset``: such a shadow is already dark
    just below the line and lit above it, so it begins at the line's depth (a rib at the pleura's level,
    the bat sign), which an A-line (dark above and below) and a fascia line far above the ribs do not show.
    """
    rows, cols = image.shape
    below = _band_mean(image, field, path, int(0.03 * rows), int(0.25 * rows))
    above = _band_mean(image, field, path, -int(0.12 * rows), -int(0.03 * rows), inside_min=0.4)
    width = max(4, int(0.2 * cols))
    shadow = np.isfinite(below) & (np.nan_to_num(below, nan=1.0) < 0.55 * _neighbour_max(below, width))
    shadow = np.asarray(ndimage.binary_opening(shadow, np.ones(3)))
    near = _band_mean(image, field, path, int(0.02 * rows), int(0.08 * rows))
    near_dark = np.nan_to_num(near, nan=1.0) < 0.65 * _neighbour_max(near, width)
    lit_above = np.nan_to_num(above, nan=0.0)
    onset = shadow & near_dark & (lit_above >= 1.5 * np.nan_to_num(near, nan=1.0)) & (lit_above > 0.05)
    return shadow, onset


@dataclass
class _Line:
    covered: np.ndarray
    path: np.ndarray
    depth: float
    mass: float
    onset: float = 0.0
    texture: float = 0.0
    echo: float = 0.0
    shadow: np.ndarray | None = None
    copy: bool = False

    def score(self, top_mass: float) -> float:
        bonus = ONSET_BONUS * min(1.0, self.onset / ONSET_FULL)
        wall = min(1.0, self.depth / MIN_WALL)
        share = float(np.sqrt(self.mass / max(top_mass, 1e-9)))
        return share * wall * (1.0 + bonus) / (1.0 + TEXTURE_WEIGHT * self.texture)


def _ends(piece: np.ndarray) -> tuple[int, float, int, float]:
    """(first column, its centre row, last column, its centre row) of a mask's pixels."""
    cols_idx = np.flatnonzero(piece.any(axis=0))
    r = np.arange(piece.shape[0])
    first, last = int(cols_idx[0]), int(cols_idx[-1])
    return first, float(r[piece[:, first]].mean()), last, float(r[piece[:, last]].mean())


def _continues(group: np.ndarray, piece: np.ndarray, rows: int) -> bool:
    """Does ``piece`` continue ``group`` sideways (no shared columns, the facing ends at about the same row)?"""
    g0, g0_row, g1, g1_row = _ends(group)
    p0, p0_row, p1, p1_row = _ends(piece)
    if p0 > g1:
        return abs(p0_row - g1_row) <= JOIN_STEP * rows
    if p1 < g0:
        return abs(p1_row - g0_row) <= JOIN_STEP * rows
    return False


def network_lines(pleura: np.ndarray, confidence: np.ndarray) -> list[_Line]:
    """The network's pleural-line pixels (work size) grouped into lines, largest piece first: a piece joins
    a line at about its depth (:data:`GROUP_GAP`) or one it continues sideways (:data:`JOIN_STEP`, a convex
    probe's pleura is an arc broken by rib shadows)."""
    rows, cols = pleura.shape
    comps, n = ndimage.label(pleura)
    if n == 0:
        return []
    index = np.arange(1, n + 1)
    sizes = np.asarray(ndimage.sum(pleura, comps, index))
    depth = np.asarray(ndimage.median(np.indices(pleura.shape)[0], comps, index))
    groups: list[list[int]] = []
    centres: list[float] = []
    masks: list[np.ndarray] = []
    for k in np.argsort(-sizes):
        if sizes[k] < 3:
            continue
        piece = comps == k + 1
        near = [g for g, d in enumerate(centres) if abs(d - depth[k]) <= GROUP_GAP * rows]
        if not near:
            near = [g for g, m in enumerate(masks) if _continues(m, piece, rows)]
        if near:
            groups[near[0]].append(int(k) + 1)
            masks[near[0]] = masks[near[0]] | piece
        else:
            groups.append([int(k) + 1])
            centres.append(float(depth[k]))
            masks.append(piece)
    lines: list[_Line] = []
    r = np.arange(rows)[:, None]
    for mask in masks:
        covered = np.asarray(mask.any(axis=0))
        cols_idx = np.flatnonzero(covered)
        centre = (mask[:, cols_idx] * r).sum(axis=0) / np.maximum(mask[:, cols_idx].sum(axis=0), 1)
        path = np.round(np.interp(np.arange(cols), cols_idx, centre)).astype(int)
        lines.append(_Line(covered, path, float(np.median(centre)) / rows, float(confidence[mask].sum()) / cols))
    return lines


def _describe(lines: list[_Line], image: np.ndarray, field: np.ndarray, response: np.ndarray) -> None:
    rows = image.shape[0]
    strong = float(np.percentile(response[field], 99)) if field.any() else 0.0
    n_cols = max(int(field.any(axis=0).sum()), 1)
    for line in lines:
        shadow, onset = shadow_columns(image, field, line.path)
        line.shadow = shadow
        line.onset = float(onset.sum()) / n_cols
        lo = int(0.03 * rows)
        hi = max(lo + 2, int(min(0.15, 0.7 * line.depth) * rows))
        below = _band_mean(response, field, line.path, lo, hi)
        lit = np.isfinite(below) & ~shadow
        line.texture = float(np.mean(below[lit]) / strong) if lit.any() and strong > 0 else 0.0
        cols_idx = np.flatnonzero(line.covered)
        line.echo = float(np.median(response[line.path[cols_idx], cols_idx])) if cols_idx.size else 0.0
    for c in lines:
        for b in lines:
            if b is c or b.depth >= c.depth or b.mass < 0.25 * c.mass or b.echo < COPY_ECHO * c.echo:
                continue
            ratio = c.depth / max(b.depth, 1e-6)
            overlap = (b.covered & c.covered).sum() / max(min(b.covered.sum(), c.covered.sum()), 1)
            if overlap >= 0.3 and any(lo <= ratio <= hi for lo, hi in COPY_RATIOS):
                c.copy = True


def follow_ridge(
    path: np.ndarray, covered: np.ndarray, response: np.ndarray, field: np.ndarray, shadow: np.ndarray
) -> np.ndarray:
    """Columns beyond the network's label where the line's ridge continues (``path`` is updated in place).

    From each end of the labelled part, column by column, the strongest line response within one row of
    the previous column's row is taken while it stays at least :data:`FOLLOW` of the labelled part's median
    response, inside the field and outside rib shadows; three weak columns in a row end the search.
    """
    cols = len(path)
    idx = np.flatnonzero(covered)
    followed = np.zeros(cols, dtype=bool)
    if idx.size == 0:
        return followed
    ref = float(np.median(response[path[idx], idx]))
    if ref <= 0:
        return followed
    rows = response.shape[0]
    for start, step in ((int(idx[-1]), 1), (int(idx[0]), -1)):
        row, misses, c = int(path[start]), 0, start + step
        while 0 <= c < cols and not covered[c] and misses < 3:
            lo, hi = max(0, row - 1), min(rows, row + 2)
            best = lo + int(np.argmax(response[lo:hi, c]))
            if field[best, c] and not shadow[c] and response[best, c] >= FOLLOW * ref:
                row, misses = best, 0
                followed[c] = True
            else:
                misses += 1
            path[c] = row
            c += step
    return followed


def locate_pleura(
    frame: np.ndarray, labels: np.ndarray, confidence: np.ndarray, field: np.ndarray
) -> PleuraLine | None:
    """The pleural line among the network's lines of one frame (values 0..1); ``None`` when it has none
    above :data:`MAX_DEPTH`."""
    rows, cols = frame.shape
    shape = (WORK, WORK)
    small = _resample(frame.astype(np.float32), shape)
    small_field = _resample(field.astype(np.float32), shape, order=0) > 0.5
    small_field = np.asarray(ndimage.binary_erosion(small_field, iterations=2))
    pleura = _resample((labels == PLEURA).astype(np.float32), shape, order=0) > 0.5
    conf = _resample(confidence.astype(np.float32), shape)
    lines = [line for line in network_lines(pleura, conf) if line.depth <= MAX_DEPTH]
    if not lines:
        return None
    response = line_response(small) * small_field
    _describe(lines, small, small_field, response)
    top = max(line.mass for line in lines)
    pool = [line for line in lines if not line.copy] or lines
    best = max(pool, key=lambda line: line.score(top))
    assert best.shadow is not None
    path = best.path.copy()
    followed = follow_ridge(path, best.covered, response, small_field, best.shadow)
    col_idx = np.minimum((np.arange(cols) + 0.5) * WORK / cols, WORK - 1).astype(int)
    return PleuraLine(
        rows=np.round((path[col_idx] + 0.5) * rows / WORK - 0.5).astype(int).clip(0, rows - 1),
        covered=best.covered[col_idx],
        followed=followed[col_idx],
        shadow=best.shadow[col_idx],
        depth=best.depth,
        onset=best.onset,
        candidates=len(lines),
    )


def refine_labels(frame: np.ndarray, labels: np.ndarray, confidence: np.ndarray, field: np.ndarray) -> np.ndarray:
    """The network's label map of one frame with only the located pleural line, its rib labels checked and the
    rib shadows it missed added (see the module docstring); ``field`` is the cine's sector (:func:`sector_mask`).

    Frames where the network found no pleural line are returned as they are (the lung-US gate decides).
    """
    line = locate_pleura(frame, labels, confidence, field)
    if line is None:
        return labels
    rows = labels.shape[0]
    out = labels.copy()
    offset = np.arange(rows)[:, None] - line.rows[None, :]
    tol = max(3, int(GROUP_GAP * rows))
    near = np.abs(offset) <= tol
    pleura = labels == PLEURA
    out[pleura & ~near] = 0
    half = max(1, round(0.01 * rows))
    draw = (np.abs(offset) <= half) & line.followed[None, :] & field & (out != B_LINE)
    out[draw] = PLEURA
    out = refine_ribs(out, labels == RIB, line, field, frame)
    return add_rib_shadows(out, frame, field, line.rows, apex_of(field))


def refine_ribs(out: np.ndarray, rib: np.ndarray, line: PleuraLine, field: np.ndarray, frame: np.ndarray) -> np.ndarray:
    """Rib / shadow labels of one frame kept only where they look like a rib's acoustic shadow.

    Rib pixels outside the imaged sector are dropped. A network rib region (connected component) is
    dropped when it starts far from the pleural line's depth (:data:`RIB_START`: a dark area deep in
    the lung is not a rib, unless a shadow leads down to it from the line, :data:`SHADOW_DARK`), or
    when the chest wall just above its top (above the pleural line, when it starts below the line) is
    not lit (:data:`WALL_BAND`, :data:`WALL_LIT`): a rib shadow begins under lit tissue, while the
    fading edge of a convex probe's sector or a dark corner is dim all the way up.
    """
    rows = out.shape[0]
    out[(out == RIB) & ~field] = 0
    rib = rib & field
    if not rib.any():
        return out
    row_mean = (frame * field).sum(axis=1) / np.maximum(field.sum(axis=1), 1)  # the sector's mean per row
    comps, _ = ndimage.label(rib)
    for k, sl in enumerate(ndimage.find_objects(comps), start=1):
        if sl is None:
            continue
        comp = comps[sl] == k
        r_idx, c_idx = np.nonzero(comp)
        r_idx, c_idx = r_idx + sl[0].start, c_idx + sl[1].start
        start = float(np.median([r_idx[c_idx == c].min() for c in np.unique(c_idx)]))
        line_row = float(np.median(line.rows[np.unique(c_idx)]))
        far = start < line_row - RIB_START[0] * rows
        if start > line_row + RIB_START[1] * rows:  # deep: only the lower part of a shadow from the line?
            gap = frame[int(line_row + 0.03 * rows) : int(start), np.unique(c_idx)]
            gap_ref = float(row_mean[int(line_row + 0.03 * rows) : int(start)].mean())
            far = gap.size == 0 or float(gap.mean()) > SHADOW_DARK * gap_ref
        head = int(r_idx.min())
        head_cols = np.unique(c_idx[r_idx <= head + WALL_BAND[1] * rows])
        anchor = min(head, int(np.median(line.rows[head_cols])))  # the rib lies at the pleura's level
        top, bottom = int(anchor - WALL_BAND[0] * rows), int(anchor - WALL_BAND[1] * rows)
        above = field[max(0, top) : max(0, bottom), head_cols]
        wall = frame[max(0, top) : max(0, bottom), head_cols][above]
        reference = float(row_mean[max(0, top) : max(0, bottom)].mean()) if bottom > 0 else 0.0
        lit_above = wall.size >= 4 and float(wall.mean()) >= WALL_LIT * reference
        if far or not lit_above:
            region = out[sl]
            region[comp & (region == RIB)] = 0
    return out
