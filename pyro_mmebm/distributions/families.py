"""The location–scale families by name, one table for the EBM's base, the guides' experts and the likelihoods."""

from __future__ import annotations

from pyro.distributions import Laplace, Normal, TorchDistribution

LOCATION_SCALE_FAMILIES: dict[str, type[TorchDistribution]] = {"laplace": Laplace, "normal": Normal}
"""``{name: family}``, each built as ``family(loc, scale)`` (elementwise; ``.to_event`` for a vector)."""

__all__ = ["LOCATION_SCALE_FAMILIES"]
