"""Exact references for tests: densities of tilted bases by quadrature on a fine grid."""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch import Tensor

from pyro_mmebm.ebm import EnergyMLP


def grid_1d(lo: float = -12.0, hi: float = 12.0, n: int = 24001) -> tuple[Tensor, float]:
    z = torch.linspace(lo, hi, n, dtype=torch.float64)
    return z, float(z[1] - z[0])


def grid_2d(lo: float = -10.0, hi: float = 10.0, n: int = 801) -> tuple[Tensor, float]:
    t = torch.linspace(lo, hi, n, dtype=torch.float64)
    zz = torch.stack(torch.meshgrid(t, t, indexing="ij"), -1).reshape(-1, 2)
    return zz, float(t[1] - t[0]) ** 2


def laplace_log_density(z: Tensor) -> Tensor:
    """Standard Laplace log density summed over the last dimension."""
    return (-z.abs() - math.log(2.0)).sum(-1)


def log_normaliser(log_unnormalised: Callable[[Tensor], Tensor], points: Tensor, cell: float) -> Tensor:
    """``log ∫ exp(log_unnormalised(z)) dz`` by the rectangle rule on ``points`` (differentiable)."""
    return torch.logsumexp(log_unnormalised(points), 0) + math.log(cell)


def weights(log_unnormalised: Callable[[Tensor], Tensor], points: Tensor) -> Tensor:
    with torch.no_grad():
        return torch.softmax(log_unnormalised(points), 0)


def energy_output_biases(*modules: torch.nn.Module) -> set[int]:
    """The ``id`` of the output bias of every :class:`~pyro_mmebm.ebm.EnergyMLP` in ``modules``.

    A constant added to ``f_α`` cancels from the maximum-likelihood gradient ``E_q[∇f] − E_{p_α}[∇f]``
    (``Z(α)`` absorbs it), so without a magnitude penalty (the default) that bias gets no gradient
    and does not train.
    """
    return {
        id(energy.net[-1].bias) for module in modules for energy in module.modules() if isinstance(energy, EnergyMLP)
    }
