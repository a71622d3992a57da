"""Res-MTNet: a shared residual feature extractor with classification and regression heads.

Input: a nodule-centred 2.5-D patch (3 adjacent slices, normalized HU) plus the nodule's mask on the
centre slice as a fourth channel. Outputs (dict): ``malignancy`` (1 logit), ``composition`` (3 logits:
solid, part_solid, ground_glass), ``diameter`` (mm, regression), ``nodule`` (1 logit: nodule vs. a
false-positive candidate such as a vessel).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

COMPOSITIONS = ("solid", "part_solid", "ground_glass")
PATCH = 48
DIAMETER_SCALE = 20.0


class _ResBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.skip: nn.Module = (
            nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
            if stride != 1 or cin != cout
            else nn.Identity()
        )
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.act(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return torch.relu(y + self.skip(x))


class ResMTNet(nn.Module):
    """Shared residual extractor (4 stages) + classification heads + diameter regression head."""

    def __init__(self, in_channels: int = 4, width: int = 16, stem_stride: int = 1) -> None:
        super().__init__()
        w = width
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, w, 3, stem_stride, 1, bias=False), nn.BatchNorm2d(w), nn.ReLU(True)
        )
        self.features = nn.Sequential(
            _ResBlock(w, w, 1), _ResBlock(w, 2 * w, 2), _ResBlock(2 * w, 4 * w, 2), _ResBlock(4 * w, 8 * w, 2)
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        feat = 8 * w
        self.malignancy = nn.Sequential(nn.Dropout(0.2), nn.Linear(feat, 1))
        self.composition = nn.Sequential(nn.Dropout(0.2), nn.Linear(feat, len(COMPOSITIONS)))
        self.nodule = nn.Sequential(nn.Dropout(0.2), nn.Linear(feat, 1))
        self.diameter = nn.Sequential(nn.Linear(feat, 32), nn.ReLU(True), nn.Linear(32, 1))

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        f = self.pool(self.features(self.stem(x))).flatten(1)
        return {
            "malignancy": self.malignancy(f).squeeze(1),
            "composition": self.composition(f),
            "nodule": self.nodule(f).squeeze(1),
            "diameter": self.diameter(f).squeeze(1) * DIAMETER_SCALE,
        }


def build_resmtnet(**kwargs: Any) -> ResMTNet:
    """A :class:`ResMTNet` (keyword arguments go to its constructor)."""
    return ResMTNet(**kwargs)
