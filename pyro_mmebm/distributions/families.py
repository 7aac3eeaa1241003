"""The location–scale families by name, one table for the EBM's base, the guides' experts and the likelihoods."""

from __future__ import annotations

from typing import Callable

import torch
from pyro.distributions import Laplace, Normal, TorchDistribution
from torch import Tensor

LOCATION_SCALE_FAMILIES: dict[str, type[TorchDistribution]] = {"laplace": Laplace, "normal": Normal}
"""``{name: family}``, each built as ``family(loc, scale)`` (elementwise; ``.to_event`` for a vector)."""


def score(family: str, loc: Tensor, scale: Tensor) -> Callable[[Tensor], Tensor]:
    """``z ↦ ∇_z log p(z)`` of ``LOCATION_SCALE_FAMILIES[family](loc, scale)``, in closed form:
    ``−sign(z − μ) / b`` for the Laplace, ``−(z − μ) / σ²`` for the Normal."""
    if family == "laplace":
        return lambda z: -torch.sign(z - loc) / scale
    if family == "normal":
        return lambda z: (loc - z) / scale**2
    raise ValueError(f"unknown family {family!r}; choose one of {sorted(LOCATION_SCALE_FAMILIES)}")

__all__ = ["LOCATION_SCALE_FAMILIES", "score"]
