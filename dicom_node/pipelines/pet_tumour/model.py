"""The PET/CT tumour network on arrays: input channels, the 4 mm working grid, sliding 2.5-D inference.

Input: SUVbw and CT (HU) on the same grid (the PET's), resampled to :data:`WORK_MM` voxels. Per axial slice
the network reads :data:`CONTEXT` slices either side of SUV (``log1p``, /3) and of CT (HU clipped to
[-1000, 1000], /500), ``2 * (2 * CONTEXT + 1)`` channels; without a CT the CT channels hold air-free soft
tissue (0 HU) and the model is told so in the notes (PET only). Output: tumour probability per voxel.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

WORK_MM = 4.0
CONTEXT = 2
CHANNELS = 2 * (2 * CONTEXT + 1)
UNET_CHANNELS = (8, 16, 32, 64)
BUILDER = "dicom_node.networks.unet2d:build_unet2d"
DEFAULT_BUNDLE = Path(__file__).resolve().parents[2] / "models" / "pet_tumour"


def suv_channel(suv: np.ndarray) -> np.ndarray:
    """SUV scaled for the network (log1p / 3)."""
    return np.asarray(np.log1p(np.clip(suv, 0.0, 100.0)) / 3.0, dtype=np.float32)


def ct_channel(hu: np.ndarray) -> np.ndarray:
    """HU scaled for the network (clipped to [-1000, 1000], / 500)."""
    return np.asarray(np.clip(hu, -1000.0, 1000.0) / 500.0, dtype=np.float32)


def to_work_grid(array: np.ndarray, spacing: tuple[float, float, float], order: int = 1) -> np.ndarray:
    """``array`` resampled to :data:`WORK_MM` voxels (unchanged when already there)."""
    from scipy import ndimage as ndi

    zoom = [s / WORK_MM for s in spacing]
    if all(abs(z - 1.0) < 1e-3 for z in zoom):
        return np.asarray(array, dtype=np.float32)
    return np.asarray(ndi.zoom(array.astype(np.float32), zoom, order=order, mode="nearest"), dtype=np.float32)


def from_work_grid(array: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    """A work-grid array back onto a volume of ``shape`` (linear)."""
    from scipy import ndimage as ndi

    if array.shape == shape:
        return array
    zoom = [t / s for t, s in zip(shape, array.shape, strict=True)]
    out = ndi.zoom(array, zoom, order=1, mode="nearest")
    fixed = np.zeros(shape, dtype=np.float32)  # zoom may miss the target by one voxel per axis
    sl = tuple(slice(0, min(a, b)) for a, b in zip(shape, out.shape, strict=True))
    fixed[sl] = out[sl]
    return fixed


def stack_inputs(suv: np.ndarray, ct: np.ndarray) -> np.ndarray:
    """(slices, CHANNELS, rows, cols) inputs: each slice with its CONTEXT neighbours (edges repeated)."""
    s, c = suv_channel(suv), ct_channel(ct)
    n = suv.shape[0]
    idx = np.clip(np.arange(n)[:, None] + np.arange(-CONTEXT, CONTEXT + 1)[None, :], 0, n - 1)
    return np.concatenate([s[idx], c[idx]], axis=1)


def pad16(x: np.ndarray) -> tuple[np.ndarray, tuple[int, int]]:
    """Pad the last two axes up to multiples of 16 (returns the original rows, cols)."""
    rows, cols = x.shape[-2:]
    pr, pc = (-rows) % 16, (-cols) % 16
    if pr or pc:
        pad = [(0, 0)] * (x.ndim - 2) + [(0, pr), (0, pc)]
        x = np.pad(x, pad, mode="edge")
    return x, (rows, cols)


@dataclass
class TumourNet:
    """The loaded network and its bundle version."""

    net: Any
    version: str
    threshold: float
    device: str
    seed_threshold: float = 0.0
    refine_fraction: float = 0.0

    def probabilities(self, suv: np.ndarray, ct: np.ndarray, batch: int = 16) -> np.ndarray:
        """Tumour probability on the given (work) grid."""
        import torch

        inputs, (rows, cols) = pad16(stack_inputs(suv, ct))
        out = np.zeros(suv.shape, dtype=np.float32)
        with torch.inference_mode():
            for i in range(0, inputs.shape[0], batch):
                x = torch.from_numpy(inputs[i : i + batch]).to(self.device)
                p = torch.sigmoid(self.net(x))[:, 0, :rows, :cols]
                out[i : i + batch] = p.float().cpu().numpy()
        return out


def load_net(bundle: str | Path, device: str) -> TumourNet:
    """The network of a ``pet_tumour`` bundle folder."""
    from dicom_node.networks.bundle import load_bundle

    loaded = load_bundle(bundle, device)
    net = loaded.network("unet")
    if net is None:
        raise ValueError(f"{bundle}: the bundle has no 'unet' network")
    threshold = float(loaded.metadata.get("threshold", 0.5))
    seed_threshold = float(loaded.metadata.get("seed_threshold", threshold))
    refine = float(loaded.metadata.get("refine_fraction", 0.0))
    return TumourNet(net, loaded.version, threshold, device, seed_threshold, refine)
