"""The EBM prior as a module: ``f_α``, its Langevin settings and its monitor, returning a :class:`TiltedLaplace`."""

from __future__ import annotations

from typing import Optional

import torch
from pyro.distributions import TorchDistribution
from torch import nn

from pyro_mmebm.distributions.families import LOCATION_SCALE_FAMILIES
from pyro_mmebm.ebm.energy import EnergyMLP
from pyro_mmebm.ebm.langevin import PersistentChains
from pyro_mmebm.ebm.monitoring import EnergyGapMonitor
from pyro_mmebm.ebm.tilted_laplace import TiltedLaplace

class EnergyBasedPrior(nn.Module):
    """The EBM prior ``p_α(z) ∝ exp(f_α(z)) p0(z)`` with ``f_α`` an :class:`EnergyMLP`.

    Returns a :class:`~pyro_mmebm.ebm.TiltedLaplace`. The defaults are the recipe that
    stayed stable on real data (see the README's stability section): a magnitude penalty ``λ = 0.1``
    on ``f_α`` with step size 0.3 (suited to a unit-scale base), 50 Langevin steps.

    :param latent_dim: ``d``.
    :param hidden_dim, depth, activation, spectral_norm: the :class:`EnergyMLP`.
    :param base: ``"laplace"`` or ``"normal"`` for ``p0``.
    :param num_steps, step_size: short-run Langevin ``K`` and ``s``.
    :param regularisation: ``λ`` of the penalty ``λ (f(z)² + E f(z⁻)²)`` on ``f_α``'s magnitude.
    :param persistent: continue the negative chains across training steps.
    :param generation_steps: Langevin steps when sampling the prior for generation (default
        ``num_steps``): short-run chains that suffice for the gradient may not reach the prior's modes.

    Setting :attr:`tilted` to ``False`` makes the prior its base ``p0`` (``f_α`` unused and untrained):
    :func:`~pyro_mmebm.fit` does so for ``TrainConfig.prior_warmup_epochs`` epochs.
    """

    def __init__(
        self,
        latent_dim: int,
        hidden_dim: int = 200,
        depth: int = 4,
        activation: str = "gelu",
        *,
        base: str = "laplace",
        num_steps: int = 50,
        step_size: float = 0.3,
        regularisation: float = 0.1,
        persistent: bool = False,
        spectral_norm: bool = False,
        generation_steps: Optional[int] = None,
    ) -> None:
        super().__init__()
        self.energy = EnergyMLP(latent_dim, hidden_dim, depth, activation, spectral_norm)  # checks latent_dim
        self.latent_dim = latent_dim
        # The standard base p0: buffers, so that they follow the module to its device.
        self.register_buffer("loc", torch.zeros(latent_dim))
        self.register_buffer("scale", torch.ones(latent_dim))
        self.base = base
        self.num_steps = num_steps
        self.step_size = step_size
        self.regularisation = regularisation
        self.persistent_chains = PersistentChains() if persistent else None
        self.monitor = EnergyGapMonitor()
        self.generation_steps = generation_steps
        self.tilted = True
        self.forward()  # validates the settings now rather than at the first training step

    def forward(self) -> TorchDistribution:
        """``p_α`` as a :class:`TiltedLaplace` of event shape ``(d,)``; the base ``p0`` when not :attr:`tilted`."""
        if not self.tilted:
            return LOCATION_SCALE_FAMILIES[self.base](self.loc, self.scale).to_event(1)
        return TiltedLaplace(
            self.energy,
            self.loc,
            self.scale,
            base=self.base,
            num_steps=self.num_steps,
            step_size=self.step_size,
            regularisation=self.regularisation,
            persistent_chains=self.persistent_chains,
            monitor=self.monitor,
            sample_steps=self.generation_steps,
        )


__all__ = ["EnergyBasedPrior"]
