"""The product-of-experts guide of MVAE: ``q(z | X) ∝ p(z) Π_i q_i(z | x_i)``, Gaussian in closed form."""

from __future__ import annotations

from typing import Mapping, Optional

import pyro
import torch
from pyro.distributions import Normal, TorchDistribution
from torch import Tensor, nn

from pyro_mmebm.batch import check_modalities, present_modalities
from pyro_mmebm.encoding import encode


def product_of_experts(
    locs: Tensor, scales: Tensor, subsets: Tensor, *, prior_expert: bool = True
) -> tuple[Tensor, Tensor]:
    r"""The normalised products of diagonal Gaussian experts, one product per subset.

    .. math::

        \prod_{i \in S} \mathcal N(z; \mu_i, \sigma_i^2) \, [\mathcal N(z; 0, 1)]
            \propto \mathcal N(z; \mu_S, \Lambda_S^{-1}), \qquad
        \Lambda_S = [1 +] \sum_{i \in S} \sigma_i^{-2}, \qquad
        \mu_S = \Lambda_S^{-1} \sum_{i \in S} \sigma_i^{-2} \mu_i,

    per latent dimension; the bracketed terms are the prior expert ``N(0, I)`` [1].

    [1] Wu, Goodman (2018) "Multimodal Generative Models for Scalable Weakly-Supervised Learning".

    :param locs: expert means ``μ_i``, shape ``(m, *batch, d)``.
    :param scales: expert standard deviations ``σ_i``, shape ``(m, *batch, d)``.
    :param subsets: membership matrix of shape ``(S, m)``: entry ``(s, i)`` is 1 when expert ``i``
        is in subset ``s``, else 0. Every subset must be non-empty unless ``prior_expert``.
    :param prior_expert: include the prior expert ``N(0, I)`` in every product.
    :returns: ``(loc, scale)`` of the products, each ``(S, *batch, d)``.
    """
    precisions = scales.pow(-2)
    membership = subsets.to(precisions)
    precision = torch.tensordot(membership, precisions, dims=1)
    weighted_locs = torch.tensordot(membership, locs * precisions, dims=1)
    if prior_expert:
        precision = precision + 1.0
    return weighted_locs / precision, precision.rsqrt()


class GaussianExpertsGuide(nn.Module):
    """Base of the guides whose experts are diagonal Gaussians ``q_i(z | x_i) = N(μ_i(x_i), σ_i(x_i)²)``.

    :param encoders: ``{modality: encoder}``, each mapping ``(B, *event)`` to ``(loc, scale)``, both
        ``(B, latent_dim)``; ``scale`` is the standard deviation.
    :param latent_dim: the dimension ``d`` of ``z``.
    :param prior_expert: include the prior expert ``N(0, I)`` in every product.
    """

    def __init__(self, encoders: Mapping[str, nn.Module], latent_dim: int, *, prior_expert: bool = True) -> None:
        super().__init__()
        if len(encoders) < 1:
            raise ValueError("need at least one modality encoder")
        self.encoders = nn.ModuleDict(encoders)
        self.latent_dim = latent_dim
        self.prior_expert = prior_expert

    @property
    def modalities(self) -> list[str]:
        return list(self.encoders)

    def expert_params(self, name: str, x: Tensor) -> tuple[Tensor, Tensor]:
        """``(loc, scale)`` of ``q_name(z | x)``, each ``(B, d)``."""
        return encode(self.encoders[name], name, x, self.latent_dim)

    def stacked_expert_params(self, batch: Mapping[str, Tensor]) -> tuple[Tensor, Tensor]:
        """``(locs, scales)`` of the modalities present in ``batch`` (model order), each ``(m', B, d)``."""
        present = present_modalities(batch, self.modalities)
        locs, scales = zip(*(self.expert_params(name, batch[name]) for name in present))
        return torch.stack(locs), torch.stack(scales)

    def experts(self, batch: Mapping[str, Tensor]) -> TorchDistribution:
        """The experts ``q_i(z | x_i)`` of the modalities present in ``batch`` (the factors of the
        products, without the prior expert), stacked: batch ``(m', B)``, event ``(d,)``."""
        return Normal(*self.stacked_expert_params(batch)).to_event(1)


class ProductOfExpertsGuide(GaussianExpertsGuide):
    r"""MVAE's guide: the product of the experts of the modalities present and a prior expert [1],

    .. math::

        q(z \mid X_S) \propto \mathcal N(z; 0, I) \prod_{i \in S} q_i(z \mid x_i),

    a diagonal Gaussian in closed form (:func:`product_of_experts`). Any non-empty subset ``S`` of
    the modalities may be present, in :meth:`posterior` and when called as Pyro's ``guide``: it draws
    one ``z`` per example (``num_draws = 1``), and with :class:`pyro_mmebm.objectives.SubsampledELBO`
    trains on MVAE's sub-sampled objective (the joint and every single modality).

    [1] Wu, Goodman (2018) "Multimodal Generative Models for Scalable Weakly-Supervised Learning".

    :param encoders: ``{modality: encoder}``, each mapping ``(B, *event)`` to ``(loc, scale)``.
    :param latent_dim: the dimension ``d`` of ``z``.
    :param prior_expert: include the prior expert ``N(0, I)`` (MVAE does).
    """

    @property
    def num_draws(self) -> int:
        """Latent draws per example: one."""
        return 1

    def posterior(self, batch: Mapping[str, Tensor]) -> TorchDistribution:
        """``q(z | X_S)`` from the modalities ``S`` present in ``batch``: batch ``(B,)``, event ``(d,)``."""
        locs, scales = self.stacked_expert_params(batch)
        everyone = torch.ones(1, locs.shape[0])
        loc, scale = product_of_experts(locs, scales, everyone, prior_expert=self.prior_expert)
        return Normal(loc[0], scale[0]).to_event(1)

    def forward(self, batch: Mapping[str, Tensor], *, num_draws: Optional[int] = None) -> Tensor:
        batch_size = check_modalities(batch, self.modalities, require_all=False)
        if num_draws is not None and num_draws != 1:
            raise ValueError(
                f"the product-of-experts guide draws one latent per example; the model was called "
                f"with num_draws={num_draws}"
            )
        with pyro.plate("draws", 1, dim=-2), pyro.plate("data", batch_size, dim=-1):
            return pyro.sample("z", self.posterior(batch))
