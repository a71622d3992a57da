"""FPR3D: a small 3-D CNN that tells a nodule candidate from a false positive (false-positive reduction).

On a single slice a vessel seen end-on and the root of a vessel tree look like nodules; in 3-D a vessel
continues as a tube and a nodule ends. Input: a candidate-centred patch of ``PATCH`` mm cubed on an
isotropic 1 mm grid, two channels (normalized HU as the U-Net reads it, and the candidate's mask).
Output: one logit, nodule vs. false positive.
"""

from __future__ import annotations

import copy
import itertools
from typing import Any

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

PATCH = 32


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv3d(cin, cout, 3, padding=1, bias=False),
        nn.BatchNorm3d(cout),
        nn.ReLU(inplace=True),
        nn.Conv3d(cout, cout, 3, padding=1, bias=False),
        nn.BatchNorm3d(cout),
        nn.ReLU(inplace=True),
    )


class FPR3D(nn.Module):
    """Stem at full resolution, three conv blocks at 1/2, 1/4, 1/8 of it, global pooling, one logit."""

    def __init__(self, in_channels: int = 2, width: int = 12) -> None:
        super().__init__()
        w = width
        self.stem = nn.Sequential(nn.Conv3d(in_channels, w, 3, padding=1, bias=False), nn.BatchNorm3d(w), nn.ReLU(True))
        self.features = nn.Sequential(
            nn.MaxPool3d(2),
            _block(w, 2 * w),
            nn.MaxPool3d(2),
            _block(2 * w, 4 * w),
            nn.MaxPool3d(2),
            _block(4 * w, 8 * w),
        )
        self.head = nn.Sequential(nn.AdaptiveAvgPool3d(1), nn.Flatten(), nn.Dropout(0.2), nn.Linear(8 * w, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(self.stem(x))).squeeze(1)


def build_fpr3d(**kwargs: Any) -> FPR3D:
    """An :class:`FPR3D` (keyword arguments go to its constructor)."""
    return FPR3D(**kwargs)


def member_name(index: int) -> str:
    """The bundle's name for ensemble member ``index`` (from 0): "fpr3d", "fpr3d_2", "fpr3d_3", ..."""
    return "fpr3d" if index == 0 else f"fpr3d_{index + 1}"


def inference_copy(net: nn.Module) -> nn.Module:
    """A copy of an evaluation-mode ``net`` that computes the same logits faster: each batch norm folded
    into the convolution before it, the weights in channels-last 3-D layout (on this CPU about twice as
    fast; logits equal to about 1e-6). For reading only: it has no batch norms left to train or save."""
    fast = copy.deepcopy(net).eval()
    for block in fast.modules():
        if isinstance(block, nn.Sequential):
            names = list(block._modules)
            for first, second in itertools.pairwise(names):
                conv, norm = block._modules[first], block._modules[second]
                if isinstance(conv, nn.Conv3d) and isinstance(norm, nn.BatchNorm3d):
                    block._modules[first] = fuse_conv_bn_eval(conv, norm)
                    block._modules[second] = nn.Identity()
    for param in fast.parameters():
        if param.dim() == 5:  # the convolution kernels
            param.data = param.data.contiguous(memory_format=torch.channels_last_3d)
    return fast


FLIPS: tuple[tuple[int, ...], ...] = ((), (2,), (3,), (4,), (2, 3), (2, 4), (3, 4), (2, 3, 4))


class FPR3DEnsemble(nn.Module):
    """Several FPR3D networks read as one: their logits averaged, each over the eight axis flips of the
    cube when ``flips`` (test-time augmentation; a nodule is a nodule upside down, the networks were
    trained with flips, and the average is steadier than any one view)."""

    def __init__(self, members: list[nn.Module], flips: bool = True) -> None:
        super().__init__()
        if not members:
            raise ValueError("an FPR3D ensemble needs at least one member")
        self.members = nn.ModuleList(members)
        self.flips = FLIPS if flips else ((),)
        self._readers: tuple[torch.device, list[nn.Module]] | None = None

    def readers(self, device: torch.device) -> list[nn.Module]:
        """The members as they read cubes on ``device``: while every member is in evaluation mode, their
        :func:`inference_copy` (made once per device); else the members themselves. Saving and training
        use :attr:`members`."""
        if any(m.training for m in self.members):
            return list(self.members)
        if self._readers is None or self._readers[0] != device:
            self._readers = (device, [inference_copy(m).to(device) for m in self.members])
        return self._readers[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        readers = self.readers(x.device)
        x = x.contiguous(memory_format=torch.channels_last_3d)
        total = torch.zeros(x.shape[0], dtype=torch.float32, device=x.device)
        for dims in self.flips:  # one view at a time: on the CPU, 8x larger batches run slower per cube
            view = torch.flip(x, dims) if dims else x
            for member in readers:
                total += member(view).float()
        return total / (len(self.flips) * len(readers))
