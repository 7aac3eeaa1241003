"""Choosing the compute device: the GPU when there is one, unless told otherwise."""

from __future__ import annotations

import torch


def select_device(name: str = "auto") -> torch.device:
    """``"auto"`` gives ``cuda`` when available, else ``cpu``; any other name is checked and used."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} was asked for, but CUDA is not available on this machine")
    return device
