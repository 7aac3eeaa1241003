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

        q(z \mid X) = \frac1m \sum_{i=1}^m q_i(z \mid x_i), \qquad
        q^{(i)}(z, W \mid X) = q_i(z \mid x_i)\, q(w_i \mid x_i) \prod_{j \ne i} r_j(w_j).

    Each modality's encoder outputs the parameters of both its shared expert ``q_i(z | x_i)`` (the
    first ``latent_dim`` coordinates) and its private posterior ``q(w_i | x_i)`` (the last
    ``private_dim``), one network with two heads as in MMVAE+. Called as Pyro's ``guide`` it draws
    ``z`` stratified, one draw per expert (``num_draws = m``, scored under the whole mixture as in
    :class:`~guides.MixtureOfExpertsGuide`). In the draw of expert ``i``, ``w_i`` comes from its
    posterior and every other ``w_j`` from MMVAE+'s *auxiliary prior* ``r_j(w_j) = Laplace(0, s_j)``
    with a learned scale per coordinate (:meth:`auxiliary_prior`; ``s_j = 1`` at the start, when
    ``r_j`` is the model's ``p0(w_j)``). So the decoder of ``x_j`` sees, in the other experts'
    draws, a ``w_j`` that knows nothing of ``x_j``: reconstructing ``x_j`` there rests on ``z``
    alone, which is what makes ``z`` carry the shared content (the digit) and ``w_j`` the rest.

    Sites ``"z"`` and ``"w_<name>"`` are ``(m, B, ·)``. Paired with the model's ``p0(w_j)`` this is
    a proper ELBO of the joint: it is MMVAE+'s objective plus the terms
    ``E_{r_j}[log p0(w_j) − log r_j(w_j)] = −KL(r_j ‖ p0)``, which reach only the scales ``s_j``
    (MMVAE+ leaves ``r_j`` free; here it is pulled towards ``p0``).

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
        self.auxiliary_log_scale = nn.ParameterDict(
            {name: nn.Parameter(torch.zeros(private_dim)) for name in encoders}
        )

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

    def auxiliary_prior(self, name: str) -> TorchDistribution:
        """MMVAE+'s auxiliary prior ``r_j(w_j) = Laplace(0, s_j)`` (``Normal`` for ``family="normal"``)
        of modality ``name``'s private latent, where its posterior is not drawn: event ``(d_w,)``."""
        scale = self.auxiliary_log_scale[name].exp()
        return LOCATION_SCALE_FAMILIES[self.family](torch.zeros_like(scale), scale).to_event(1)

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
        family = LOCATION_SCALE_FAMILIES[self.family]
        with pyro.plate("draws", self.num_draws, dim=-2), pyro.plate("data", batch_size, dim=-1):
            with poutine.scale(scale=1.0 / self.num_draws):
                z = pyro.sample("z", shared)
                for expert, (name, q_w) in enumerate(private.items()):
                    # Row `expert` of the draws: the posterior of w_name; every other row: r_name.
                    own = torch.arange(self.num_draws, device=z.device).eq(expert)[:, None, None]
                    q, r = q_w.base_dist, self.auxiliary_prior(name).base_dist
                    loc, scale = torch.where(own, q.loc, r.loc), torch.where(own, q.scale, r.scale)
                    pyro.sample(f"w_{name}", family(loc, scale).to_event(1))
        return z
