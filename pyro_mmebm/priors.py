"""Priors for the shared latent ``z``, as modules that return a Pyro distribution.

Each prior is an ``nn.Module`` whose call returns a distribution with event shape ``(latent_dim,)``;
the model expands it over its plates. Swapping priors is one line in the model's construction::

    prior = EnergyBasedPrior(latent_dim=20)                 # the EBM prior of this library
    prior = EnergyBasedPrior(latent_dim=20, base="normal")  # ... tilting a standard Normal
    prior = LaplacePrior(latent_dim=20)                     # the MMVAE baseline
    prior = LaplacePrior(latent_dim=20, learn_scale=True)   # ... with a learnable scale
    prior = SoftmaxScaleLaplacePrior(latent_dim=20)         # MMVAE's learnable prior
    prior = NormalPrior(latent_dim=20)                      # MVAE / MoPoE

or, by name, ``PRIORS[name](latent_dim)`` (the EBM priors, :data:`EBM_PRIORS`, with their settings:
``PRIORS["ebm"](latent_dim, EBMPriorConfig(...))``). Learnable priors train in the prior's parameter group of
:func:`pyro_mmebm.fit` (``prior_lr``, ``prior_betas``). The Laplace and Normal priors are defined
here, the EBM prior with the rest of the EBM in :mod:`pyro_mmebm.ebm`.
"""

from __future__ import annotations

from functools import partial

import torch
from pyro.distributions import Laplace, Normal, TorchDistribution
from torch import nn
from torch.nn import functional as F

from pyro_mmebm.ebm import EnergyBasedPrior


class _StandardBase(nn.Module):
    def __init__(self, latent_dim: int) -> None:
        super().__init__()
        if latent_dim < 1:
            raise ValueError(f"latent_dim must be positive, got {latent_dim}")
        self.latent_dim = latent_dim
        self.register_buffer("loc", torch.zeros(latent_dim))
        self.register_buffer("scale", torch.ones(latent_dim))


class LaplacePrior(_StandardBase):
    """``z ~ Laplace(0, b)^d``, the prior of MMVAE, with unit scale ``b = 1``.

    :param latent_dim: ``d``.
    :param learn_scale: learn ``b = exp(log_scale)`` (one per dimension, initialised at 1) instead.
    """

    def __init__(self, latent_dim: int, *, learn_scale: bool = False) -> None:
        super().__init__(latent_dim)
        self.log_scale = nn.Parameter(torch.zeros(latent_dim)) if learn_scale else None

    def forward(self) -> TorchDistribution:
        scale = self.scale if self.log_scale is None else self.log_scale.exp()
        return Laplace(self.loc, scale).to_event(1)


class SoftmaxScaleLaplacePrior(_StandardBase):
    r"""MMVAE's learnable prior: ``z ~ Laplace(0, b)^d`` with softmax-normalised scales [1]

    .. math::

        b = d \cdot \mathrm{softmax}(\ell), \qquad \textstyle\sum_j b_j = d,

    so the prior can shrink some dimensions only by widening others (``ℓ = 0``, i.e. ``b = 1``, at
    initialisation).

    [1] Shi, Siddharth, Paige, Torr (2019) "Variational Mixture-of-Experts Autoencoders for
        Multi-Modal Deep Generative Models" (code: ``learn_prior``).

    :param latent_dim: ``d``.
    """

    def __init__(self, latent_dim: int) -> None:
        super().__init__(latent_dim)
        self.logits = nn.Parameter(torch.zeros(latent_dim))

    def forward(self) -> TorchDistribution:
        return Laplace(self.loc, F.softmax(self.logits, dim=-1) * self.latent_dim).to_event(1)


class NormalPrior(_StandardBase):
    """``z ~ Normal(0, 1)^d``."""

    def forward(self) -> TorchDistribution:
        return Normal(self.loc, self.scale).to_event(1)


PRIORS = {
    "ebm": EnergyBasedPrior,
    "ebm_normal": partial(EnergyBasedPrior, base="normal"),
    "laplace": LaplacePrior,
    "laplace_learned": partial(LaplacePrior, learn_scale=True),
    "laplace_softmax": SoftmaxScaleLaplacePrior,
    "normal": NormalPrior,
}
"""Prior factories by name, each called as ``PRIORS[name](latent_dim)``; those of :data:`EBM_PRIORS` take an
:class:`~pyro_mmebm.ebm.EBMPriorConfig` as well."""

EBM_PRIORS = ("ebm", "ebm_normal")
"""The names of :data:`PRIORS` that are energy-based priors."""
