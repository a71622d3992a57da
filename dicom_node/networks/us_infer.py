"""Load the lung-US bundle and run it on frames of any size.

Frames are resized to the bundle's input size (128x128 by default), segmented and classified in
batches, and the segmentation logits are resized back to the frame size before the arg-max, so
masks align with the frames given.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from monai.networks.nets import UNet

from dicom_node.networks.us_lung import HierarchicalClassifier, NetConfig, build_unet, classifier_skeleton

logger = logging.getLogger(__name__)

MODEL_FILE = Path("models") / "model.pt"
METADATA_FILE = Path("configs") / "metadata.json"
CLASS_NAMES: tuple[str, ...] = ("normal", "b_lines", "consolidation", "effusion")


@dataclass
class Prediction:
    """Per-frame outputs at the frames' own size.

    ``labels`` (n, H, W) uint8 with 0 background, 1 rib, 2 pleural line, 3 B-line; ``confidence``
    (n, H, W) float32 the soft-max probability of the chosen label; ``classes`` (n, 4) the
    frame-class probabilities in :data:`CLASS_NAMES` order.
    """

    labels: np.ndarray
    confidence: np.ndarray
    classes: np.ndarray


def pick_device(requested: str | None = None) -> str:
    """``requested`` if given and usable, else CUDA when available, else CPU."""
    if requested and requested.startswith("cuda") and not torch.cuda.is_available():
        logger.warning("CUDA requested but not available; running the lung-US model on the CPU")
        return "cpu"
    if requested:
        return requested
    return "cuda" if torch.cuda.is_available() else "cpu"


class LungUsModel:
    """The trained U-Net and hierarchical classifier of one bundle, ready for inference."""

    def __init__(
        self, unet: UNet, classifier: HierarchicalClassifier, config: NetConfig, version: str, device: str
    ) -> None:
        self.device = torch.device(device)
        self.unet = unet.to(self.device).eval()
        self.classifier = classifier.to(self.device).eval()
        self.config = config
        self.version = version

    @classmethod
    def load(cls, bundle_dir: Path, device: str | None = None) -> LungUsModel:
        """Read ``configs/metadata.json`` and ``models/model.pt`` of a bundle.

        Raises:
            FileNotFoundError: when the bundle has no trained weights.
        """
        bundle_dir = Path(bundle_dir)
        weights = bundle_dir / MODEL_FILE
        if not weights.is_file():
            raise FileNotFoundError(f"no trained lung-US model at {weights}; run `dicom-node train us-lung`")
        meta = json.loads((bundle_dir / METADATA_FILE).read_text())
        state = torch.load(weights, map_location="cpu", weights_only=True)
        config = NetConfig.from_json(state["config"])
        unet = build_unet(config)
        unet.load_state_dict(state["unet"])
        classifier = classifier_skeleton(config)
        classifier.load_state_dict(state["classifier"])
        return cls(unet, classifier, config, str(meta.get("version", "0")), pick_device(device))

    @torch.no_grad()
    def predict(self, frames: np.ndarray, batch: int = 16) -> Prediction:
        """Segment and classify frames (n, H, W) with values in 0..1."""
        if frames.ndim != 3:
            raise ValueError(f"frames must be (n, rows, cols), got {frames.shape}")
        n, rows, cols = frames.shape
        labels = np.zeros((n, rows, cols), dtype=np.uint8)
        confidence = np.zeros((n, rows, cols), dtype=np.float32)
        classes = np.zeros((n, len(CLASS_NAMES)), dtype=np.float32)
        size = self.config.input_size
        for start in range(0, n, batch):
            chunk = torch.from_numpy(np.ascontiguousarray(frames[start : start + batch], dtype=np.float32))
            x = chunk[:, None].to(self.device)
            if (rows, cols) != size:
                x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)
            logits = self.unet(x)
            classes[start : start + batch] = self.classifier.probabilities(x).cpu().numpy()
            if (rows, cols) != size:
                logits = F.interpolate(logits, size=(rows, cols), mode="bilinear", align_corners=False)
            prob = torch.softmax(logits, dim=1)
            conf, lab = prob.max(dim=1)
            labels[start : start + batch] = lab.to(torch.uint8).cpu().numpy()
            confidence[start : start + batch] = conf.cpu().numpy()
        return Prediction(labels=labels, confidence=confidence, classes=classes)
