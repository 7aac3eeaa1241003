"""The multimodal VAE with shared and modality-specific latents ("Ours+", after MMVAE+)."""

from __future__ import annotations

from typing import Mapping, Optional, Sequence

import pyro
import torch
from pyro import poutine
from pyro.distributions import Laplace, TorchDistribution
from torch import Tensor, nn

from models.multimodal_vae import MultimodalVAE, decode_batched
from pyro_mmebm.batch import check_modalities
from pyro_mmebm.contracts import GuideWithPrivateLatents
from pyro_mmebm.likelihoods import Likelihood
from pyro_mmebm.priors import LaplacePrior


class PrivateLatentVAE(MultimodalVAE):
    r"""A shared latent ``z`` with the EBM (or any) prior, plus a private latent ``w_i`` per modality:

    .. math::

        p(X, z, W) = p_\alpha(z) \prod_{i=1}^m p_0(w_i) \, p_{\beta_i}(x_i \mid z, w_i),
        \qquad p_0(w_i) = \mathrm{Laplace}(w_i; 0, I),

    the model of MMVAE+ [1] with the EBM prior of [2] on ``z``. Decoder ``i`` maps the concatenation
    ``[z, w_i]`` (dimension ``d + d_w``) to the likelihood's parameter. Sites are ``"z"``,
    ``"w_<name>"`` and ``"x_<name>"``, all inside ``pyro.plate("draws")`` and ``pyro.plate("data")``
    scaled by ``1/num_draws`` like :class:`~models.MultimodalVAE`; pair it with
    :class:`~guides.private_latents.PrivateLatentGuide`.

    The guide is MMVAE+'s: in the draw of expert ``i`` every other ``w_j`` comes from an auxiliary
    prior ``r_j`` with a learned scale rather than from ``q(w_j | x_j)``
    (:class:`~guides.private_latents.PrivateLatentGuide`), so decoding ``x_j`` from another
    modality's ``z`` is learned with a ``w_j`` that knows nothing of ``x_j``. Generating modality
    ``j`` across modalities likewise draws ``w_j`` from that ``r_j`` (:meth:`cross_generate`), or,
    given ``auxiliary_scale=s``, from ``Laplace(0, s)`` (:meth:`private_prior`).

    [1] Palumbo, Daunhawer, Vogt (2023) "MMVAE+: Enhancing the Generative Quality of Multimodal VAEs
        without Compromises". [2] Yuan et al. (2024) "Learning Multimodal Latent Generative Models
        with Energy-Based Prior".

    :param decoders: ``{modality: decoder}``, each mapping ``(N, d + d_w)`` to the likelihood's parameter.
    :param likelihoods: ``{modality: Likelihood}``.
    :param prior: a module returning the prior of ``z`` with event shape ``(d,)``.
    :param private_dim: ``d_w``.
    :param likelihood_scales: optional ``{modality: scale}`` (default 1 for each).
    """

    def __init__(
        self,
        decoders: Mapping[str, nn.Module],
        likelihoods: Mapping[str, Likelihood],
        prior: nn.Module,
        private_dim: int,
        likelihood_scales: Optional[Mapping[str, float]] = None,
    ) -> None:
        super().__init__(decoders, likelihoods, prior, likelihood_scales)
        self.private_dim = private_dim
        self.private_base = LaplacePrior(private_dim)

    def private_prior(self, auxiliary_scale: Optional[float] = None) -> TorchDistribution:
        """``p0(w) = Laplace(0, I)``, or with ``auxiliary_scale = s`` the auxiliary ``Laplace(0, s I)``."""
        base = self.private_base()
        if auxiliary_scale is None:
            return base
        if auxiliary_scale <= 0:
            raise ValueError(f"auxiliary_scale must be positive, got {auxiliary_scale}")
        return Laplace(self.private_base.loc, torch.full_like(self.private_base.loc, auxiliary_scale)).to_event(1)

    def forward(
        self,
        batch: Optional[Mapping[str, Tensor]] = None,
        *,
        num_draws: int = 1,
        batch_size: Optional[int] = None,
    ) -> Tensor:
        """Run the model on observed ``batch`` (all modalities), or generate ``batch_size`` examples.

        Returns ``z`` of shape ``(num_draws, batch, d)``.
        """
        if batch is None:
            if batch_size is None:
                raise ValueError("give either a batch to condition on or a batch_size to generate")
            data: Mapping[str, Tensor] = {}
        else:
            batch_size = check_modalities(batch, self.modalities)
            data = batch
        with pyro.plate("draws", num_draws, dim=-2), pyro.plate("data", batch_size, dim=-1):
            with poutine.scale(scale=1.0 / num_draws):
                z = pyro.sample("z", self.prior())
                for name, decoder in self.decoders.items():
                    w = pyro.sample(f"w_{name}", self.private_prior())
                    params = decode_batched(decoder, torch.cat([z, w], dim=-1))
                    likelihood = self.likelihoods[name]
                    x = data.get(name)
                    if x is not None:
                        self._check_data_shape(name, x, likelihood.data_shape(params, z.dim() - 1))
                    with poutine.scale(scale=self.likelihood_scales[name]):
                        pyro.sample(f"x_{name}", likelihood(params, z.dim() - 1), obs=x)
        return z

    @torch.no_grad()
    def decode(
        self,
        z: Tensor,
        private: Optional[Mapping[str, Tensor]] = None,
        *,
        auxiliary_scale: Optional[float] = None,
        modalities: Optional[Sequence[str]] = None,
    ) -> dict[str, Tensor]:
        """The likelihood mean of every modality (or of ``modalities`` only) at shared latents ``z`` of
        shape ``(*batch, d)``.

        :param private: known private latents ``{i: w_i}``, each ``(*batch, d_w)`` (e.g. drawn from
            the guide's ``q(w_i | x_i)`` to reconstruct ``x_i``); every other decoded modality's
            ``w_j`` is drawn from :meth:`private_prior` with ``auxiliary_scale`` (cross generation).
        """
        private = dict(private or {})
        unknown = set(private) - set(self.modalities)
        if unknown:
            raise ValueError(f"private latents given for unknown modalities {sorted(unknown)}")
        means = {}
        for name in self._chosen_modalities(modalities):
            w = private.get(name)
            if w is None:
                w = self.private_prior(auxiliary_scale).sample(z.shape[:-1])
            means[name] = self.likelihoods[name].mean(decode_batched(self.decoders[name], torch.cat([z, w], dim=-1)))
        return means

    @torch.no_grad()
    def generate(
        self, num_samples: int, *, auxiliary_scale: Optional[float] = None
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """``num_samples`` shared latents from the prior (Langevin for the EBM) and every modality's
        decoded mean, each with its own ``w_j`` from :meth:`private_prior`."""
        z = self.prior().sample((num_samples,))
        return z, self.decode(z, auxiliary_scale=auxiliary_scale)

    @torch.no_grad()
    def cross_generate(
        self,
        guide: GuideWithPrivateLatents,
        batch: Mapping[str, Tensor],
        *,
        targets: Optional[Sequence[str]] = None,
        auxiliary_scale: Optional[float] = None,
    ) -> dict[str, Tensor]:
        """The mean of each of ``targets`` (default: every modality) given the modalities ``S`` present
        in ``batch`` (any non-empty subset), from one draw of the latents per example: ``{name: (B, *item)}``.

        ``z ~ q(z | X_S)`` from ``guide.posterior``, the mixture of the experts in ``S``: every expert
        draws, then one expert per example is kept, uniformly at random (so only the kept draw is
        decoded). ``w_i ~ q(w_i | x_i)`` for ``i ∈ S`` (reconstruction) and, for ``j ∉ S`` (cross
        generation), ``w_j`` from the guide's auxiliary prior ``r_j`` (the one the decoders were
        trained with), or from ``Laplace(0, auxiliary_scale)`` when given.
        """
        shared, private = guide.posteriors(batch)
        z = shared.sample()  # (|S|, B, d): one draw per expert
        given = {name: q_w.sample(z.shape[:-2]) for name, q_w in private.items()}
        if auxiliary_scale is None:
            for name in self.modalities:
                if name not in given:
                    given[name] = guide.auxiliary_prior(name).sample(z.shape[:-1])
        num_experts, batch_size = z.shape[:2]
        picked = torch.randint(num_experts, (batch_size,)).to(z.device)  # one expert per example
        examples = torch.arange(batch_size, device=z.device)
        kept = {name: w[picked, examples] for name, w in given.items()}
        return self.decode(z[picked, examples], kept, auxiliary_scale=auxiliary_scale, modalities=targets)
