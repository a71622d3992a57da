"""Train, calibrate and evaluate the lung-nodule bundle (2.5-D U-Net + Res-MTNet + FPR3D) on synthetic and
real-inserted CT.

One job per module: ``data`` (training and evaluation cases), ``unet``, ``resmtnet`` and ``fpr3d`` (their
samples and training), ``calibration`` (the JSON calibrators), ``bundle`` (the bundle's files), ``card``
(the model card, from ``card.md.tmpl``), ``evaluation`` and ``recipe`` (:func:`train`: all of it, in order).

Command line (``__main__``): ``python -m dicom_node.training.ct_lung_nodule train|calibrate --bundle DIR
[--seed S] [--quick]`` or ``... evaluate [--bundle DIR] [--seed S]``. Training and calibration write only
into the ``--bundle`` they are given; evaluation reads the shipped bundle unless told otherwise.
"""

from __future__ import annotations

import importlib
from typing import Any

# The entry points, imported on first use so that importing this package does not import torch.
_ENTRY_POINTS = {"train": "recipe", "calibrate": "calibration", "evaluate": "evaluation", "write_card": "card"}
__all__ = ["calibrate", "evaluate", "train", "write_card"]


def __getattr__(name: str) -> Any:
    if name in _ENTRY_POINTS:
        return getattr(importlib.import_module(f"{__name__}.{_ENTRY_POINTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
