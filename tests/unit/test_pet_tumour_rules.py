"""PET/CT tumour network around the network: the torso rule on the CT, which tumours are detectable at all,
the scores on detectable tumours, the tissue-by-tissue hard negatives and the seed lists of training."""

from __future__ import annotations

import numpy as np
import pytest

from dicom_node.pipelines.pet_tumour.detect import inside_torso, torso_mask, without_symmetric_fat
from dicom_node.synth.pet_phantom import ORGAN
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
