"""The mixture-of-experts guide of MMVAE: ``q(z | X) = (1/m) Σ_i q_i(z | x_i)``, sampled stratified."""

from __future__ import annotations

from typing import Mapping, Optional

import pyro
import torch
from pyro import poutine
from pyro.distributions import TorchDistribution
from torch import Tensor, nn

from pyro_mmebm.batch import check_modalities, present_modalities
from pyro_mmebm.distributions import LOCATION_SCALE_FAMILIES, StratifiedMixtureOfExperts
from pyro_mmebm.encoding import encode


class MixtureOfExpertsGuide(nn.Module):
    """Each modality's encoder gives an expert ``q_i(z | x_i)``; the guide is their uniform mixture.

    Called as Pyro's ``guide``, it draws one reparameterised ``z`` per expert (``num_draws = m``) and
    scores each under the whole mixture (:class:`StratifiedMixtureOfExperts`), so that ``Trace_ELBO``
    with :class:`~models.MultimodalVAE` computes exactly MMVAE's objective
    ``(1/m) Σ_i E_{q_i(z|x_i)}[log p(X, z) − log q(z|X)]`` [Shi et al. 2019, Eqs. 8–9].

    It is a plain ``nn.Module`` (its parameters never enter Pyro's global param store, so several
    models live side by side); train it with an ELBO used as a module, ``Trace_ELBO()(model, guide)``,
    as :func:`pyro_mmebm.fit` does.

    :param encoders: ``{modality: encoder}``, each mapping ``(B, *event)`` to ``(loc, scale)``,
        both ``(B, latent_dim)``.
    :param latent_dim: the dimension ``d`` of ``z``.
    :param family: ``"laplace"`` (MMVAE) or ``"normal"`` experts.
    """

    def __init__(self, encoders: Mapping[str, nn.Module], latent_dim: int, family: str = "laplace") -> None:
        super().__init__()
        if len(encoders) < 1:
            raise ValueError("need at least one modality encoder")
        if family not in LOCATION_SCALE_FAMILIES:
            raise ValueError(f"unknown expert family {family!r}; choose one of {sorted(LOCATION_SCALE_FAMILIES)}")
        self.encoders = nn.ModuleDict(encoders)
        self.latent_dim = latent_dim
        self.family = family

    @property
    def modalities(self) -> list[str]:
        return list(self.encoders)

    @property
    def num_draws(self) -> int:
        """Latent draws per example: one per expert."""
        return len(self.encoders)

    def expert_params(self, name: str, x: Tensor) -> tuple[Tensor, Tensor]:
        """``(loc, scale)`` of ``q_name(z | x)``, each ``(B, d)``."""
        return encode(self.encoders[name], name, x, self.latent_dim)

    def experts(self, batch: Mapping[str, Tensor]) -> TorchDistribution:
        """The experts of the modalities present in ``batch``, stacked: batch ``(m', B)``, event ``(d,)``."""
        present = present_modalities(batch, self.modalities)
        locs, scales = zip(*(self.expert_params(name, batch[name]) for name in present))
        return LOCATION_SCALE_FAMILIES[self.family](torch.stack(locs), torch.stack(scales)).to_event(1)

    def posterior(self, batch: Mapping[str, Tensor]) -> StratifiedMixtureOfExperts:
        """``q(z | X_S)`` from the modalities ``S`` present in ``batch`` (any non-empty subset)."""
        return StratifiedMixtureOfExperts(self.experts(batch))

    def forward(self, batch: Mapping[str, Tensor], *, num_draws: Optional[int] = None) -> Tensor:
        batch_size = check_modalities(batch, self.modalities)
        if num_draws is not None and num_draws != self.num_draws:
            raise ValueError(
                f"the mixture-of-experts guide draws {self.num_draws} latents per example (one per "
                f"modality); the model was called with num_draws={num_draws}"
            )
        with pyro.plate("draws", self.num_draws, dim=-2), pyro.plate("data", batch_size, dim=-1):
            with poutine.scale(scale=1.0 / self.num_draws):
                return pyro.sample("z", self.posterior(batch))
