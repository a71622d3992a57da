"""FPR3D, the 3-D false-positive reduction step: its input cube, the pipeline hook and its training samples."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dicom_node.imaging.series import normalize_hu
from dicom_node.networks.fpr3d import PATCH, build_fpr3d
from dicom_node.pipelines.ct_lung_nodule import NoduleModel, extract_patch3d
from dicom_node.training.ct_lung_nodule.bundle import FPR3D_KWARGS, save_networks
from dicom_node.training.ct_lung_nodule.data import Case, NoduleTruth
from dicom_node.training.ct_lung_nodule.fpr3d import (
    _augment3d,
    finetune_fpr3d,
    fpr3d_samples,
    train_fpr3d,
    truth_candidate,
)


def _ball_mm(
    shape: tuple[int, int, int], spacing: tuple[float, float, float], center_mm: tuple[float, ...], r: float
) -> np.ndarray:
    z, y, x = np.ogrid[: shape[0], : shape[1], : shape[2]]
    zz, yy, xx = (z + 0.5) * spacing[0], (y + 0.5) * spacing[1], (x + 0.5) * spacing[2]
    return ((zz - center_mm[0]) ** 2 + (yy - center_mm[1]) ** 2 + (xx - center_mm[2]) ** 2) <= r * r


def _case(dz: float = 2.0) -> Case:
    """A 60 mm slab at ``dz`` mm slices: a 12 mm ball (truth 1) and a vessel along z (not a nodule)."""
    spacing = (dz, 1.0, 1.0)
    shape = (int(60 / dz), 80, 80)
    hu = np.full(shape, -860.0, dtype=np.float32)
    ball = _ball_mm(shape, spacing, (30.0, 25.0, 25.0), 6.0)
    hu[ball] = 30.0
    hu[:, 58:61, 58:61] = 40.0
    labels = ball.astype(np.int16)
    areas = ball.reshape(shape[0], -1).sum(axis=1)
    k = int(np.argmax(areas))
    truth = NoduleTruth(1, 12.0, 0, 0, k, (k, 25, 25))
    return Case("t", normalize_hu(hu), hu, spacing, np.ones(shape, dtype=bool), labels, [truth])


def _random_fpr3d(seed: int) -> torch.nn.Module:
    """A random FPR3D whose batch-norm statistics come from random cubes (else its output is flat)."""
    torch.manual_seed(seed)
    net = build_fpr3d(**FPR3D_KWARGS)
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm3d):
            m.momentum = None  # running statistics = those of the batch below
    with torch.no_grad():
        net(torch.rand(8, 2, PATCH, PATCH, PATCH) * torch.linspace(0, 1, PATCH))
    return net.eval()


def test_patch3d_is_isotropic_and_centred_on_the_candidate() -> None:
    case = _case(dz=2.0)
    patch = extract_patch3d(case.norm, truth_candidate(case, 1), case.spacing[0])
    assert patch.shape == (2, PATCH, PATCH, PATCH) and patch.dtype == np.float32
    mask = patch[1] >= 0.5
    zz, yy, xx = np.nonzero(mask)
    assert abs(zz.mean() - PATCH / 2) <= 1.0 and abs(yy.mean() - PATCH / 2) <= 1.0 and abs(xx.mean() - PATCH / 2) <= 1.0
    # A 12 mm ball spans about 12 planes along every axis of the 1 mm cube, whatever the slice spacing.
    for axis in range(3):
        extent = np.nonzero(mask.any(axis=tuple(a for a in range(3) if a != axis)))[0]
        assert 10 <= extent[-1] - extent[0] + 1 <= 14
    # The image channel holds the ball's HU (normalized) where the mask is, parenchyma around it.
    assert patch[0][mask].mean() > 0.6 > 0.15 > patch[0][0].mean()


def test_verify_adds_the_fpr_logit_only_with_a_network() -> None:
    case = _case()
    cand = truth_candidate(case, 1)
    without = NoduleModel(unet=None, resmtnet=None)
    without.verify(case.norm, case.spacing[0], [cand])
    assert "fpr_logit" not in cand.features
    torch.manual_seed(0)
    with_net = NoduleModel(unet=None, resmtnet=None, fpr3d=build_fpr3d(width=4).eval(), batch=1)
    other = truth_candidate(case, 1)
    with_net.verify(case.norm, case.spacing[0], [cand, other])
    assert np.isfinite(cand.features["fpr_logit"]) and cand.features["fpr_logit"] == other.features["fpr_logit"]


def test_samples_label_candidates_by_truth_overlap_and_add_every_truth() -> None:
    case = _case()
    prob = np.zeros(case.norm.shape, dtype=np.float32)
    prob[case.labels == 1] = 0.9  # the U-Net finds the ball...
    prob[:, 58:61, 58:61] = 0.9  # ...and the vessel
    model = NoduleModel(unet=None, resmtnet=None, min_volume_mm3=1.0)
    x, y = fpr3d_samples([case], model, [prob])
    # the ball and the vessel once per seed level (the same components at both levels count once), plus the truth
    assert x.shape == (3, 2, PATCH, PATCH, PATCH) and x.dtype == np.float16
    assert sorted(y.tolist()) == [0, 1, 1]
    assert (model.threshold, model.grow_threshold) == (0.5, 0.5)  # restored


def test_training_steps_run_and_augmentation_keeps_shapes() -> None:
    rng = np.random.default_rng(0)
    x = rng.random((6, 2, PATCH, PATCH, PATCH)).astype(np.float16)
    y = np.array([0, 1, 0, 1, 0, 1])
    assert _augment3d(rng, x[:2]).shape == (2, 2, PATCH, PATCH, PATCH)
    net = train_fpr3d(x, y, steps=2, batch=4)
    assert not net.training
    with torch.inference_mode():
        assert net(torch.from_numpy(x[:3].astype(np.float32))).shape == (3,)


def test_finetune_draws_hard_negatives_and_moves_a_trained_network() -> None:
    rng = np.random.default_rng(1)
    x = rng.random((8, 2, PATCH, PATCH, PATCH)).astype(np.float16)
    y = np.array([1, 1, 0, 0, 0, 0, 0, 0])
    hard = np.array([False, False, False, False, False, False, True, True])
    torch.manual_seed(0)
    net = build_fpr3d(**FPR3D_KWARGS).eval()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    out = finetune_fpr3d(net, x, y, hard, steps=2, batch=8, hard_share=2)
    assert not out.training
    assert any(not torch.equal(before[k], v) for k, v in out.state_dict().items())
    with pytest.raises(ValueError, match="hard negatives"):
        finetune_fpr3d(out, x, y, np.zeros(8, dtype=bool), steps=1, batch=8)


def test_ensemble_averages_members_over_the_flips_of_the_cube(tmp_path) -> None:
    from dicom_node.networks.bundle import load_bundle
    from dicom_node.networks.fpr3d import FLIPS, FPR3DEnsemble
    from dicom_node.networks.resmtnet import build_resmtnet
    from dicom_node.networks.unet2d import build_unet2d
    from dicom_node.pipelines.ct_lung_nodule import fpr3d_verifier

    a, b = _random_fpr3d(0), _random_fpr3d(1)
    x = torch.rand(3, 2, PATCH, PATCH, PATCH) * torch.linspace(0, 1, PATCH)  # brighter towards +x
    with torch.inference_mode():
        plain = FPR3DEnsemble([a, b], flips=False)(x)
        assert torch.allclose(plain, (a(x) + b(x)) / 2, atol=1e-5)
        tta = FPR3DEnsemble([a], flips=True)
        expected = torch.stack([a(torch.flip(x, d) if d else x) for d in FLIPS]).mean(0)
        assert torch.allclose(tta(x), expected, atol=1e-5)
        assert torch.allclose(tta(torch.flip(x, (2, 4))), tta(x), atol=1e-5)  # the flips form a group
        assert not torch.allclose(a(torch.flip(x, (2, 4))), a(x), atol=1e-5)  # one view alone is not invariant

    # Members go to the bundle as fpr3d, fpr3d_2 and come back in that order.
    save_networks(tmp_path, build_unet2d(), build_resmtnet(stem_stride=2), FPR3DEnsemble([a, b]))
    networks = load_bundle(tmp_path / "models" / "model.pt").networks
    assert sorted(networks) == ["fpr3d", "fpr3d_2", "resmtnet", "unet"]
    again = fpr3d_verifier(networks, flips=False)
    with torch.inference_mode():
        assert torch.allclose(again(x), plain, atol=1e-5)
    assert fpr3d_verifier({"unet": networks["unet"]}, flips=True) is None


def test_verify_screens_with_one_view_before_the_whole_ensemble() -> None:
    from dicom_node.networks.fpr3d import FPR3DEnsemble

    case = _case()
    a, b = _random_fpr3d(0), _random_fpr3d(1)
    ensemble = FPR3DEnsemble([a, b]).eval()
    cube = torch.from_numpy(extract_patch3d(case.norm, truth_candidate(case, 1), case.spacing[0])[None])
    with torch.inference_mode():
        single, full = float(a(cube)[0]), float(ensemble(cube)[0])
    assert abs(single - full) > 1e-3  # else this test could not tell the two apart
    # Below the screen a candidate keeps the first member's one-view logit; at or above it, the ensemble's.
    for screen, expected in ((single + 0.5, single), (single - 0.5, full)):
        cand = truth_candidate(case, 1)
        NoduleModel(unet=None, resmtnet=None, fpr3d=ensemble, screen_logit=screen).verify(
            case.norm, case.spacing[0], [cand]
        )
        assert abs(cand.features["fpr_logit"] - expected) < 1e-4


def test_second_screen_and_settle_read_in_full_only_what_can_reach_the_operating_point() -> None:
    from dicom_node.networks.calibrator import Calibrator
    from dicom_node.networks.fpr3d import FPR3DEnsemble

    case = _case()
    case.norm[15:18, 30:34, 33:37] = 1.0  # something beside the ball: flipped views differ
    a, b = _random_fpr3d(0), _random_fpr3d(1)
    ensemble = FPR3DEnsemble([a, b]).eval()
    cube = torch.from_numpy(extract_patch3d(case.norm, truth_candidate(case, 1), case.spacing[0])[None])
    with torch.inference_mode():
        mean2, full = float((a(cube)[0] + b(cube)[0]) / 2), float(ensemble(cube)[0])
    assert abs(mean2 - full) > 1e-3  # else this test could not tell the two apart

    def model(second: float, bias: float) -> NoduleModel:
        # A detector on the FPR3D logit alone: score 0.5 where logit + bias = 0.
        detector = Calibrator(("fpr_logit",), np.zeros(1), np.ones(1), np.ones(1), bias)
        m = NoduleModel(unet=None, resmtnet=None, fpr3d=ensemble, screen_logit=-100.0, detector=detector)
        m.second_screen_logit = second
        setattr(m, "min_score", 0.5)  # noqa: B010 - as load_model sets it
        return m

    # Under the second screen a candidate keeps the mean of the unflipped views, even when read exactly.
    cand = truth_candidate(case, 1)
    assert model(mean2 + 0.5, 0.0).verify(case.norm, case.spacing[0], [cand]) == []
    assert abs(cand.features["fpr_logit"] - mean2) < 1e-4
    # Above it: the whole ensemble, at once (full) or once settle finds its score could matter.
    cand = truth_candidate(case, 1)
    model(mean2 - 0.5, 0.0).verify(case.norm, case.spacing[0], [cand])
    assert abs(cand.features["fpr_logit"] - full) < 1e-4
    for bias, read in ((-mean2, True), (-mean2 - 10.0, False)):  # score at mean2 + margin: 0.97, or ~0
        m = model(mean2 - 0.5, bias)
        cand = truth_candidate(case, 1)
        estimated = m.verify(case.norm, case.spacing[0], [cand], full=False)
        assert estimated == [cand] and abs(cand.features["fpr_logit"] - mean2) < 1e-4
        m._calibrate(cand)
        m.settle(case.norm, case.spacing[0], estimated)
        assert abs(cand.features["fpr_logit"] - (full if read else mean2)) < 1e-4
        assert cand.p_detect is not None and abs(cand.p_detect - m.detector(cand.features)) < 1e-9  # type: ignore[misc]


def test_faint_components_are_the_low_seeded_ones_no_confident_candidate_touches() -> None:
    case = _case()
    prob = np.zeros(case.norm.shape, dtype=np.float32)
    prob[case.labels == 1] = 0.9  # a confident component: the ball
    prob[:, 58:61, 58:61] = 0.05  # a faint one: the vessel
    prob[:, 20:30, 55:70] = 0.04  # another faint one, apart from both
    model = NoduleModel(unet=None, resmtnet=None, fpr3d=_random_fpr3d(0), faint_levels=(0.03, 0.02))
    confident = model.components(prob, case.region, case.spacing)
    assert len(confident) == 1
    faint = model.faint_components(prob, case.region, case.spacing, confident)
    assert len(faint) == 2 and all(c.prob_max < 0.5 for c in faint)
    # A faint component touching a confident one is not a second candidate for it.
    line = prob[:, 20:25, 25]
    prob[:, 20:25, 25] = np.where(line > 0, line, 0.04)  # faint, running on from the ball along z
    assert len(model.faint_components(prob, case.region, case.spacing, confident)) == 2
    # Off without faint levels, and without an FPR3D network to vouch for them.
    assert (
        NoduleModel(unet=None, resmtnet=None, fpr3d=_random_fpr3d(0)).faint_components(
            prob, case.region, case.spacing, confident
        )
        == []
    )
    assert (
        NoduleModel(unet=None, resmtnet=None, faint_levels=(0.03, 0.02)).faint_components(
            prob, case.region, case.spacing, confident
        )
        == []
    )


def test_inference_copy_folds_batch_norm_and_gives_the_same_logits() -> None:
    from dicom_node.networks.fpr3d import FPR3DEnsemble, inference_copy

    net = _random_fpr3d(2)
    fast = inference_copy(net)
    assert not any(isinstance(m, torch.nn.BatchNorm3d) for m in fast.modules())
    assert any(isinstance(m, torch.nn.BatchNorm3d) for m in net.modules())  # the original is untouched
    x = torch.rand(4, 2, PATCH, PATCH, PATCH) * torch.linspace(0, 1, PATCH)
    with torch.inference_mode():
        expected = net(x)
        assert torch.allclose(fast(x), expected, atol=1e-4)
        assert torch.allclose(fast(x.contiguous(memory_format=torch.channels_last_3d)), expected, atol=1e-4)
    ensemble = FPR3DEnsemble([net], flips=False)
    assert ensemble.readers(x.device)[0] is not net  # evaluation mode: the folded copy reads
    assert ensemble.readers(x.device)[0] is ensemble.readers(x.device)[0]  # made once
    net.train()
    assert ensemble.readers(x.device) == [net]  # a member in training: batch statistics, no copy
