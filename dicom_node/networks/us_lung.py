"""Networks of the lung-ultrasound pipeline: a MONAI U-Net and a hierarchical frame classifier.

The U-Net segments four labels (0 background, 1 rib with its acoustic shadow, 2 pleural line,
3 B-line).
Its encoder (the down-sampling blocks and the bottom block of MONAI's nested ``UNet``) can be
pulled out (:func:`encoder_blocks`) to transfer weights, to freeze part or all of it, and to feed
the :class:`HierarchicalClassifier` (normal vs abnormal, then B-lines / consolidation / effusion).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from enum import StrEnum
from typing import cast

import torch
from monai.networks.nets import UNet
from torch import nn

logger = logging.getLogger(__name__)

SEG_LABELS: tuple[str, ...] = ("background", "rib", "pleural_line", "b_line")
LEVEL2_LABELS: tuple[str, ...] = ("b_lines", "consolidation", "effusion")


@dataclass(frozen=True)
class NetConfig:
    """Shape of the U-Net (stored in the bundle so the weights can be rebuilt)."""

    channels: tuple[int, ...] = (8, 16, 32, 64, 128)
    strides: tuple[int, ...] = (1, 2, 2, 2)
    num_res_units: int = 1
    input_size: tuple[int, int] = (128, 128)
    hidden: int = 64

    def to_json(self) -> dict[str, object]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, object]) -> NetConfig:
        def ints(key: str, default: Sequence[int]) -> tuple[int, ...]:
            value = data.get(key, default)
            assert isinstance(value, list | tuple)
            return tuple(int(v) for v in value)

        size = ints("input_size", (128, 128))
        return cls(
            channels=ints("channels", cls.channels),
            strides=ints("strides", cls.strides),
            num_res_units=int(str(data.get("num_res_units", 1))),
            input_size=(size[0], size[1]),
            hidden=int(str(data.get("hidden", 64))),
        )


class Freeze(StrEnum):
    """How much of a transferred encoder stays fixed while fine-tuning."""

    NONE = "none"
    PART = "part"
    ALL = "all"


def build_unet(config: NetConfig | None = None, out_channels: int = len(SEG_LABELS)) -> UNet:
    """The segmentation U-Net (MONAI ``UNet``, 2-D, one grayscale input channel)."""
    config = config or NetConfig()
    return UNet(
        spatial_dims=2,
        in_channels=1,
        out_channels=out_channels,
        channels=config.channels,
        strides=config.strides,
        num_res_units=config.num_res_units,
    )


def encoder_blocks(unet: UNet) -> list[nn.Module]:
    """The encoder of a MONAI ``UNet`` in input-to-bottom order (down blocks, then the bottom block).

    MONAI nests the network as ``Sequential(down, SkipConnection(Sequential(down, ...), up)``; the
    encoder is the first module at every level plus the innermost submodule.
    """
    blocks: list[nn.Module] = []
    level: nn.Module = unet.model
    while isinstance(level, nn.Sequential):
        blocks.append(level[0])
        skip = level[1]
        level = cast(nn.Module, skip.submodule)
    blocks.append(level)
    return blocks


def encoder_parameter_names(unet: UNet, depth: int | None = None) -> set[str]:
    """Names (as in ``unet.state_dict()``) of the parameters of the first ``depth`` encoder blocks."""
    chosen = encoder_blocks(unet)
    if depth is not None:
        chosen = chosen[:depth]
    wanted = {id(p) for block in chosen for p in block.parameters()}
    return {name for name, p in unet.named_parameters() if id(p) in wanted}


def freeze_encoder(unet: UNet, mode: Freeze | str) -> int:
    """Freeze none, the first half, or all encoder blocks; returns the number of frozen tensors."""
    mode = Freeze(mode)
    blocks = encoder_blocks(unet)
    depth = {Freeze.NONE: 0, Freeze.PART: len(blocks) // 2, Freeze.ALL: len(blocks)}[mode]
    frozen = 0
    for block in blocks[:depth]:
        for p in block.parameters():
            p.requires_grad_(False)
            frozen += 1
    return frozen


class Encoder(nn.Module):
    """Runs the encoder blocks of a U-Net in sequence and returns the bottom feature map."""

    def __init__(self, blocks: Sequence[nn.Module]) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(blocks)

    @property
    def out_channels(self) -> int:
        last = [m for m in self.blocks[-1].modules() if isinstance(m, nn.Conv2d)]
        return int(last[-1].out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return x


class HierarchicalClassifier(nn.Module):
    """Frame classifier on a (transferred) U-Net encoder.

    ``forward`` returns two logit tensors: level 1 (normal, abnormal) and level 2 (b_lines,
    consolidation, effusion; meaningful for abnormal frames). :meth:`probabilities` combines them
    into the four frame-class probabilities: ``p(normal)`` and ``p(abnormal) * p(class | abnormal)``.
    """

    def __init__(self, encoder: Encoder, hidden: int = 64) -> None:
        super().__init__()
        self.encoder = encoder
        channels = encoder.out_channels
        self.neck = nn.Sequential(nn.Conv2d(channels, hidden, 3, padding=1), nn.ReLU(inplace=True))
        self.level1 = nn.Linear(2 * hidden, 2)
        self.level2 = nn.Linear(2 * hidden, len(LEVEL2_LABELS))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feats = self.neck(self.encoder(x))
        pooled = torch.cat([feats.mean(dim=(2, 3)), feats.amax(dim=(2, 3))], dim=1)
        return self.level1(pooled), self.level2(pooled)

    @torch.no_grad()
    def probabilities(self, x: torch.Tensor) -> torch.Tensor:
        """(n, 4) probabilities in the order normal, b_lines, consolidation, effusion."""
        l1, l2 = self(x)
        p1 = torch.softmax(l1, dim=1)
        p2 = torch.softmax(l2, dim=1)
        return torch.cat([p1[:, :1], p1[:, 1:] * p2], dim=1)


def classifier_from_unet(unet: UNet, hidden: int = 64) -> HierarchicalClassifier:
    """A classifier whose encoder is a copy of ``unet``'s encoder (weights transferred)."""
    import copy

    blocks = [copy.deepcopy(b) for b in encoder_blocks(unet)]
    return HierarchicalClassifier(Encoder(blocks), hidden=hidden)


def classifier_skeleton(config: NetConfig) -> HierarchicalClassifier:
    """An untrained classifier of the bundle's shape (weights are loaded into it)."""
    return classifier_from_unet(build_unet(config), hidden=config.hidden)
