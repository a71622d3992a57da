"""Which torch device a worker uses: CUDA when present, the CPU otherwise."""

from __future__ import annotations


def pick_device(preference: str = "auto") -> str:
    """``"cuda"`` if asked for or available (with ``auto``), else ``"cpu"``; refuses cuda without a GPU."""
    if preference == "cpu":
        return "cpu"
    try:
        import torch
    except ImportError:
        if preference == "cuda":
            raise RuntimeError("device = 'cuda' but torch is not installed") from None
        return "cpu"
    if torch.cuda.is_available():
        return "cuda"
    if preference == "cuda":
        raise RuntimeError("device = 'cuda' but no CUDA device is available")
    return "cpu"
