"""The CT nodule model's lung-level harmonisation (pipelines/ct_lung_nodule/level.py) on a built phantom:
a series whose parenchyma sits lower or higher is brought back to the phantoms' level, soft tissue and air
untouched."""

from __future__ import annotations

import numpy as np
import pytest

from dicom_node.pipelines.ct_lung_nodule.level import (
    MAX_LEVEL_SHIFT_HU,
    PHANTOM_LUNG_HU,
    SOFT_TISSUE_HU,
    harmonise_level,
    level_shift,
    lung_level,
    remap_level,
)
from dicom_node.synth.ct_phantom import Phantom, make_phantom


@pytest.fixture(scope="module")
def phantom() -> Phantom:
    return make_phantom(np.random.default_rng(8), n_nodules=1)


def test_a_phantom_is_at_the_phantom_level_and_barely_moved(phantom: Phantom) -> None:
    level = lung_level(phantom.hu, phantom.lung)
    assert level is not None and abs(level - PHANTOM_LUNG_HU) < 4.0, level
    out, shift = harmonise_level(phantom.hu, phantom.lung)
    assert abs(shift) < 4.0 and float(np.abs(out - phantom.hu).max()) < 4.0


@pytest.mark.parametrize("offset", [-50.0, -20.0, 30.0])
def test_a_shifted_lung_is_brought_back_and_soft_tissue_is_untouched(phantom: Phantom, offset: float) -> None:
    """The lung field's voxels shifted by ``offset`` HU (a lung more or less inflated): afterwards the
    parenchyma measures the phantoms' level again; air (-1000 and below) and everything from -100 HU up
    keep their values exactly; the map keeps the order of values."""
    hu = phantom.hu.astype(np.float32)
    shifted = np.where(phantom.lung, hu + offset, hu).astype(np.float32)
    before = lung_level(shifted, phantom.lung)
    assert before is not None and abs(before - (PHANTOM_LUNG_HU + offset)) < 5.0, before
    out, shift = harmonise_level(shifted, phantom.lung)
    after = lung_level(out, phantom.lung)
    assert after is not None and abs(after - PHANTOM_LUNG_HU) < 2.0, (offset, after)
    assert abs(shift + offset) < 5.0, shift
    kept = (shifted >= SOFT_TISSUE_HU) | (shifted <= -1000.0)
    assert kept.any() and np.array_equal(out[kept], shifted[kept])
    order = np.argsort(shifted.ravel()[::97], kind="stable")
    assert np.all(np.diff(out.ravel()[::97][order]) >= 0)  # monotone


def test_ground_glass_moves_less_than_the_parenchyma() -> None:
    """A scan at -872 HU brought to the phantoms' level: ground glass (-700..-300 HU) moves by the share of
    the shift left on the way to -100 HU, solid tissue not at all."""
    level = -872.0
    shift = level_shift(level)
    assert shift == pytest.approx(PHANTOM_LUNG_HU - level)
    values = np.array([-1000.0, level, -700.0, -500.0, -300.0, -100.0, 40.0], dtype=np.float32)
    moved = remap_level(values, level, shift) - values
    assert moved[0] == 0.0 and moved[1] == pytest.approx(shift) and moved[5] == 0.0 and moved[6] == 0.0
    assert shift > moved[2] > moved[3] > moved[4] > 0.0
    assert moved[2] == pytest.approx(shift * 600.0 / (-100.0 - level), abs=0.01)


def test_far_levels_are_moved_at_most_the_cap_and_unknown_ones_not_at_all() -> None:
    assert level_shift(-1000.0) == MAX_LEVEL_SHIFT_HU and level_shift(-600.0) == -MAX_LEVEL_SHIFT_HU
    assert level_shift(None) == 0.0
    empty = np.zeros((4, 64, 64), dtype=bool)
    hu = np.full(empty.shape, -900.0, dtype=np.float32)
    out, shift = harmonise_level(hu, empty)
    assert shift == 0.0 and out is hu
