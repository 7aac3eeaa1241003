"""The mixture-of-experts posterior of MMVAE, sampled stratified: one draw per expert."""

from __future__ import annotations

import math
from typing import Optional

import torch
from pyro.distributions import TorchDistribution, constraints
from torch import Tensor


class StratifiedMixtureOfExperts(TorchDistribution):
    r"""The uniform mixture of ``m`` experts, drawn one sample per expert.

    .. math::

        q(z \mid X) = \frac1m \sum_{j=1}^m q_j(z \mid x_j).

    ``experts`` has batch shape ``(m, *batch)`` and event shape ``(d,)``: dimension ``-len(batch)-1``
    of the batch indexes the expert. This distribution keeps that dimension as a batch dimension
    whose entries are the *strata*: :meth:`rsample` draws ``z_k ~ q_k`` (reparameterised) for each
    ``k``, and :meth:`log_prob` scores every value under the whole mixture,
    ``log q(z) = logsumexp_j log q_j(z) − log m``. Averaging ``log p(X, z_k) − log q(z_k | X)`` over the
    strata ``k`` is then the stratified estimator of MMVAE's objective [1, Eqs. 8–9]

    .. math::

        \frac1m \sum_{k=1}^m \mathbb E_{q_k(z \mid x_k)}
            \left[\log \frac{p(X, z)}{q(z \mid X)}\right].

    A value without the expert dimension (shape ``(*batch, d)``) is scored under the mixture too.

    [1] Shi, Siddharth, Paige, Torr (2019) "Variational Mixture-of-Experts Autoencoders for
        Multi-Modal Deep Generative Models".

    :param experts: the experts ``q_j``, batch shape ``(m, *batch)``, event shape ``(d,)``.
    """

    arg_constraints: dict = {}
    support = constraints.real_vector

    def __init__(self, experts: TorchDistribution, *, validate_args: Optional[bool] = None) -> None:
        if len(experts.event_shape) != 1 or len(experts.batch_shape) < 1:
            raise ValueError(
                "experts need event shape (d,) and batch shape (m, *batch), got "
                f"batch {tuple(experts.batch_shape)}, event {tuple(experts.event_shape)}"
            )
        self.experts = experts
        self.num_experts = experts.batch_shape[0]
        self._inner_batch_dims = len(experts.batch_shape) - 1
        super().__init__(experts.batch_shape, experts.event_shape, validate_args=validate_args)

    @property
    def has_rsample(self) -> bool:
        return self.experts.has_rsample

    def expand(self, batch_shape, _instance=None) -> "StratifiedMixtureOfExperts":
        new = self._get_checked_instance(StratifiedMixtureOfExperts, _instance)
        new.experts = self.experts
        new.num_experts = self.num_experts
        new._inner_batch_dims = self._inner_batch_dims
        super(StratifiedMixtureOfExperts, new).__init__(
            torch.Size(batch_shape), self.event_shape, validate_args=False
        )
        new._validate_args = self._validate_args
        return new

    def rsample(self, sample_shape=torch.Size()) -> Tensor:
        """``z_k ~ q_k`` for every stratum ``k``: shape ``sample_shape + batch_shape + (d,)``."""
        return self.experts.expand(self.batch_shape).rsample(sample_shape)

    def sample(self, sample_shape=torch.Size()) -> Tensor:
        with torch.no_grad():
            return self.rsample(sample_shape)

    def log_prob(self, value: Tensor) -> Tensor:
        if self._validate_args:
            self._validate_sample(value)
        # Insert a dimension for the expert j being evaluated, right of the stratum dimension k.
        per_expert = self.experts.log_prob(value.unsqueeze(-self._inner_batch_dims - 2))
        return per_expert.logsumexp(-self._inner_batch_dims - 1) - math.log(self.num_experts)

    def _validate_sample(self, value: Tensor) -> None:
        # Values with or without the stratum dimension are both valid points of the mixture.
        if value.shape[-1:] != self.event_shape:
            raise ValueError(
                f"value of shape {tuple(value.shape)} does not have the event shape {tuple(self.event_shape)}"
            )
        if not torch.isfinite(value).all():
            raise ValueError("value contains NaN or infinite entries")
