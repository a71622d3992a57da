"""PET/CT tumour network around the network: the torso rule on the CT, which tumours are detectable at all,
the scores on detectable tumours, the tissue-by-tissue hard negatives and the seed lists of training."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage as ndi

from dicom_node.pipelines.pet_tumour.detect import inside_torso, refine_boundaries, torso_mask, without_symmetric_fat
from dicom_node.synth.pet_phantom import (
    ORGAN,
    SITE_KEEP_OUT,
    SITE_TISSUE,
    Grid,
    _organ_at,
    _paint,
    _scene,
    placement_rng,
)
from dicom_node.training.pet_tumour.data import HELDOUT_SEEDS, VALIDATION_SEEDS, parse_seeds, seed_ranges
from dicom_node.training.pet_tumour.metrics import detectable_ids, score_scan
from dicom_node.training.pet_tumour.train import _hot_by_tissue


def _body(arm_gap: int) -> np.ndarray:
    """A CT (HU) of 10 slices: a torso ellipse with two lungs in it and an arm ``arm_gap`` voxels to its right."""
    ct = np.full((10, 64, 96), -1000.0, dtype=np.float32)
    yy, xx = np.ogrid[:64, :96]
    torso = ((yy - 32) / 24.0) ** 2 + ((xx - 40) / 30.0) ** 2 <= 1.0
    ct[:, torso] = 40.0
    for cx in (28, 52):
        ct[:, ((yy - 32) / 12.0) ** 2 + ((xx - cx) / 8.0) ** 2 <= 1.0] = -850.0  # lungs: holes of the outline
    arm_x = 70 + arm_gap + 6
    ct[:, ((yy - 32) / 8.0) ** 2 + ((xx - arm_x) / 6.0) ** 2 <= 1.0] = 50.0
    return ct


def test_torso_rule_drops_the_arm_and_keeps_the_torso_and_lungs() -> None:
    ct = _body(arm_gap=3)
    torso = torso_mask(ct)
    assert torso[5, 32, 40] and torso[5, 32, 28]  # soft tissue and lung are in the torso
    assert not torso[5, 32, 79]  # the arm is not
    mask = np.zeros(ct.shape, dtype=bool)
    mask[4:7, 30:34, 77:81] = True  # an injection site in the arm
    mask[4:7, 30:34, 26:30] = True  # a lung nodule
    mask[4:7, 20:23, 40:43] = True  # a mediastinal node
    kept = inside_torso(mask, ct)
    assert not kept[5, 32, 79] and kept[5, 32, 28] and kept[5, 21, 41]
    assert inside_torso(mask, None) is mask  # PET only: no rule
    touching = _body(arm_gap=-1)  # an arm lying against the torso is part of the outline: the rule keeps it
    assert inside_torso(mask, touching)[5, 32, 79]


def test_a_tumour_under_its_local_background_is_not_detectable() -> None:
    rng = np.random.default_rng(0)
    suv = (2.0 + 0.1 * rng.standard_normal((30, 40, 40))).astype(np.float32)
    truth = np.zeros(suv.shape, dtype=np.int16)
    truth[5:8, 5:8, 5:8] = 1
    suv[6, 6, 6] = 6.0  # a hot tumour in a liver-like background
    truth[20:22, 20:22, 20:22] = 2  # a faint tumour inside hot uptake (myocardium)
    suv[16:27, 16:27, 16:27] = 8.0
    suv[20:22, 20:22, 20:22] = 5.0
    truth[5:7, 30:32, 30:32] = 3  # a tumour whose SUVmax stays under the extraction floor
    suv[0:12, 25:38, 25:38] = 0.5
    suv[5:7, 30:32, 30:32] = 1.5
    assert detectable_ids(truth, suv) == {1}
    pred = (truth == 1).astype(np.int32)
    score = score_scan(pred, truth, np.zeros(suv.shape, dtype=np.uint8), suv)
    assert score.found == 1 and score.lesions == 3 and score.dice < 1.0
    assert score.found_detectable == score.detectable == 1 and score.dice_detectable == pytest.approx(1.0)
    pred[truth == 2] = 2  # finding the invisible one does not count against the detectable score
    assert score_scan(pred, truth, np.zeros(suv.shape, dtype=np.uint8), suv).dice_detectable == pytest.approx(1.0)


def test_hard_negatives_are_listed_tissue_by_tissue() -> None:
    suv = np.ones((10, 20, 20), dtype=np.float32)
    organs = np.zeros(suv.shape, dtype=np.uint8)
    lesions = np.zeros(suv.shape, dtype=np.int16)
    organs[:, :10] = ORGAN["liver"]
    suv[:, :10] = 3.0  # 2000 hot liver voxels
    organs[5, 15, 15] = ORGAN["injection"]
    suv[5, 15, 15] = 30.0  # one hot injection voxel
    lesions[2, 2, 2] = 1  # a tumour is no hard negative
    tissues = _hot_by_tissue(suv, lesions, organs)
    assert sorted(len(t) for t in tissues) == [1, 1999]
    assert [2, 2, 2] not in np.concatenate(tissues).tolist()


def test_training_refuses_validation_and_heldout_seeds() -> None:
    assert parse_seeds("0-3,32") == (0, 1, 2, 3, 32)
    for seed in (VALIDATION_SEEDS[0], VALIDATION_SEEDS[-1], HELDOUT_SEEDS[0]):
        with pytest.raises(ValueError, match="never trained on"):
            parse_seeds(f"0-3,{seed}")
    assert seed_ranges([5, 0, 1, 2, 7, 8]) == "0-2, 5, 7-8"


def test_bilateral_hot_fat_is_brown_fat_and_a_one_sided_or_lung_focus_is_kept() -> None:
    ct = _body(arm_gap=3)
    suv = np.ones(ct.shape, dtype=np.float32)
    for cx in (32, 48):  # brown fat either side of the midline (column 40): fat density, hot
        ct[3:7, 14:19, cx - 2 : cx + 3] = -70.0
        suv[3:7, 14:19, cx - 2 : cx + 3] = 5.0
    ct[3:7, 46:51, 18:23] = -70.0  # hot fat on one side only
    suv[3:7, 46:51, 18:23] = 5.0
    suv[5, 32, 52] = 6.0  # a small lung nodule whose centre voxel is averaged into the fat range
    ct[5, 32, 52] = -70.0
    mask = suv >= 2.5
    kept = without_symmetric_fat(mask, suv, ct)
    assert not kept[5, 16, 32] and not kept[5, 16, 48]
    assert kept[5, 48, 20] and kept[5, 32, 52]
    assert without_symmetric_fat(mask, suv, None) is mask


def _blurred_sphere(radius_mm: float, suv: float, background: float) -> tuple[np.ndarray, np.ndarray]:
    """A uniform sphere in a uniform background on a 4 mm grid, blurred as the PET blurs (6 mm FWHM): SUV and
    the truth (voxel centres inside the sphere)."""
    zz, yy, xx = np.ogrid[:24, :24, :24]
    truth = ((zz - 12) ** 2 + (yy - 12) ** 2 + (xx - 10) ** 2) * 16.0 <= radius_mm**2
    activity = np.where(truth, suv, background).astype(np.float32)
    return ndi.gaussian_filter(activity, 6.0 / 2.3548 / 4.0), truth


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * float((a & b).sum()) / float(a.sum() + b.sum())


def test_refinement_grows_an_under_segmented_lesion_and_trims_an_over_segmented_one() -> None:
    suv, truth = _blurred_sphere(14.0, 6.0, 1.0)
    core = ndi.binary_erosion(truth, iterations=1)  # the network drew the hot core only
    refined = refine_boundaries(core, suv, (4.0, 4.0, 4.0), 0.4)
    assert _dice(core, truth) < 0.75 and _dice(refined, truth) > 0.9
    wide = ndi.binary_dilation(truth, iterations=1)  # or the lesion with a rim of blur
    assert _dice(refine_boundaries(wide, suv, (4.0, 4.0, 4.0), 0.4), truth) > _dice(wide, truth) + 0.1
    assert refine_boundaries(core, suv, (4.0, 4.0, 4.0), 0.0) is core  # fraction 0: the network's regions


def test_refinement_does_not_absorb_a_hot_physiological_neighbour() -> None:
    suv, truth = _blurred_sphere(10.0, 5.0, 1.0)
    organ = np.zeros(suv.shape, dtype=bool)
    organ[:, :, 13:] = True  # myocardium-like uptake hotter than the tumour, touching its edge
    suv = np.maximum(suv, ndi.gaussian_filter(np.where(organ, 9.0, 0.0), 6.0 / 2.3548 / 4.0)).astype(np.float32)
    cool = np.zeros(suv.shape, dtype=bool)
    cool[:, 5:10, 4:13] = True  # a cooler physiological region above the level, touching the tumour
    suv[cool & ~truth] = 3.5
    mask = truth & (suv >= 4.0)  # the network's region over the tumour
    refined = refine_boundaries(mask, suv, (4.0, 4.0, 4.0), 0.35)
    assert not (refined & organ).any()  # hotter than the lesion: never part of it
    assert not (refined & ~ndi.binary_dilation(mask)).any()  # at most one voxel (4 mm) beyond the region
    assert _dice(refined, truth) >= _dice(mask, truth)


def test_refinement_keeps_the_network_region_when_a_hot_neighbour_sets_its_contour() -> None:
    suv, truth = _blurred_sphere(14.0, 6.0, 0.5)  # a lung tumour
    heart = np.zeros(suv.shape, dtype=bool)
    heart[:, 9:, 14:] = True  # the myocardium wraps around it, hotter than the tumour
    heart[:, 16:, :] = True
    heart[16:, :, :] = True
    suv = np.maximum(suv, ndi.gaussian_filter(np.where(heart, 10.0, 0.0), 6.0 / 2.3548 / 4.0)).astype(np.float32)
    mask = truth | (heart & ndi.binary_dilation(truth, iterations=1))  # the network took a rim of the heart along
    refined = refine_boundaries(mask, suv, (4.0, 4.0, 4.0), 0.35)
    assert (refined & truth).sum() >= 0.9 * truth.sum()  # the contour would have held the heart's edge only


def test_brown_fat_is_drawn_outside_the_lungs_bone_and_brain() -> None:
    grid = Grid((75, 64, 64), (8.0, 8.0, 8.0), (-252.0, -252.0, 4.0))
    drawn = 0
    for seed in range(0, 40):
        scene = _scene(np.random.default_rng(seed), 600.0, None, placement_rng(seed))
        fat = np.zeros(grid.shape, dtype=np.uint8)
        other = np.zeros(grid.shape, dtype=np.uint8)
        for shape in scene.shapes:
            if shape.organ == "brown_fat":
                _paint(fat, grid.axes(), shape, 1)
            elif shape.organ in ("lung", "bone", "brain"):
                _paint(other, grid.axes(), shape, 1)
        drawn += int(fat.any())
        assert not (fat.astype(bool) & other.astype(bool)).any(), seed
    assert drawn >= 5  # brown fat is drawn in about 30% of the phantoms


def test_lymph_nodes_are_drawn_inside_the_torso_not_in_the_arms() -> None:
    nodes = 0
    for seed in range(0, 60):
        scene = _scene(np.random.default_rng(seed), 600.0, None, placement_rng(seed))
        bx, by = scene.body
        arms = [s for s in scene.shapes if s.organ == "arm"]
        for lesion in scene.lesions:
            if lesion.site != "node":
                continue
            nodes += 1
            x, y, _ = lesion.center
            r = max(lesion.radii)
            assert ((abs(x) + r) / bx) ** 2 + (y / by) ** 2 <= 1.0, (seed, lesion.center)
            for arm in arms:  # the ellipse of the arm grown by the node's radius
                ax, ay = arm.radii[0] + r, arm.radii[1] + r
                assert ((x - arm.center[0]) / ax) ** 2 + ((y - arm.center[1]) / ay) ** 2 > 1.0
    assert nodes >= 30


def test_tumours_lie_in_their_site_tissue_and_no_node_inside_the_blood_pool_heart_skull_or_an_organ() -> None:
    sites: dict[str, int] = {}
    for seed in (*range(0, 60), 5000, 5006):
        scene = _scene(np.random.default_rng(seed), 600.0, None, placement_rng(seed))
        for lesion in scene.lesions:
            sites[lesion.site] = sites.get(lesion.site, 0) + 1
            assert _organ_at(lesion.center, scene.shapes) in SITE_TISSUE[lesion.site], (seed, lesion)
            for axis in range(3):  # the inner half's extent along each axis
                for sign in (-1.0, 1.0):
                    p = list(lesion.center)
                    p[axis] += sign * lesion.radii[axis] / 2
                    assert _organ_at((p[0], p[1], p[2]), scene.shapes) not in SITE_KEEP_OUT[lesion.site], (seed, p)
    assert min(sites.values()) >= 40  # all three sites are drawn


def test_a_confident_focus_under_the_seed_threshold_is_kept_only_when_it_stands_out_on_the_suv() -> None:
    from dicom_node.pipelines.pet_tumour.detect import hysteresis

    suv = np.full((12, 40, 60), 2.5, dtype=np.float32)  # a liver-like background
    prob = np.zeros(suv.shape, dtype=np.float32)
    foci = {"lesion": (slice(4, 7), slice(8, 11), slice(8, 11)), "blood": (slice(4, 7), slice(8, 11), slice(28, 31))}
    foci["sure"] = (slice(4, 7), slice(8, 11), slice(48, 51))
    suv[foci["lesion"]] = 6.5  # 2.6 x its surroundings
    suv[foci["blood"]] = 4.0  # 1.6 x: blood pool, bowel, myocardium look like this
    suv[foci["sure"]] = 3.0
    for name, peak in (("lesion", 0.87), ("blood", 0.87), ("sure", 0.99)):
        prob[foci[name]] = 0.5
        centre = tuple(slice(s.start + 1, s.start + 2) for s in foci[name])
        prob[centre] = peak
    without = hysteresis(prob, 0.2, 0.98)
    with_suv = hysteresis(prob, 0.2, 0.98, suv)
    assert without[5, 9, 49] and with_suv[5, 9, 49]  # over the seed threshold: kept either way
    assert not without[5, 9, 9] and with_suv[5, 9, 9]  # under it, but 2.6 x its surroundings
    assert not without[5, 9, 29] and not with_suv[5, 9, 29]  # under it and only 1.6 x


def test_the_card_keeps_the_numbers_of_the_same_version_on_another_held_out_set(tmp_path: Path) -> None:
    from dicom_node.synth.pet_phantom import VERSION as PHANTOM_VERSION
    from dicom_node.training.pet_tumour.evaluate import _previous

    network = {"dice_mean": 0.7}
    old = {"bundle_version": "1.3.0", "heldout_seeds": [5000, 5001], "phantom_version": PHANTOM_VERSION - 1}
    path = tmp_path / "metrics.json"
    path.write_text(json.dumps({**old, "methods": {"network": network}, "previous": [{"version": "1.2.0"}]}))
    earlier = _previous(path, "1.3.0", [5000, 5001, 5002])  # re-evaluated on other phantoms: the old set stays
    assert [e["version"] for e in earlier] == ["1.3.0", "1.2.0"]
    assert earlier[0]["phantom_version"] == PHANTOM_VERSION - 1 and earlier[0]["network"] == network
    same = {**old, "phantom_version": PHANTOM_VERSION, "methods": {"network": network}}
    path.write_text(json.dumps(same))
    assert _previous(path, "1.3.0", [5000, 5001]) == []  # the same set again: replaced, not kept twice
    assert [e["version"] for e in _previous(path, "1.4.0", [5000, 5001])] == ["1.3.0"]
