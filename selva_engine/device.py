"""Which torch device a run uses: "auto", "cpu", "cuda" or "cuda:N", checked against the machine."""

from __future__ import annotations

import torch

__all__ = ["resolve_device"]


def resolve_device(name: str) -> torch.device:
    """torch.device for a device option: "auto" = CUDA when available, else the CPU.

    Raises ValueError when CUDA is asked for on a machine without it.
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} requested but no CUDA GPU is available (use \"cpu\")")
    return torch.device(name)

