"""The synthetic lung-US generator: determinism, geometry and ground-truth consistency."""

from __future__ import annotations

import numpy as np
import pytest

from dicom_node.synth.us_lung import PATTERNS, LungPattern, Probe, generate, generate_set
from dicom_node.synth.us_salient import recognition_set, salient_set


def test_same_seed_same_sample_other_seed_differs() -> None:
    a = generate(7, size=(64, 64))
    b = generate(7, size=(64, 64))
    c = generate(8, size=(64, 64))
    assert np.array_equal(a.image, b.image) and np.array_equal(a.rib, b.rib)
    assert not np.array_equal(a.image, c.image)
    assert a.image.dtype == np.float32 and 0.0 <= a.image.min() and a.image.max() <= 1.0


@pytest.mark.parametrize("probe", list(Probe))
def test_masks_are_consistent(probe: Probe) -> None:
    for seed in range(6):
        s = generate(seed, size=(96, 96), probe=probe)
        assert not (s.pleura & s.rib).any()  # the pleura is hidden under ribs
        assert not (s.b_lines & s.rib).any()
        assert not ((s.rib | s.pleura) & ~s.fan).any()
        assert s.pleura.any()
        # a rib shadow continues down the beam to the bottom of the field
        if s.rib.any() and probe is Probe.LINEAR:
            cols = np.flatnonzero(s.rib[0].any(axis=0))
            assert s.rib[0, -1, cols].mean() > 0.9
            assert s.image[0, -10:, cols].mean() < s.image[0, -10:].mean()
    convex = generate(3, size=(96, 96), probe=Probe.CONVEX)
    if probe is Probe.CONVEX:
        assert not convex.fan.all() and convex.image[0][~convex.fan[0]].max() == 0.0


def test_patterns_have_their_ground_truth() -> None:
    normal = generate(1, size=(96, 96), pattern=LungPattern.NORMAL)
    blines = generate(1, size=(96, 96), pattern=LungPattern.B_LINES)
    cons = generate(1, size=(96, 96), pattern=LungPattern.CONSOLIDATION)
    eff = generate(1, size=(96, 96), pattern=LungPattern.EFFUSION)
    assert normal.b_line_count <= 1 and blines.b_line_count >= 3
    assert blines.b_lines.any() and cons.consolidation.any() and eff.effusion.any()
    assert not normal.consolidation.any() and not normal.effusion.any()
    # effusion is anechoic: darker than the chest wall above the pleura
    assert eff.image[eff.effusion].mean() < 0.5 * eff.image[0, :5][eff.fan[0, :5]].mean()


def test_cine_lung_slides_while_chest_wall_stays() -> None:
    s = generate(5, size=(96, 96), frames=6, pattern=LungPattern.NORMAL, probe=Probe.LINEAR)
    assert s.image.shape == (6, 96, 96)
    top = int(s.pleura_depth_mm / s.spacing_mm) - 4
    wall_change = np.abs(s.image[1:, :top] - s.image[:-1, :top]).mean()
    lung_change = np.abs(s.image[1:, top + 12 :] - s.image[:-1, top + 12 :]).mean()
    assert wall_change < 1e-6 < lung_change
    assert np.array_equal(s.rib[0], s.rib[-1])


def test_training_sets() -> None:
    x, y, c = generate_set(8, seed=2, size=(64, 64))
    assert x.shape == (8, 1, 64, 64) and y.shape == (8, 64, 64)
    assert set(np.unique(y)) <= {0, 1, 2, 3} and (y == 2).any()
    assert list(c) == [PATTERNS.index(PATTERNS[i % 4]) for i in range(8)]
    sx, sy = salient_set(4, seed=0, size=(64, 64))
    assert sx.shape == (4, 1, 64, 64) and set(np.unique(sy)) == {0, 1, 2}
    rx, rc = recognition_set(4, seed=0, size=(64, 64))
    assert rx.shape == (4, 1, 64, 64) and rc.max() < 14
