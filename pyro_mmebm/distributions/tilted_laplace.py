"""The energy-based prior: an exponential tilt of a Laplace (or Normal) base distribution."""

from __future__ import annotations

from typing import Callable, Optional

import torch
from pyro.distributions import Laplace, Normal, TorchDistribution, constraints
from torch import Tensor
from torch.distributions.utils import broadcast_all

from pyro_mmebm.energy import energy_parameters_require_grad
from pyro_mmebm.langevin import PersistentChains, langevin_sample
from pyro_mmebm.monitoring import EnergyGapMonitor

BASES = {"laplace": Laplace, "normal": Normal}


class TiltedLaplace(TorchDistribution):
    r"""A base distribution exponentially tilted by an energy network, the prior of [1]:

    .. math::

        p_\alpha(z) = \frac{1}{Z(\alpha)} \exp(f_\alpha(z)) \, p_0(z),
        \qquad p_0(z) = \prod_{j=1}^d \mathrm{Laplace}(z_j; \mu_j, b_j),

    where ``f_α`` is the *negative* energy and ``Z(α) = E_{p0}[exp f_α(z)]`` is unknown.

    :meth:`log_prob` returns ``f_α(z) + log p0(z)``, which is ``log p_α(z) + log Z(α)``: the log density
    up to the constant ``log Z(α)``. Its gradient with respect to ``z`` is exact. Its gradient with
    respect to the parameters ``α`` of ``f_α`` (when they require grad and grad mode is on) is that of
    the true log density,

    .. math::

        \nabla_\alpha \log p_\alpha(z) = \nabla_\alpha f_\alpha(z)
            - \mathbb E_{p_\alpha}[\nabla_\alpha f_\alpha(z^-)],

    with the expectation estimated on ``z⁻`` drawn by short-run Langevin dynamics started from ``p0``
    (or from persistent chains). This is done by adding ``m - m.detach()`` (value zero) with
    ``m = −mean f_α(z⁻)``. With ``regularisation = λ > 0`` the α-gradient also descends
    ``λ (f_α(z)² + E[f_α(z⁻)²])``, which bounds the magnitude of ``f_α`` (its value is not added, and it
    does not touch ``z``). :meth:`sample` runs the Langevin sampler; there is no ``rsample``.

    [1] Yuan, Cui, Han, Zhu, Wu, Nijkamp et al. (2024) "Learning Multimodal Latent Generative Models
        with Energy-Based Prior". [2] Pang, Han, Nijkamp, Zhu, Wu (2020) "Learning Latent Space
        Energy-Based Prior Model".

    :param energy: ``f_α``, mapping ``(*batch, d)`` to ``(*batch,)`` (e.g. an :class:`~pyro_mmebm.energy.EnergyMLP`).
    :param Tensor loc: location of the base, shape ``(*batch, d)``.
    :param Tensor scale: scale of the base, shape ``(*batch, d)``.
    :param str base: ``"laplace"`` (default) or ``"normal"``.
    :param int num_steps: Langevin steps ``K`` for samples and negatives.
    :param float step_size: Langevin step size ``s``.
    :param float regularisation: ``λ`` of the magnitude penalty on ``f_α`` (gradient only).
    :param int num_negatives: number of negatives per :meth:`log_prob` call; default one per element
        of the value's batch.
    :param PersistentChains persistent_chains: when given, negatives continue these chains.
    :param EnergyGapMonitor monitor: when given, receives ``f_α``'s means on positives and negatives.
    """

    arg_constraints = {"loc": constraints.real, "scale": constraints.positive}
    support = constraints.real_vector
    has_rsample = False

    def __init__(
        self,
        energy: Callable[[Tensor], Tensor],
        loc: Tensor,
        scale: Tensor,
        *,
        base: str = "laplace",
        num_steps: int = 50,
        step_size: float = 0.3,
        regularisation: float = 0.0,
        num_negatives: Optional[int] = None,
        persistent_chains: Optional[PersistentChains] = None,
        monitor: Optional[EnergyGapMonitor] = None,
        validate_args: Optional[bool] = None,
    ) -> None:
        if base not in BASES:
            raise ValueError(f"unknown base distribution {base!r}; choose one of {sorted(BASES)}")
        if num_steps < 0 or step_size <= 0 or regularisation < 0:
            raise ValueError(
                f"need num_steps >= 0, step_size > 0 and regularisation >= 0, got {num_steps}, "
                f"{step_size}, {regularisation}"
            )
        self.loc, self.scale = broadcast_all(loc, scale)
        if self.loc.dim() < 1:
            raise ValueError("loc and scale need a last (event) dimension of size d")
        self.energy = energy
        self.base = base
        self.num_steps = num_steps
        self.step_size = step_size
        self.regularisation = regularisation
        self.num_negatives = num_negatives
        self.persistent_chains = persistent_chains
        self.monitor = monitor
        super().__init__(self.loc.shape[:-1], self.loc.shape[-1:], validate_args=validate_args)

    def expand(self, batch_shape, _instance=None) -> "TiltedLaplace":
        new = self._get_checked_instance(TiltedLaplace, _instance)
        batch_shape = torch.Size(batch_shape)
        new.loc = self.loc.expand(batch_shape + self.event_shape)
        new.scale = self.scale.expand(batch_shape + self.event_shape)
        for name in ("energy", "base", "num_steps", "step_size", "regularisation", "num_negatives",
                     "persistent_chains", "monitor"):
            setattr(new, name, getattr(self, name))
        super(TiltedLaplace, new).__init__(batch_shape, self.event_shape, validate_args=False)
        new._validate_args = self._validate_args
        return new

    @property
    def base_dist(self) -> TorchDistribution:
        """The base ``p0`` with the same batch and event shape."""
        return BASES[self.base](self.loc, self.scale).to_event(1)

    def unnormalized_log_prob(self, value: Tensor) -> Tensor:
        """``f_α(z) + log p0(z)``, shape ``value.shape[:-1]``.

        Unvalidated: inside a Langevin chain a diverging state must reach the sampler's own check,
        which names the step size, rather than fail the base's support check.
        """
        base = BASES[self.base](self.loc, self.scale, validate_args=False).to_event(1)
        return self.energy(value) + base.log_prob(value)

    def sample(self, sample_shape=torch.Size()) -> Tensor:
        """Langevin samples, started from ``p0``, shape ``sample_shape + batch_shape + event_shape``."""
        init = self.base_dist.sample(sample_shape)
        return langevin_sample(self.unnormalized_log_prob, init, self.num_steps, self.step_size)

    def negative_samples(self, num_samples: int) -> Tensor:
        """``num_samples`` Langevin negatives ``z⁻`` of shape ``(num_samples, d)``.

        They target the prior of the first batch element: a prior's base is shared by the batch.
        """
        d = self.event_shape[0]
        base = BASES[self.base](self.loc.reshape(-1, d)[0], self.scale.reshape(-1, d)[0], validate_args=False)
        fresh = base.to_event(1).sample((num_samples,))
        init = fresh if self.persistent_chains is None else self.persistent_chains.initial_states(fresh)
        negatives = langevin_sample(
            lambda z: self.energy(z) + base.log_prob(z).sum(-1), init, self.num_steps, self.step_size
        )
        if self.persistent_chains is not None:
            self.persistent_chains.update(negatives)
        return negatives

    def log_prob(self, value: Tensor) -> Tensor:
        if self._validate_args:
            self._validate_sample(value)
        positive = self.energy(value)
        log_prob = positive + self.base_dist.log_prob(value)
        if not (torch.is_grad_enabled() and energy_parameters_require_grad(self.energy)):
            return log_prob
        num_negatives = self.num_negatives or max(1, value.shape[:-1].numel())
        negative = self.energy(self.negative_samples(num_negatives))
        if self.monitor is not None:
            self.monitor.record(positive, negative)
        surrogate = -negative.mean()
        if self.regularisation > 0:
            surrogate = surrogate - self.regularisation * (
                self.energy(value.detach()).pow(2) + negative.pow(2).mean()
            )
        return log_prob + (surrogate - surrogate.detach())
