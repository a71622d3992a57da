"""What the CT nodule model is made for: range, chest, inside-the-lung rule, masses (on arrays)."""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from dicom_node.pipelines import create
from dicom_node.pipelines.ct_lung_nodule.mass import grow_mass
from dicom_node.pipelines.ct_lung_nodule.scope import (
    MIN_LUNG_CONTACT,
    MIN_LUNG_FRACTION,
    inside_lungs,
    inside_lungs_local,
    is_mass,
    lung_contact,
    lung_fraction,
    not_a_chest,
    out_of_range,
)
from dicom_node.training.ct_lung_nodule.data import phantom_volume


def _ball(shape: tuple[int, int, int], centre: tuple[int, int, int], r: float) -> np.ndarray:
    zz, yy, xx = np.indices(shape)
    return (zz - centre[0]) ** 2 + (yy - centre[1]) ** 2 + (xx - centre[2]) ** 2 <= r * r


def test_slice_spacing_range() -> None:
    hu = np.zeros((4, 16, 16), dtype=np.float32)
    assert out_of_range(phantom_volume(hu, (5.0, 0.7, 0.7))) is None
    reason = out_of_range(phantom_volume(hu, (8.0, 0.7, 0.7)))
    assert reason is not None and "8 mm apart" in reason and "5 mm" in reason


def test_not_a_chest_judges_the_largest_cross_section() -> None:
    lung = np.zeros((10, 100, 100), dtype=bool)
    assert not_a_chest(lung, (2.0, 1.0, 1.0)) is not None
    lung[5, 20:70, 20:70] = True  # one slice with 25 cm2 of lung: a partial chest still counts
    assert not_a_chest(lung, (2.0, 1.0, 1.0)) is None
    reason = not_a_chest(lung, (2.0, 0.5, 0.5))  # the same pixels at half the size: 6 cm2
    assert reason is not None and "not a chest CT" in reason


def test_lung_fraction_keeps_a_juxtapleural_nodule_and_drops_the_mediastinum() -> None:
    shape = (9, 120, 120)
    lung = np.zeros(shape, dtype=bool)
    lung[:, 10:110, 10:60] = True  # a lung ...
    small = _ball(shape, (4, 30, 13), 3)  # a small juxtapleural nodule: the closing fills its notch
    big = _ball(shape, (4, 70, 20), 10)  # a 20 mm one: its notch stays, lung surrounds its inner side
    lung &= ~(small | big)
    sp = (1.0, 1.0, 1.0)
    assert lung_fraction(small, lung, sp) >= MIN_LUNG_FRACTION and inside_lungs(small, lung, sp)
    assert lung_fraction(big, lung, sp) < MIN_LUNG_FRACTION and lung_contact(big, lung) >= MIN_LUNG_CONTACT
    assert inside_lungs(big, lung, sp)
    mediastinal = _ball(shape, (4, 60, 71), 12)  # a blob beside the lung (mediastinum), touching it
    assert 0 < lung_contact(mediastinal, lung) < MIN_LUNG_CONTACT and not inside_lungs(mediastinal, lung, sp)
    assert lung_fraction(np.zeros(shape, dtype=bool), lung, sp) == 0.0


def test_masses_from_30_mm() -> None:
    assert not is_mass(29.9) and is_mass(30.0) and is_mass(69.0)


def test_mass_grows_into_adjacent_solid_tissue_inside_its_lung_only() -> None:
    shape = (12, 100, 100)
    hu = np.full(shape, 40.0, dtype=np.float32)  # soft tissue everywhere ...
    left = np.zeros(shape, dtype=bool)
    left[:, 10:90, 10:48] = True
    right = np.zeros(shape, dtype=bool)
    right[:, 10:90, 52:90] = True
    hu[left | right] = -850.0  # ... but the lungs
    tumour = _ball(shape, (6, 50, 30), 12)
    hu[tumour] = 30.0
    left &= ~tumour  # solid tissue: the lung field leaves the tumour out
    seen = tumour & (np.indices(shape)[2] >= 30)  # the detector saw only the lateral half
    vessel = np.zeros(shape, dtype=bool)
    vessel[:, 49:52, 38:47] = True  # a vessel inside the lung field, touching the tumour
    hu[vessel & ~tumour] = 40.0
    grown = grow_mass(seen, hu, (2.0, 1.0, 1.0), left, right)
    assert seen.sum() < grown.sum()
    assert (grown & tumour).sum() / tumour.sum() > 0.9  # the tumour is outlined whole
    assert not (grown & right).any()  # never into the other lung
    assert not (grown & vessel & left).any()  # nor into vessels inside the lung field
    assert not grown[:, :, 49:52].any()  # nor into the mediastinum between the lungs


def test_a_mass_outline_is_solid_slice_by_slice() -> None:
    """An aerated bronchus through a mass and a speckled edge do not leave holes in its outline."""
    shape = (8, 100, 100)
    hu = np.full(shape, -850.0, dtype=np.float32)
    left = np.zeros(shape, dtype=bool)
    left[:, 5:95, 5:95] = True
    tumour = _ball(shape, (4, 50, 50), 20)
    hu[tumour] = 30.0
    seen = tumour.copy()
    seen[:, 48:52, 40:60] = False  # an air bronchogram through it
    seen[:, ::3, ::3] &= ~(np.indices(shape)[2] > 62)[:, ::3, ::3]  # a speckled lateral edge
    grown = grow_mass(seen, hu, (2.0, 1.0, 1.0), left, np.zeros(shape, dtype=bool))
    bronchus = tumour & ~seen
    bronchus[:, :, 62:] = False
    assert bronchus.any() and (grown & bronchus).sum() == bronchus.sum()  # the bronchogram filled
    assert (grown & tumour).sum() >= 0.995 * tumour.sum()  # and the speckles (but a notch on the very edge)
    assert not (grown & ~ndi.binary_dilation(tumour)).any()  # and nothing beyond the lesion's edge


def test_a_series_without_lungs_is_not_applicable() -> None:
    hu = np.full((12, 128, 128), 40.0, dtype=np.float32)  # an abdomen-like block of soft tissue
    result = create("ct_lung_nodule").run(phantom_volume(hu, (2.5, 0.8, 0.8)), "cpu")
    assert not result.findings and result.not_applicable and "not a chest CT" in result.not_applicable


def test_the_working_grid_check_equals_the_full_one() -> None:
    """``inside_lungs_local`` (a candidate's box and local mask) decides as ``inside_lungs`` on the full mask."""
    rng = np.random.default_rng(3)
    shape = (8, 90, 90)
    lung = ndimage_smooth(rng.random(shape) > 0.45)
    for _ in range(20):
        z, y, x = (int(rng.integers(1, s - 1)) for s in shape)
        mask = _ball(shape, (z, y, x), float(rng.uniform(2, 9)))
        idx = np.nonzero(mask)
        box = tuple(slice(int(i.min()), int(i.max()) + 1) for i in idx)
        assert inside_lungs_local(box, mask[box], lung, (1.0, 0.8, 0.8)) == inside_lungs(mask, lung, (1.0, 0.8, 0.8))


def ndimage_smooth(noise: np.ndarray) -> np.ndarray:
    """Blobby random 'lung' with edges and holes, so that both rules get exercised."""
    from scipy import ndimage

    return ndimage.binary_opening(ndimage.binary_closing(noise, iterations=2), iterations=2)
