"""Rib-shadow pseudo-labels along the probe's beams (dicom_node.training.us_rib_pseudo), on synthetic frames
whose rib shadows are known pixel by pixel (the generator draws them along a convex probe's beams)."""

from __future__ import annotations

import numpy as np

from dicom_node.pipelines.us_pleura import sector_mask
from dicom_node.synth.us_lung import generate
from dicom_node.training.us_pseudo import BACKGROUND, IGNORE, PLEURA, RIB
from dicom_node.training.us_rib_pseudo import apex_of, beam_map, rib_pseudo_label


def _truth_labels(sample_rib: np.ndarray, sample_pleura: np.ndarray) -> np.ndarray:
    labels = np.zeros(sample_rib.shape, dtype=np.uint8)
    labels[sample_rib] = RIB
    labels[sample_pleura] = PLEURA
    return labels


def test_apex_of_a_convex_fan_lies_above_the_image_and_a_linear_probe_has_none() -> None:
    convex = generate(1, size=(128, 128), pattern="normal", probe="convex")
    apex = apex_of(sector_mask(convex.image))
    assert apex is not None
    assert apex[0] < -20 and abs(apex[1] - 63.5) < 6, apex
    linear = generate(1, size=(128, 128), pattern="normal", probe="linear")
    assert apex_of(sector_mask(linear.image)) is None
    beams = beam_map(sector_mask(linear.image), None, 128)
    assert (beams[:, 40] == beams[0, 40]).all()  # parallel beams: one per column


def test_shadows_are_found_along_the_fan_and_not_where_there_is_no_rib() -> None:
    found = precise = without_rib = false_shadows = 0
    for seed in range(10):
        s = generate(seed, size=(128, 128), pattern="normal", probe="convex")
        sector = sector_mask(s.image)
        labels = _truth_labels(s.rib[0], s.pleura[0])
        out, shadows = rib_pseudo_label(
            s.image[0], labels, np.ones(labels.shape, np.float32), sector, apex_of(sector), True
        )
        if out is None:
            continue
        assert set(np.unique(out)) <= {BACKGROUND, RIB, PLEURA, IGNORE}
        rib = out == RIB
        if s.rib[0].any():
            found += shadows > 0
            precise += bool(rib.any() and (rib & s.rib[0]).sum() >= 0.9 * rib.sum())
        else:
            without_rib += 1
            false_shadows += shadows
    assert found >= 6 and precise >= found - 1, (found, precise)
    assert without_rib >= 1 and false_shadows == 0
