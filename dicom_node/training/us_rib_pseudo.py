"""Rib-shadow pseudo-labels for real lung-US frames (TRAIN part only), for fine-tuning the segmentation.

The network labels bright horizontal lines on real frames but few real rib shadows. Per frame at the
network's input size:

1. The pleural line is the one :func:`dicom_node.pipelines.us_pleura.locate_pleura` chooses among the
   shipped network's lines (rib-shadow anchors in the sector, texture below, A-line copies rejected).
2. A convex probe's beams, and so its rib shadows, are radial from the probe's apex: the apex is where
   the straight left and right edges of the imaged sector meet (:func:`apex_of`, fitted on the
   cine's sector, :func:`dicom_node.pipelines.us_pleura.sector_mask`; both now in
   :mod:`dicom_node.pipelines.us_ribs`); a linear probe (vertical edges)
   has parallel beams, one per column.
3. The sector below the pleura is split into beams (angle bins about the apex, or columns); a beam is a
   rib shadow when its field below the pleura is dark compared with lit beams on BOTH sides, already
   dark just below the line and lit above it (the rib lies at the pleura's level), and the dark run is
   3-25 % of the sector wide (:func:`beam_classes`). A beam is lit when it is clearly as bright as
   its lit neighbours. Everything in between is left unlabelled.

Labels (as :mod:`dicom_node.training.us_pseudo`): 0 background (outside the sector, the chest wall above
the line, lit beams below the line of clips without B-lines), 1 rib with its shadow (from just above the
line down along the beam), 2 pleural line (in lit beams where the network or the followed ridge has it),
255 ignored. Frames without a chosen line or with a line over less than 30 % of the sector get none.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from dicom_node.pipelines.us_pleura import PleuraLine, locate_pleura
from dicom_node.pipelines.us_ribs import apex_of as apex_of  # re-exported for us_rib_adapt
from dicom_node.pipelines.us_ribs import beam_map as beam_map
from dicom_node.pipelines.us_ribs import beam_means, side_max
from dicom_node.training.us_pseudo import BACKGROUND, IGNORE, PLEURA, RIB

SHADOW_RATIO = 0.62
"""A shadow beam's mean below the line is at most this fraction of the brighter-side lit neighbours' minimum."""
LIT_RATIO = 0.8
"""A lit beam's mean below the line is at least this fraction of its neighbourhood's brightest beams."""
RUN = (0.03, 0.25)
"""A shadow's width as a fraction of the sector's beams."""


def beam_classes(
    image: np.ndarray, sector: np.ndarray, line_rows: np.ndarray, beams: np.ndarray, n: int
) -> tuple[np.ndarray, np.ndarray]:
    """(shadow, lit) per beam (see the module docstring)."""
    rows = image.shape[0]
    r = np.arange(rows)[:, None]
    offset = r - line_rows[None, :]
    below = beam_means(image, beams, (offset >= 0.03 * rows) & (offset <= 0.3 * rows), n)
    near = beam_means(image, beams, (offset >= 0.02 * rows) & (offset <= 0.08 * rows), n)
    above = beam_means(image, beams, (offset >= -0.12 * rows) & (offset <= -0.03 * rows), n)
    width = max(3, int(0.2 * n))
    left, right = side_max(below, width)
    lit_side = np.minimum(left, right)
    b = np.nan_to_num(below, nan=1.0)
    shadow = np.isfinite(below) & (b < SHADOW_RATIO * lit_side) & (lit_side > 0.05)
    nl, nr = side_max(near, width)
    near_dark = np.nan_to_num(near, nan=1.0) < 0.75 * np.minimum(nl, nr)
    wall_lit = ~np.isfinite(above) | (np.nan_to_num(above, nan=0.0) >= 1.1 * np.nan_to_num(near, nan=1.0))
    shadow = np.asarray(ndimage.binary_opening(shadow & near_dark & wall_lit, np.ones(2)))
    runs, k = ndimage.label(shadow)
    for i in range(1, k + 1):
        size = int((runs == i).sum())
        if not RUN[0] * n <= size <= RUN[1] * n:
            shadow[runs == i] = False
    lit = np.isfinite(below) & (b >= LIT_RATIO * np.maximum(left, right).clip(min=0)) & ~shadow
    return shadow, lit


def rib_pseudo_label(
    image: np.ndarray,
    labels: np.ndarray,
    confidence: np.ndarray,
    sector: np.ndarray,
    apex: tuple[float, float] | None,
    below_is_background: bool,
) -> tuple[np.ndarray | None, int]:
    """(label map or ``None``, number of rib shadows) of one frame at the network size (module docstring).

    Args:
        image: (rows, cols) in 0..1.
        labels, confidence: the shipped network's prediction of the frame.
        sector: the cine's sector mask (:func:`dicom_node.pipelines.us_pleura.sector_mask`).
        apex: the probe's apex (:func:`apex_of`) or ``None`` for parallel beams.
        below_is_background: the clip has no B-lines and is normal (lit lung below the line is background).
    """
    rows, cols = image.shape
    line: PleuraLine | None = locate_pleura(image, labels, confidence, sector)
    sector_cols = sector.any(axis=0)
    if line is None or (line.covered | line.followed).sum() < 0.3 * sector_cols.sum():
        return None, 0
    n = max(16, int(sector_cols.sum()))
    beams = beam_map(sector, apex, n)
    shadow, lit = beam_classes(image, sector, line.rows, beams, n)
    grown = np.asarray(ndimage.binary_dilation(shadow, np.ones(3)))
    out = np.full((rows, cols), IGNORE, dtype=np.uint8)
    out[~sector] = BACKGROUND
    offset = np.arange(rows)[:, None] - line.rows[None, :]
    beam_of = np.where(beams >= 0, beams, 0)
    px_shadow = sector & shadow[beam_of]
    px_edge = sector & grown[beam_of] & ~shadow[beam_of]
    px_lit = sector & lit[beam_of]
    out[sector & (offset < -0.03 * rows) & ~px_shadow & ~px_edge] = BACKGROUND
    out[sector & (offset < -0.08 * rows) & px_shadow] = BACKGROUND
    if below_is_background:
        out[px_lit & (offset > 0.03 * rows)] = BACKGROUND
    out[px_shadow & (offset >= -0.02 * rows)] = RIB
    has_line = (line.covered | line.followed)[None, :]
    out[px_lit & has_line & (np.abs(offset) <= 1)] = PLEURA
    runs = int(ndimage.label(shadow)[1])
    return out, runs
