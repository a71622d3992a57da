"""The CT nodule bundle's files: networks with their builders (models/model.pt) and metadata
(configs/metadata.json), with the model card rendered beside them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import monai

from dicom_node.networks.bundle import save_state
from dicom_node.networks.fpr3d import FPR3DEnsemble, member_name
from dicom_node.pipelines.ct_lung_nodule import COMPOSITIONS, FAINT_MIN_LOGIT, FAINT_SCREEN_LOGIT, PATCH, SCREEN_LOGIT
from dicom_node.training.ct_lung_nodule.calibration import GROW_THRESHOLD, HU_REFINE, MIN_SCORE
from dicom_node.training.ct_lung_nodule.card import write_card

VERSION = "1.6.0"
UNET_BUILDER = "dicom_node.networks.unet2d:build_unet2d"
RESMTNET_BUILDER = "dicom_node.networks.resmtnet:build_resmtnet"
FPR3D_BUILDER = "dicom_node.networks.fpr3d:build_fpr3d"
FPR3D_KWARGS: dict[str, Any] = {"width": 8}


def _metadata(extra: dict[str, Any]) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "name": "ct_lung_nodule",
        "version": VERSION,
        "monai_version": str(monai.__version__),
        "task": "Lung nodule detection, segmentation, malignancy/composition classification, diameter",
        "intended_use": "Research use only, not for diagnosis. Chest CT, axial, adult.",
        "networks": ["unet", "resmtnet", "fpr3d", "fpr3d_2"],
        "network_data_format": {
            "inputs": {
                "unet": {
                    "type": "image",
                    "format": "hounsfield",
                    "num_channels": 3,
                    "spatial_shape": ["16*n", "16*n"],
                    "dtype": "float32",
                    "value_range": [0, 1],
                    "description": "3 adjacent axial slices, HU clipped to [-1000, 500], scaled to "
                    "[0, 1], resampled in-plane to 1.0 mm pixels",
                },
                "resmtnet": {
                    "type": "image",
                    "num_channels": 4,
                    "spatial_shape": [PATCH, PATCH],
                    "dtype": "float32",
                    "description": "nodule-centred 3 slices (as unet) + candidate mask on the centre slice",
                },
                "fpr3d": {
                    "type": "image",
                    "num_channels": 2,
                    "spatial_shape": [32, 32, 32],
                    "dtype": "float32",
                    "description": "candidate-centred 32 mm cube on an isotropic 1 mm grid (slices linearly "
                    "interpolated): normalized HU (as unet) + candidate mask",
                },
            },
            "outputs": {
                "unet": {"type": "image", "num_channels": 1, "description": "nodule logit per pixel"},
                "resmtnet": {
                    "nodule": "logit, nodule vs false positive",
                    "malignancy": "logit, malignant vs benign",
                    "composition": list(COMPOSITIONS),
                    "diameter": "mm",
                },
                "fpr3d": {"type": "logit", "description": "nodule vs false positive (3-D context)"},
            },
        },
        "inference": {
            "threshold": 0.5,
            "min_volume_mm3": 8.0,
            "min_score": MIN_SCORE,
            "work_pixel_mm": 1.0,
            "grow_threshold": GROW_THRESHOLD,
            "hu_refine": HU_REFINE,
            "fpr3d_flips": True,
            "fpr3d_screen_logit": SCREEN_LOGIT,
            "faint_levels": [0.03, 0.02],
            "faint_min_logit": FAINT_MIN_LOGIT,
            "faint_screen_logit": FAINT_SCREEN_LOGIT,
        },
    }
    fmt = meta["network_data_format"]
    for side in ("inputs", "outputs"):  # the second FPR3D ensemble member reads and writes as the first
        fmt[side]["fpr3d_2"] = fmt[side]["fpr3d"]
    meta.update(extra)
    return meta


def save_networks(bundle_dir: Path, unet: Any, resmtnet: Any, fpr3d: Any | None = None) -> None:
    """The bundle's models/model.pt: U-Net, Res-MTNet and, when given, FPR3D, with their builders.

    ``fpr3d`` is one network or an :class:`~dicom_node.networks.fpr3d.FPR3DEnsemble`, whose members are
    saved as "fpr3d", "fpr3d_2", ...
    """
    networks = {
        "unet": (UNET_BUILDER, {}, unet.cpu()),
        "resmtnet": (RESMTNET_BUILDER, {"stem_stride": 2}, resmtnet.cpu()),
    }
    members = list(fpr3d.members) if isinstance(fpr3d, FPR3DEnsemble) else [] if fpr3d is None else [fpr3d]
    for i, member in enumerate(members):
        networks[member_name(i)] = (FPR3D_BUILDER, FPR3D_KWARGS, member.cpu())
    save_state(Path(bundle_dir) / "models" / "model.pt", networks)


def write_bundle(bundle_dir: Path, unet: Any, resmtnet: Any, training: dict[str, Any]) -> None:
    """models/model.pt (state file), configs/metadata.json and docs/README.md."""
    bundle_dir = Path(bundle_dir)
    save_networks(bundle_dir, unet, resmtnet)
    meta_path = bundle_dir / "configs" / "metadata.json"
    meta_path.parent.mkdir(parents=True, exist_ok=True)
    meta = _metadata({"training": training})
    meta_path.write_text(json.dumps(meta, indent=2) + "\n")
    write_card(bundle_dir)
