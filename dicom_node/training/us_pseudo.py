"""Pseudo-labels for real lung-US frames: the pleural line found by a classical ridge tracker.

The pleural line is the brightest long, roughly horizontal echo below the chest wall. Per frame (at
the network's input size) a vertical band-pass of the image gives a "bright thin horizontal line"
response; a Viterbi path across the columns (at most one row of change per column) picks the
strongest smooth line in 3-62 % of the depth, with a mild preference for shallower lines (A-lines
repeat the pleura deeper and fainter). Columns where the response along the path is weak are not
pleura; when they lie over a dark column below the line they are a rib's acoustic shadow.

The label map uses 0 background, 1 rib (+ shadow), 2 pleural line, 3 B-line and :data:`IGNORE`
where the tracker has no opinion (below the pleura of clips with B-lines, near gaps in the line).
Frames where the tracked line is short or weak get no label at all (``None``).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

IGNORE = 255
BACKGROUND, RIB, PLEURA = 0, 1, 2


def line_response(image: np.ndarray) -> np.ndarray:
    """Bright thin horizontal structures: a vertical difference of Gaussians, smoothed along the rows."""
    fine = ndimage.gaussian_filter(image, (1.0, 3.0))
    coarse = ndimage.gaussian_filter(image, (5.0, 3.0))
    return np.clip(fine - coarse, 0.0, None) * np.sqrt(np.clip(fine, 0.0, 1.0))


def field_mask(image: np.ndarray) -> np.ndarray:
    """Where the frame shows signal (a sector's black outside excluded)."""
    smooth = ndimage.gaussian_filter(image, 2.0)
    return np.asarray(ndimage.binary_opening(smooth > 0.03, iterations=2))


def track_line(response: np.ndarray, field: np.ndarray, top: float = 0.03, bottom: float = 0.62) -> np.ndarray:
    """Row of the strongest smooth horizontal path per column (Viterbi, steps of at most one row)."""
    rows, cols = response.shape
    r0, r1 = int(top * rows), int(bottom * rows)
    depth = np.linspace(top, bottom, r1 - r0)
    score = response[r0:r1] * field[r0:r1] * (1.0 - 0.6 * depth)[:, None]
    total = score[:, 0].copy()
    back = np.zeros((r1 - r0, cols), dtype=np.int64)
    for c in range(1, cols):
        stacked = np.stack([np.roll(total, 1), total, np.roll(total, -1)])
        stacked[0, 0] = stacked[2, -1] = -np.inf
        choice = stacked.argmax(axis=0)
        back[:, c] = np.arange(r1 - r0) + choice - 1
        total = stacked.max(axis=0) + score[:, c]
    path = np.zeros(cols, dtype=np.int64)
    path[-1] = int(total.argmax())
    for c in range(cols - 1, 0, -1):
        path[c - 1] = back[path[c], c]
    return path + r0


def _mean_below(image: np.ndarray, field: np.ndarray, path: np.ndarray) -> np.ndarray:
    """Mean brightness of each column's imaged field below the tracked line (1.0 where there is none)."""
    rows = image.shape[0]
    below = (np.arange(rows)[:, None] > path[None, :] + 3) & field
    counts = below.sum(axis=0)
    return np.where(counts > 0, (image * below).sum(axis=0) / np.maximum(counts, 1), 1.0)


def pseudo_label(image: np.ndarray, below_is_background: bool, min_cover: float = 0.3) -> np.ndarray | None:
    """Label map of one frame (see the module docstring), or ``None`` when no convincing line is found.

    Args:
        image: (rows, cols) in 0..1 at the network's input size.
        below_is_background: the clip has no B-lines (its lung below the line may be labelled background).
        min_cover: least fraction of the imaged width the visible line must span.
    """
    rows, cols = image.shape
    field = field_mask(image)
    response = line_response(image)
    path = track_line(response, field)
    along = response[path, np.arange(cols)]
    in_field = field[path, np.arange(cols)]
    if in_field.sum() < cols * 0.3:
        return None
    strong = float(np.percentile(along[in_field], 90))
    visible = in_field & (along >= 0.35 * strong)
    visible = ndimage.binary_opening(visible, np.ones(3)) & in_field
    if visible.sum() < min_cover * in_field.sum() or strong < 0.02:
        return None
    labels = np.full((rows, cols), IGNORE, dtype=np.uint8)
    labels[~field] = BACKGROUND
    row_idx = np.arange(rows)[:, None]
    above = row_idx < (path[None, :] - 3)
    below = row_idx > (path[None, :] + 3)
    labels[above & field] = BACKGROUND
    if below_is_background:
        labels[below & field & visible[None, :]] = BACKGROUND
    under_arr = _mean_below(image, field, path)
    reference = float(np.median(under_arr[in_field]))
    shadow = in_field & (under_arr < 0.55 * reference)
    shadow = ndimage.binary_opening(shadow, np.ones(4))
    visible = visible & ~shadow
    if visible.sum() < min_cover * in_field.sum():
        return None
    for c in np.flatnonzero(shadow):
        labels[max(0, path[c] - 2) :, c][field[max(0, path[c] - 2) :, c]] = RIB
    for c in np.flatnonzero(visible):
        labels[max(0, path[c] - 1) : path[c] + 2, c] = PLEURA
    return labels
