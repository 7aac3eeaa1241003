"""The mixture-of-products-of-experts guide of MoPoE: a uniform mixture over the PoE of every subset."""

from __future__ import annotations

import itertools
from typing import Mapping, Optional, Sequence, TypeVar

import pyro
import torch
from pyro import poutine
from pyro.distributions import Normal
from torch import Tensor

from guides.product_of_experts import GaussianExpertsGuide, product_of_experts
from pyro_mmebm.batch import check_modalities
from pyro_mmebm.distributions import StratifiedMixtureOfExperts

T = TypeVar("T")


def nonempty_subsets(items: Sequence[T]) -> list[tuple[T, ...]]:
    """The ``2^m − 1`` non-empty subsets of ``items``, by size, then in the order of ``items``."""
    return [subset for size in range(1, len(items) + 1) for subset in itertools.combinations(items, size)]


class MixtureOfProductsOfExpertsGuide(GaussianExpertsGuide):
    r"""MoPoE's guide [1]: the uniform mixture, over the non-empty subsets ``S`` of the modalities, of
    the product of experts of ``S``,

    .. math::

        q(z \mid X) = \frac{1}{2^m - 1} \sum_{\emptyset \ne S \subseteq \{1..m\}} \tilde q_S(z \mid X_S),
        \qquad \tilde q_S(z \mid X_S) \propto \mathcal N(z; 0, I) \prod_{i \in S} q_i(z \mid x_i),

    each ``q̃_S`` a diagonal Gaussian in closed form (:func:`product_of_experts`). Called as Pyro's
    ``guide`` it is sampled stratified like the mixture-of-experts guide, one draw per subset
    (``num_draws = 2^m − 1``, subsets in the order of :attr:`subsets`), each scored under the whole
    mixture (:class:`~pyro_mmebm.distributions.StratifiedMixtureOfExperts`). The mixture of experts
    (singletons only) and the product of experts (the full set only) are its two extremes.

    [1] Sutter, Daunhawer, Vogt (2021) "Generalized Multimodal ELBO".

    :param encoders: ``{modality: encoder}``, each mapping ``(B, *event)`` to ``(loc, scale)``.
    :param latent_dim: the dimension ``d`` of ``z``.
    :param prior_expert: include the prior expert ``N(0, I)`` in every product (MoPoE's code does).
    """

    @property
    def subsets(self) -> list[tuple[str, ...]]:
        """The subsets ``S``, one per stratum."""
        return nonempty_subsets(self.modalities)

    @property
    def num_draws(self) -> int:
        """Latent draws per example: one per non-empty subset, ``2^m − 1``."""
        return 2 ** len(self.encoders) - 1

    def posterior(self, batch: Mapping[str, Tensor]) -> StratifiedMixtureOfExperts:
        """``q(z | X_P)``: the mixture over the non-empty subsets of the modalities ``P`` present in
        ``batch``, batch ``(2^|P| − 1, B)`` (one stratum per subset), event ``(d,)``."""
        locs, scales = self.stacked_expert_params(batch)
        indices = nonempty_subsets(range(locs.shape[0]))
        membership = torch.zeros(len(indices), locs.shape[0])
        for row, subset in enumerate(indices):
            membership[row, list(subset)] = 1.0
        loc, scale = product_of_experts(locs, scales, membership, prior_expert=self.prior_expert)
        return StratifiedMixtureOfExperts(Normal(loc, scale).to_event(1))

    def forward(self, batch: Mapping[str, Tensor], *, num_draws: Optional[int] = None) -> Tensor:
        batch_size = check_modalities(batch, self.modalities)
        if num_draws is not None and num_draws != self.num_draws:
            raise ValueError(
                f"the mixture-of-products-of-experts guide draws {self.num_draws} latents per example "
                f"(one per non-empty subset of the modalities); the model was called with num_draws={num_draws}"
            )
        with pyro.plate("draws", self.num_draws, dim=-2), pyro.plate("data", batch_size, dim=-1):
            with poutine.scale(scale=1.0 / self.num_draws):
                return pyro.sample("z", self.posterior(batch))
