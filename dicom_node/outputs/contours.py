"""Outlines of masks on one slice, as closed polygons in DICOM pixel coordinates."""

from __future__ import annotations

import numpy as np
from skimage.measure import approximate_polygon, find_contours


def outline(mask2d: np.ndarray, max_points: int = 64) -> np.ndarray | None:
    """The outer outline of the largest connected part of a 2-D mask.

    Args:
        mask2d: Boolean (rows, columns) mask.
        max_points: Most vertices of the returned polygon (including the closing point).

    Returns:
        (n, 2) float array of (column, row) points in DICOM image pixel coordinates (origin at the
        outer corner of the top-left pixel, so a pixel centre is at +0.5), closed (first == last),
        or None when the mask is empty.
    """
    if not mask2d.any():
        return None
    padded = np.pad(mask2d.astype(np.float32), 1)
    contours = find_contours(padded, 0.5)
    if not contours:
        return None
    contour = max(contours, key=len) - 1.0  # undo the pad; (row, col) at pixel-centre indices
    contour = approximate_polygon(contour, tolerance=0.5)
    if len(contour) > max_points - 1:
        keep = np.linspace(0, len(contour) - 1, max_points - 1, endpoint=False).astype(int)
        contour = contour[keep]
    if not np.array_equal(contour[0], contour[-1]):
        contour = np.vstack([contour, contour[:1]])
    if len(contour) < 4:  # a single pixel or a line: draw a small diamond around it
        r, c = contour[0]
        contour = np.array([[r - 0.5, c], [r, c + 0.5], [r + 0.5, c], [r, c - 0.5], [r - 0.5, c]])
    points = np.stack([contour[:, 1] + 0.5, contour[:, 0] + 0.5], axis=1)
    return points.astype(np.float32)
