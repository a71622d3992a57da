"""Where the CT-nodule training runs (device, CPU threads) and its progress bars."""

from __future__ import annotations

import os
from typing import Any

from tqdm import tqdm


def pick_device() -> str:
    """ "cuda" when a GPU is there; otherwise "cpu", with torch limited to 2 threads."""
    import torch  # here, not at the top: the data, calibration and card modules stay free of torch

    if torch.cuda.is_available():
        return "cuda"
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    return "cpu"


def progress_bar(iterable: Any, enabled: bool, **kw: Any) -> Any:
    """``iterable`` wrapped in a tqdm bar (``kw`` goes to tqdm) when ``enabled``, else as is."""
    if not enabled:
        return iterable
    return tqdm(iterable, **kw)
