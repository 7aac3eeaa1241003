r"""Test log-likelihoods ``log p(X)`` by importance sampling with the guide as proposal.

The log-likelihood of a test example under either prior is estimated by importance sampling with
the guide as proposal [1],

.. math::

    \log p(X) \approx \log \frac{1}{mK} \sum_{i=1}^m \sum_{k=1}^K
        \frac{p(z_{ik}) \prod_j p(x_j \mid z_{ik})}{q(z_{ik} \mid X)}, \qquad z_{ik} \sim q_i(z \mid x_i),

stratified over the ``m`` strata ``q_i`` of a mixture ``q`` (unbiased for ``p(X)``, as the strata
have equal weight; ``m = 1`` for a product of experts), with ``log p(z) = f_α(z) + log p0(z) − log Z(α)``
for the EBM prior (``log Z`` by :func:`~pyro_mmebm.ebm.ais.annealed_importance_sampling`) and the
exact density for a Laplace or Normal prior: both on the same footing. Private latents ``w_i`` are
drawn from ``q(w_i | x_i)`` alongside ``z`` and scored alike. Likelihoods are unscaled (the
training-time likelihood scales are a weighting of the objective, not part of ``p(X)``).

References:
    [1] Burda, Grosse, Salakhutdinov (2016) "Importance Weighted Autoencoders".
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Mapping, Optional

import pyro.poutine as poutine
import torch
from pyro.poutine.util import prune_subsample_sites
from torch import Tensor

from pyro_mmebm.batch import prepare_batch, split_batch
from pyro_mmebm.contracts import Guide, MultimodalModel, guide_posteriors
from pyro_mmebm.ebm import TiltedLaplace
from pyro_mmebm.ebm.ais import AISResult


@torch.no_grad()
def importance_log_weights(
    model: MultimodalModel,
    guide: Guide,
    batch: Mapping[str, Tensor],
    num_samples: int,
    *,
    log_normalizer: float = 0.0,
) -> Tensor:
    """``log p(X, z) − log q(z | X)`` for ``num_samples`` draws of each stratum: shape ``(m · K, B)``.

    ``log p(X, z)`` sums the model's unscaled log densities at every sample site (the model traced
    with its latents fixed, ``num_draws = m·K``), minus ``log_normalizer`` (``log Z`` of an EBM prior,
    whose ``log_prob`` leaves it out); ``q`` is the whole posterior ``guide.posterior(batch)`` (``m``
    strata of a stratified mixture, else ``m = 1``) and, for a guide with private latents, the
    ``q(w_i | x_i)`` of the private sites ``"w_<name>"``.
    """
    posterior, private = guide_posteriors(guide, batch)
    z = posterior.sample((num_samples,))  # (K, m, B, d): K draws of each stratum, or (K, B, d)
    z = z.reshape(-1, *z.shape[-2:])
    latents, log_q = {"z": z}, posterior.log_prob(z)
    for name, q_w in private.items():
        w = q_w.sample((z.shape[0],))
        latents[f"w_{name}"] = w
        log_q = log_q + q_w.log_prob(w)
    trace = poutine.trace(poutine.condition(model, data=latents)).get_trace(batch, num_draws=z.shape[0])
    log_joint = sum(
        site["fn"].log_prob(site["value"])
        for site in prune_subsample_sites(trace).nodes.values()
        if site["type"] == "sample"
    )
    return log_joint - log_normalizer - log_q


def log_likelihood(
    model: MultimodalModel,
    guide: Guide,
    batch: Mapping[str, Tensor],
    num_samples: int = 100,
    *,
    log_normalizer: float = 0.0,
) -> Tensor:
    """The importance-weighted estimate of ``log p(X)`` per example of ``batch``: shape ``(B,)``.

    Uses ``num_samples`` draws per stratum (``m·K`` in all); see :func:`importance_log_weights`.
    """
    log_w = importance_log_weights(model, guide, batch, num_samples, log_normalizer=log_normalizer)
    return torch.logsumexp(log_w, 0) - math.log(log_w.shape[0])


@dataclass
class LogLikelihoodEstimate:
    """A test log-likelihood: ``mean`` of ``per_example`` estimates of ``log p(X)``.

    ``standard_error`` is that of the mean over the test examples; ``log_normalizer_se`` is the AIS
    error of ``log Z``, which shifts every example alike (0 for a normalised prior). Compare two
    models with both in mind.
    """

    per_example: Tensor
    log_normalizer: float
    log_normalizer_se: float

    @property
    def mean(self) -> float:
        return float(self.per_example.mean())

    @property
    def standard_error(self) -> float:
        return float(self.per_example.std() / math.sqrt(self.per_example.numel()))


def evaluate_log_likelihood(
    model: MultimodalModel,
    guide: Guide,
    loader: Iterable,
    num_samples: int = 100,
    *,
    ais: Optional[AISResult] = None,
) -> LogLikelihoodEstimate:
    """Test log-likelihood over a data loader, for an EBM prior (pass its ``ais``) or a normalised one.

    :param ais: the :func:`~pyro_mmebm.ebm.ais.annealed_importance_sampling` result of ``model.prior()``; required when
        the prior is a :class:`~pyro_mmebm.ebm.TiltedLaplace`, refused otherwise.
    """
    is_ebm = isinstance(model.prior(), TiltedLaplace)
    if is_ebm != (ais is not None):
        raise ValueError(
            "an EBM prior needs its log Z: pass ais=annealed_importance_sampling(model.prior())"
            if is_ebm else "the prior is normalised: do not pass ais"
        )
    log_z, log_z_se = (ais.log_normalizer, ais.standard_error) if ais is not None else (0.0, 0.0)
    device = next(model.parameters()).device
    per_example = [
        log_likelihood(
            model, guide, prepare_batch(split_batch(item)[0], device), num_samples, log_normalizer=log_z
        ).cpu()
        for item in loader
    ]
    return LogLikelihoodEstimate(torch.cat(per_example), log_z, log_z_se)


__all__ = [
    "LogLikelihoodEstimate",
    "evaluate_log_likelihood",
    "importance_log_weights",
    "log_likelihood",
]
