"""The noise that noise-contrastive estimation classifies posterior draws against, when it is not ``p0``.

NCE learns a log density ratio where the two classes' draws meet. Against the base ``p0`` alone, an
aggregate posterior ``q`` that lies many nats from ``p0`` is met by few of its draws, and the ratio is
learned poorly where ``q`` has its mass (the "density chasm" of [1]). Mixing into the noise a Gaussian
moment-matched to ``q`` puts half the noise where ``q`` is, while the other half keeps ``f_α`` learned
on ``p0``'s support, where generation's chains start. Since the mixture's density is known, the
classifier's logit ``f_α + log p0 − log ν`` has the same optimum ``f_α = log q − log p0`` as before.

[1] Rhodes, Xu, Gutmann (2020) "Telescoping Density-Ratio Estimation".
"""

from __future__ import annotations

import math

import torch
from pyro.distributions import MultivariateNormal, TorchDistribution
from torch import Tensor, nn

NCE_NOISES = ("base", "base+gaussian")
"""What NCE classifies posterior draws against: the base ``p0``, or half ``p0`` and half a Gaussian
fitted to the posterior draws (:class:`BaseAndFittedGaussian`)."""


class BaseAndFittedGaussian(nn.Module):
    r"""The noise ``ν(z) = ½ p0(z) + ½ N(z; m, C)``, with ``(m, C)`` running means of the first two
    moments of the latents it is shown (:meth:`update`):

    .. math::

        m \leftarrow \rho\, m + (1 - \rho)\, \bar z, \qquad
        S \leftarrow \rho\, S + (1 - \rho)\, \overline{z z^\top}, \qquad C = S - m m^\top + \epsilon I.

    Before the first update the Gaussian matches the standard Laplace's moments (mean 0, variance 2).
    The moments are buffers, so a checkpoint saves them and a resumed run continues the same noise.
    Under data parallelism each process keeps its own moments, from its own shard's draws, and so its
    own noise. The estimate stays consistent: each process's loss is a logistic loss against a noise
    of known density, minimised by the same ``f_α = log q − log p0``, and so is their sum. (Synchronising
    the moments would put a collective call inside ``log_prob``, which deadlocks the moment one
    process computes a training loss alone.)

    :param latent_dim: ``d``.
    :param decay: ``ρ`` of the running means (0.99: about the last 100 updates).
    :param jitter: ``ε``, added to the covariance's diagonal so that it stays positive definite.
    """

    def __init__(self, latent_dim: int, decay: float = 0.99, jitter: float = 1e-4) -> None:
        super().__init__()
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"need decay in [0, 1), got {decay}")
        self.decay, self.jitter = decay, jitter
        self.register_buffer("mean", torch.zeros(latent_dim))
        self.register_buffer("second_moment", 2.0 * torch.eye(latent_dim))

    @torch.no_grad()
    def update(self, z: Tensor) -> None:
        """Move the running moments towards those of the latents ``z`` of shape ``(..., d)``."""
        z = z.detach().reshape(-1, self.mean.shape[0]).to(self.mean.dtype)
        self.mean.lerp_(z.mean(0), 1.0 - self.decay)
        self.second_moment.lerp_(z.T @ z / len(z), 1.0 - self.decay)

    def gaussian(self) -> TorchDistribution:
        """``N(m, C)``, the fitted half of the noise."""
        covariance = self.second_moment - torch.outer(self.mean, self.mean)
        covariance = covariance + self.jitter * torch.eye(len(self.mean), device=self.mean.device)
        return MultivariateNormal(self.mean, covariance_matrix=covariance)

    def sample(self, base: TorchDistribution, num_samples: int) -> Tensor:
        """``num_samples`` draws of ``ν``, shape ``(num_samples, d)``: each from ``base`` (``p0``) or the
        Gaussian with probability ½."""
        from_base = base.sample((num_samples,))
        from_gaussian = self.gaussian().sample((num_samples,))
        pick = torch.rand(num_samples, 1, device=from_base.device) < 0.5
        return torch.where(pick, from_base, from_gaussian)

    def log_ratio_to_base(self, base: TorchDistribution, z: Tensor) -> Tensor:
        """``log p0(z) − log ν(z)``, shape ``z.shape[:-1]``: what turns ``f_α`` into the classifier's logit."""
        log_base = base.log_prob(z)
        log_noise = torch.logaddexp(log_base, self.gaussian().log_prob(z)) - math.log(2.0)
        return log_base - log_noise


__all__ = ["NCE_NOISES", "BaseAndFittedGaussian"]
