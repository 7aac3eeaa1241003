r"""Diagnostics of the amortised posterior: the guide on test examples.

Every guide of :mod:`guides` builds ``q(z | X)`` (``guide.posterior(batch)``: the mixture of experts
``(1/m) Σ_i q_i(z | x_i)``, the product of experts, or the mixture of products over subsets) from one
expert ``q_i(z | x_i)`` per modality (``guide.experts(batch)``: batch ``(m, B)``, event ``(d,)``; an
:class:`~pyro_mmebm.contracts.ExpertGuide`). For a batch of test examples this module gives draws of
``q`` as ArviZ posterior draws, the spread of each expert, how much the experts of one example agree,
and the Pareto k̂ of importance sampling with ``q`` as proposal [1]. A guide without experts is
refused, naming what it lacks, by the diagnostics that compare experts.

References:
    [1] Yao, Vehtari, Simpson, Gelman (2018) "Yes, but Did It Work?: Evaluating Variational
        Inference". [2] Vehtari, Simpson, Gelman, Yao, Gabry (2024) "Pareto Smoothed Importance
        Sampling". [3] Shi, Siddharth, Paige, Torr (2019) "Variational Mixture-of-Experts
        Autoencoders for Multi-Modal Deep Generative Models".
"""

from __future__ import annotations

from typing import Callable, Optional

import arviz as az
import numpy as np
import pandas as pd
import pyro
import torch
from pyro.distributions import Categorical, MixtureSameFamily, TorchDistribution
from pyro.infer.importance import psis_diagnostic
from torch import Tensor
from torch.distributions import Independent, Laplace, Normal, kl_divergence

from pyro_mmebm.batch import present_modalities
from pyro_mmebm.contracts import Batch, ExpertGuide, Guide, MultimodalModel, guide_posteriors
from pyro_mmebm.distributions import StratifiedMixtureOfExperts
from pyro_mmebm.evaluation.coherence import sample_mixture

KHAT_GOOD = 0.5
"""k̂ below this: the guide is a good importance-sampling proposal for that example [1]."""
KHAT_BAD = 0.7
"""k̂ above this: importance sampling with the guide is unreliable for that example [1, 2]."""


def _experts(guide: Guide, batch: Batch, diagnostic: str) -> tuple[TorchDistribution, list[str]]:
    """``guide.experts(batch)`` and the modalities they belong to, in that order.

    :raises ValueError: naming the guide and the diagnostic, when the guide has no experts.
    """
    if not isinstance(guide, ExpertGuide):
        raise ValueError(
            f"{diagnostic} compares the guide's per-modality experts q_i(z | x_i), but {type(guide).__name__} "
            "has no experts(batch) method (see pyro_mmebm.contracts.ExpertGuide)"
        )
    return guide.experts(batch), present_modalities(batch, guide.modalities)


def _location_scale(experts: TorchDistribution) -> Optional[tuple[type, Tensor, Tensor]]:
    """``(family, loc, scale)`` when the experts are factorised Laplace or Normal, else ``None``."""
    base = getattr(experts, "base_dist", None)
    factorised = isinstance(experts, Independent) and experts.reinterpreted_batch_ndims == 1
    if factorised and isinstance(base, (Laplace, Normal)):
        return type(base), base.loc, base.scale
    return None


@torch.no_grad()
def posterior_inference_data(
    guide: ExpertGuide, batch: Batch, num_draws: int = 1000, *, num_chains: int = 1
) -> az.InferenceData:
    """Draws of ``z ~ q(z | X)`` for every example of ``batch`` as :class:`arviz.InferenceData`.

    Draws of ``guide.posterior(batch)`` itself: of a stratified mixture, each draw picks a stratum
    uniformly at random, then draws from it (a draw of the mixture, not the stratified draws used in
    training, so the draws are exchangeable and R-hat/ESS apply).

    Groups: ``posterior`` with ``z`` of dims ``(chain, draw, example, z_dim)``; ``constant_data``
    with ``expert_mean`` and ``expert_sd`` of dims ``(modality, example, z_dim)``, the experts'.
    """
    experts, modalities = _experts(guide, batch, "posterior_inference_data")
    z = sample_mixture(guide.posterior(batch), torch.Size([num_chains * num_draws]))
    batch_size, latent_dim = z.shape[1:]
    z = z.reshape(num_chains, num_draws, batch_size, latent_dim)
    coords = {"example": np.arange(batch_size), "z_dim": np.arange(latent_dim), "modality": modalities}
    dims = ["modality", "example", "z_dim"]
    return az.InferenceData(
        posterior=az.dict_to_dataset({"z": z.cpu().numpy()}, coords=coords, dims={"z": ["example", "z_dim"]}),
        constant_data=az.dict_to_dataset(
            {"expert_mean": experts.mean.cpu().numpy(), "expert_sd": experts.stddev.cpu().numpy()},
            coords=coords,
            dims={"expert_mean": dims, "expert_sd": dims},
            default_dims=[],
        ),
    )


@torch.no_grad()
def expert_spread(guide: ExpertGuide, batch: Batch) -> pd.DataFrame:
    """Per expert, the mean, smallest and largest standard deviation of ``q_i(z | x_i)`` over the
    examples and latent dimensions (columns ``mean_sd``, ``min_sd``, ``max_sd``; index ``modality``).

    An expert far narrower than the others dominates the mixture's density; one as wide as the prior
    has learnt little from its modality. (For Laplace experts, ``sd = √2 · scale``.)
    """
    experts, modalities = _experts(guide, batch, "expert_spread")
    sd = experts.stddev.flatten(1)
    return pd.DataFrame(
        {"mean_sd": sd.mean(1).cpu().numpy(), "min_sd": sd.min(1).values.cpu().numpy(),
         "max_sd": sd.max(1).values.cpu().numpy()},
        index=pd.Index(modalities, name="modality"),
    )


@torch.no_grad()
def pairwise_kl(experts: TorchDistribution, *, num_samples: int = 1000) -> Tensor:
    r"""``KL(q_a ‖ q_b)`` for every pair of experts and every example: shape ``(m, m, B)``.

    Closed form for factorised Laplace or Normal experts; otherwise a Monte Carlo estimate from
    ``num_samples`` draws of each ``q_a``,
    ``KL(q_a ‖ q_b) ≈ mean_k [log q_a(z_k) − log q_b(z_k)]``, ``z_k ~ q_a``.

    :param experts: batch shape ``(m, B)``, event shape ``(d,)``.
    """
    params = _location_scale(experts)
    if params is not None:
        family, loc, scale = params
        return kl_divergence(
            Independent(family(loc.unsqueeze(1), scale.unsqueeze(1)), 1),
            Independent(family(loc.unsqueeze(0), scale.unsqueeze(0)), 1),
        )
    z = experts.sample((num_samples,))  # (n, m, B, d): z[:, a] ~ q_a
    # log q_b(z_a) at [:, a, b]: a new dimension for the expert b evaluated, right of the draw's a.
    cross = experts.log_prob(z.unsqueeze(-3))
    return (experts.log_prob(z).unsqueeze(2) - cross).mean(0)


@torch.no_grad()
def pairwise_wasserstein(experts: TorchDistribution) -> Tensor:
    r"""The 2-Wasserstein distance between every pair of experts, per example: shape ``(m, m, B)``,

    .. math::

        W_2(q_a, q_b)^2 = \sum_{j=1}^d (\mu_{aj} - \mu_{bj})^2 + (\sigma_{aj} - \sigma_{bj})^2,

    exact for factorised experts of one location–scale family (the guide's are), since then the
    quantile coupling of each coordinate is optimal.
    """
    mean, sd = experts.mean, experts.stddev
    squared = (mean.unsqueeze(1) - mean.unsqueeze(0)).pow(2) + (sd.unsqueeze(1) - sd.unsqueeze(0)).pow(2)
    return squared.sum(-1).sqrt()


def expert_agreement(guide: ExpertGuide, batch: Batch, *, num_samples: int = 1000) -> pd.DataFrame:
    """How far apart the experts of each example are, one row per example and pair of modalities.

    Columns ``example``, ``modality_a``, ``modality_b``, ``symmetric_kl`` (``KL(q_a‖q_b) + KL(q_b‖q_a)``,
    in nats) and ``wasserstein`` (2-Wasserstein, in units of ``z``). Experts that disagree strongly on
    the same example put the mixture's mass in separate places: cross-modal generation from one
    modality then differs from that of another.
    """
    with torch.no_grad():
        experts, names = _experts(guide, batch, "expert_agreement")
        kl = pairwise_kl(experts, num_samples=num_samples)
        symmetric = (kl + kl.transpose(0, 1)).cpu().numpy()
        wasserstein = pairwise_wasserstein(experts).cpu().numpy()
    rows = [
        {"example": n, "modality_a": names[a], "modality_b": names[b],
         "symmetric_kl": symmetric[a, b, n], "wasserstein": wasserstein[a, b, n]}
        for a in range(len(names)) for b in range(a + 1, len(names)) for n in range(symmetric.shape[-1])
    ]
    return pd.DataFrame(rows)


def _unstratified(posterior: TorchDistribution) -> TorchDistribution:
    """``q(z | X)`` itself, batch ``(B,)``: a stratified mixture as the mixture of its strata, any other
    posterior as it is."""
    if not isinstance(posterior, StratifiedMixtureOfExperts):
        return posterior
    params = _location_scale(posterior.experts)
    if params is None:
        raise ValueError(f"a mixture proposal needs factorised Laplace or Normal strata, got {posterior.experts}")
    family, loc, scale = params
    num_strata, batch_size = loc.shape[:2]
    components = Independent(family(loc.movedim(0, -2), scale.movedim(0, -2)), 1)  # batch (B, K)
    return MixtureSameFamily(Categorical(logits=loc.new_zeros(batch_size, num_strata)), components)


def posterior_proposal(guide: Guide) -> Callable[..., None]:
    """A guide program drawing the latents from ``q`` itself (a mixture not stratified): ``z ~ q(z | X)``
    and, for a :class:`~pyro_mmebm.contracts.GuideWithPrivateLatents`, each ``w_i ~ q(w_i | x_i)``.

    It takes ``(batch, *, num_draws=1)`` like the model and samples sites ``"z"`` (and ``"w_<name>"``)
    inside the same ``"draws"`` and ``"data"`` plates, so that a trace of it scores ``log q`` and its
    draws are those of an importance-sampling proposal. The strata of a mixture must be factorised
    Laplace or Normal.
    """

    def proposal(batch: Batch, *, num_draws: int = 1) -> None:
        posterior, private = guide_posteriors(guide, batch)
        q_z = _unstratified(posterior)
        with pyro.plate("draws", num_draws, dim=-2), pyro.plate("data", q_z.batch_shape[0], dim=-1):
            pyro.sample("z", q_z)
            for name, q_w in private.items():
                pyro.sample(f"w_{name}", q_w)

    return proposal


def psis_khat(model: MultimodalModel, guide: Guide, batch: Batch, *, num_particles: int = 1000) -> np.ndarray:
    """Pareto k̂ of the guide as importance-sampling proposal, per example: shape ``(B,)``.

    Runs :func:`pyro.infer.importance.psis_diagnostic` on each example alone with the weights
    ``p(X, z) / q(z | X)``, ``z ~ q(z | X)`` (:func:`posterior_proposal`, private latents included;
    the model is called with ``num_draws=1``). ``p`` is the model as trained: likelihood scales
    included and, for the EBM prior, without ``log Z`` (a constant, which k̂ ignores). Stratified
    training draws are not used here because the model scores them as a geometric mean over the
    strata, which is not an importance weight of ``q``. Read k̂ < 0.5 as good, 0.5–0.7 as usable,
    > 0.7 as unreliable [1, 2].
    """
    proposal = posterior_proposal(guide)
    batch_size = next(iter(batch.values())).shape[0]
    return np.array(
        [
            psis_diagnostic(
                model, proposal, {name: x[n : n + 1] for name, x in batch.items()},
                num_particles=num_particles, max_plate_nesting=2, num_draws=1,
            )
            for n in range(batch_size)
        ]
    )
