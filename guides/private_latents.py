"""The guide of the model with modality-specific latents: ``q(z | X) Π_i q(w_i | x_i)``."""

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


class PrivateLatentGuide(nn.Module):
    r"""The guide of :class:`~models.private_latents.PrivateLatentVAE`, as in MMVAE+ [1]:

    .. math::

        q(z, W \mid X) = q(z \mid X) \prod_{i=1}^m q(w_i \mid x_i), \qquad
        q(z \mid X) = \frac1m \sum_{i=1}^m q_i(z \mid x_i).

    Each modality's encoder outputs the parameters of both its shared expert ``q_i(z | x_i)`` (the
    first ``latent_dim`` coordinates) and its private posterior ``q(w_i | x_i)`` (the last
    ``private_dim``), one network with two heads as in MMVAE+. Called as Pyro's ``guide`` it draws
    ``z`` stratified, one draw per expert (``num_draws = m``, scored under the whole mixture as in
    :class:`~guides.MixtureOfExpertsGuide`), and an independent ``w_i`` for every draw (sites
    ``"z"`` and ``"w_<name>"``).

    [1] Palumbo, Daunhawer, Vogt (2023) "MMVAE+: Enhancing the Generative Quality of Multimodal VAEs
        without Compromises".

    :param encoders: ``{modality: encoder}``, each mapping ``(B, *event)`` to ``(loc, scale)``, both
        ``(B, latent_dim + private_dim)``.
    :param latent_dim: the dimension ``d`` of the shared ``z``.
    :param private_dim: the dimension ``d_w`` of each ``w_i``.
    :param family: ``"laplace"`` (MMVAE+) or ``"normal"`` for every factor.
    """

    def __init__(
        self, encoders: Mapping[str, nn.Module], latent_dim: int, private_dim: int, family: str = "laplace"
    ) -> None:
        super().__init__()
        if len(encoders) < 1:
            raise ValueError("need at least one modality encoder")
        if latent_dim < 1 or private_dim < 1:
            raise ValueError(f"latent_dim and private_dim must be positive, got {latent_dim}, {private_dim}")
        if family not in LOCATION_SCALE_FAMILIES:
            raise ValueError(f"unknown expert family {family!r}; choose one of {sorted(LOCATION_SCALE_FAMILIES)}")
        self.encoders = nn.ModuleDict(encoders)
        self.latent_dim = latent_dim
        self.private_dim = private_dim
        self.family = family

    @property
    def modalities(self) -> list[str]:
        return list(self.encoders)

    @property
    def num_draws(self) -> int:
        """Latent draws per example: one per expert."""
        return len(self.encoders)

    def encoder_params(self, name: str, x: Tensor) -> tuple[Tensor, Tensor]:
        """``(loc, scale)`` of modality ``name``'s encoder, each ``(B, latent_dim + private_dim)``."""
        return encode(
            self.encoders[name], name, x, self.latent_dim + self.private_dim,
            described_as=f"latent_dim + private_dim = {self.latent_dim} + {self.private_dim}",
        )

    def posteriors(
        self, batch: Mapping[str, Tensor]
    ) -> tuple[StratifiedMixtureOfExperts, dict[str, TorchDistribution]]:
        """``q(z | X_S)`` (batch ``(|S|, B)``) and ``{i: q(w_i | x_i)}`` (batch ``(B,)``) for the
        modalities ``S`` present in ``batch``, from one pass of each encoder."""
        family = LOCATION_SCALE_FAMILIES[self.family]
        params = {name: self.encoder_params(name, batch[name]) for name in present_modalities(batch, self.modalities)}
        d = self.latent_dim
        shared = StratifiedMixtureOfExperts(
            family(
                torch.stack([loc[:, :d] for loc, _ in params.values()]),
                torch.stack([scale[:, :d] for _, scale in params.values()]),
            ).to_event(1)
        )
        private = {name: family(loc[:, d:], scale[:, d:]).to_event(1) for name, (loc, scale) in params.items()}
        return shared, private

    def posterior(self, batch: Mapping[str, Tensor]) -> StratifiedMixtureOfExperts:
        """``q(z | X_S)`` from the modalities ``S`` present in ``batch`` (any non-empty subset)."""
        return self.posteriors(batch)[0]

    def experts(self, batch: Mapping[str, Tensor]) -> TorchDistribution:
        """The shared experts ``q_i(z | x_i)`` of the modalities present in ``batch``, stacked: batch
        ``(m', B)``, event ``(d,)``."""
        return self.posterior(batch).experts

    def private_posterior(self, batch: Mapping[str, Tensor]) -> dict[str, TorchDistribution]:
        """``{i: q(w_i | x_i)}`` for the modalities present in ``batch``, each batch ``(B,)``."""
        return self.posteriors(batch)[1]

    def forward(self, batch: Mapping[str, Tensor], *, num_draws: Optional[int] = None) -> Tensor:
        batch_size = check_modalities(batch, self.modalities)
        if num_draws is not None and num_draws != self.num_draws:
            raise ValueError(
                f"the private-latent guide draws {self.num_draws} shared latents per example (one per "
                f"modality); the model was called with num_draws={num_draws}"
            )
        shared, private = self.posteriors(batch)
        with pyro.plate("draws", self.num_draws, dim=-2), pyro.plate("data", batch_size, dim=-1):
            with poutine.scale(scale=1.0 / self.num_draws):
                z = pyro.sample("z", shared)
                for name, q_w in private.items():
                    pyro.sample(f"w_{name}", q_w)
        return z
