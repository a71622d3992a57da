"""2-D / 2.5-D U-Net for lung-nodule segmentation (MONAI ``UNet``), small enough for a CPU.

Measured here (2 shared CPU cores, 2 threads): about 0.02 s per 256 x 192 slice, so a 133-slice chest
CT's lung bounding box at 1 mm pixels takes a few seconds.
"""

from __future__ import annotations

from typing import Any

DEFAULT_CHANNELS = (16, 32, 64, 128, 128)


def build_unet2d(in_channels: int = 3, out_channels: int = 1, channels: tuple[int, ...] = DEFAULT_CHANNELS) -> Any:
    """A MONAI UNet (2-D, batch norm, one convolution per level) returning logits.

    Args:
        in_channels: adjacent slices stacked as channels (3 = 2.5-D).
        out_channels: output logit channels.
        channels: features per level; each level after the first halves the resolution.
    """
    from monai.networks.nets import UNet

    return UNet(
        spatial_dims=2,
        in_channels=in_channels,
        out_channels=out_channels,
        channels=channels,
        strides=(2,) * (len(channels) - 1),
        num_res_units=0,
        norm="batch",
        act=("LeakyReLU", {"negative_slope": 0.1, "inplace": True}),
    )
