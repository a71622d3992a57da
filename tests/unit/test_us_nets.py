"""Lung-US networks: encoder extraction, transfer, freezing, hierarchical probabilities, metrics."""

from __future__ import annotations

import numpy as np
import torch

from dicom_node.networks.us_lung import (
    Freeze,
    NetConfig,
    build_unet,
    classifier_from_unet,
    encoder_blocks,
    encoder_parameter_names,
    freeze_encoder,
)
from dicom_node.training.us_lung import augment, classification_scores, dice_scores, transfer


def test_encoder_blocks_are_the_down_path() -> None:
    unet = build_unet(NetConfig())
    blocks = encoder_blocks(unet)
    assert len(blocks) == 5  # four down blocks and the bottom
    x = torch.zeros(1, 1, 64, 64)
    for block in blocks:
        x = block(x)
    assert x.shape == (1, 128, 8, 8)  # first level at full resolution (stride 1)
    names = encoder_parameter_names(unet)
    assert names and all(n in unet.state_dict() for n in names)
    assert len(encoder_parameter_names(unet, depth=2)) < len(names)


def test_freeze_modes() -> None:
    counts = {}
    for mode in Freeze:
        unet = build_unet()
        counts[mode] = freeze_encoder(unet, mode)
        trainable = [p for p in unet.parameters() if p.requires_grad]
        assert trainable  # the decoder always trains
    assert counts[Freeze.NONE] == 0 < counts[Freeze.PART] < counts[Freeze.ALL]


def test_transfer_copies_matching_shapes_only() -> None:
    source = build_unet(out_channels=3)
    target = build_unet()
    copied = transfer(target, source.state_dict())
    assert 0 < copied < len(source.state_dict())
    name = sorted(encoder_parameter_names(target))[0]
    assert torch.equal(target.state_dict()[name], source.state_dict()[name])


def test_hierarchical_probabilities() -> None:
    unet = build_unet()
    clf = classifier_from_unet(unet).eval()
    p = clf.probabilities(torch.rand(3, 1, 64, 64))
    assert p.shape == (3, 4)
    assert torch.allclose(p.sum(1), torch.ones(3), atol=1e-5)
    # transferred, not shared: training the classifier leaves the U-Net alone
    first = next(iter(clf.encoder.parameters()))
    assert first.data_ptr() != next(iter(encoder_blocks(unet)[0].parameters())).data_ptr()


def test_dice_and_accuracy() -> None:
    truth = np.zeros((2, 4, 4), dtype=np.uint8)
    truth[0, :2] = 1
    pred = truth.copy()
    pred[0, 1] = 0  # half the rib found
    d = dice_scores(pred, truth, (1, 2))
    assert abs(d[1] - 2 * 4 / (4 + 8)) < 1e-9 and np.isnan(d[2])
    probs = np.array([[0.9, 0.05, 0.03, 0.02], [0.1, 0.1, 0.7, 0.1], [0.2, 0.6, 0.1, 0.1]])
    s = classification_scores(probs, np.array([0, 2, 3]))
    assert s["level1_accuracy"] == 1.0 and s["level2_accuracy"] == 0.5


def test_augment_moves_labels_with_pixels() -> None:
    x = torch.zeros(4, 1, 32, 32)
    x[:, :, :, :8] = 1.0
    y = (x[:, 0] > 0.5).long()
    gen = torch.Generator().manual_seed(0)
    xa, ya = augment(x, y, gen)
    assert ya is not None and xa.shape == x.shape
    bright = xa[:, 0] > 0.3
    agree = ((ya == 1) == bright).float().mean()
    assert agree > 0.9
