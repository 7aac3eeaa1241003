"""Watching the EBM prior during training: the energy gap, what sustains it, and its divergence; with
noise-contrastive estimation, the classifier that ``f_α`` is.

The quantity to watch is the gap ``E_q[f_α(z)] − E_{p_α}[f_α(z⁻)]`` between the energy network's mean
on posterior samples and on Langevin negatives. Without a penalty, maximum likelihood drives it to
zero at a stationary point: scaling ``f_α``'s output layer changes the objective
``E_q f − E_{p_α} f`` by the gap, so where its gradient vanishes, so does the gap.

With the magnitude penalty ``λ (E_q f² + E f(z⁻)²)`` the same scaling argument gives, at every
stationary point of the penalised objective,

.. math::

    E_q[f] − E_{p_α}[f] = 2λ \, (E_q[f^2] + E[f(z^-)^2]) \le 1/λ,

(the bound by Cauchy–Schwarz, ``gap² ≤ 2 (E_q f² + E f(z⁻)²)``). The penalty sustains this
*penalty gap*: a gap that has climbed to it is the penalty's equilibrium, not negatives that fall
behind. A gap well above it means the chains do not follow ``f_α``; without a penalty that is a
runaway (seen on PolyMNIST: from 1 to 10¹³ within a few hundred steps).

Noise-contrastive estimation draws no Langevin negatives, so it has no energy gap to watch. Its
``f_α`` is the logit of a classifier of posterior samples against draws of the base ``p0``; what shows
its progress is that classifier's logistic loss and accuracy, and ``log Z(α) = log E_{p0}[exp f_α]``,
which is 0 at the estimator's optimum ``f_α = log q − log p0`` (:class:`NoiseContrastMonitor`).
"""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor
from torch.nn.functional import softplus


class EBMDivergenceError(FloatingPointError):
    """Raised when the energy gap of the EBM prior diverges during training."""


class EnergyGapMonitor:
    """The last means of ``f_α`` and ``f_α²`` on positive (posterior) and negative (Langevin) samples.

    The monitor of maximum likelihood (``estimator = "ml"``).

    :class:`~pyro_mmebm.ebm.TiltedLaplace` records into it every time it draws negatives;
    values are kept as detached tensors so recording never forces a device synchronisation.
    """

    estimator = "ml"

    def __init__(self) -> None:
        self.positive_mean: Optional[Tensor] = None
        self.negative_mean: Optional[Tensor] = None
        self.positive_square_mean: Optional[Tensor] = None
        self.negative_square_mean: Optional[Tensor] = None

    def record(self, positive: Tensor, negative: Tensor) -> None:
        positive, negative = positive.detach(), negative.detach()
        self.positive_mean, self.negative_mean = positive.mean(), negative.mean()
        self.positive_square_mean, self.negative_square_mean = positive.square().mean(), negative.square().mean()

    @property
    def gap(self) -> Optional[float]:
        """``E_q[f] − E_{p_α}[f]`` at the last record, or ``None`` before any."""
        if self.positive_mean is None or self.negative_mean is None:
            return None
        return float(self.positive_mean - self.negative_mean)


class NoiseContrastMonitor:
    r"""The last step's view of ``f_α`` as the noise-contrastive classifier (``estimator = "nce"``).

    From ``f_α`` on the ``n`` scored posterior samples ``z`` and on the ``m`` draws ``z⁰ ~ p0``:

    - ``positive_mean``, ``base_mean``: the means of ``f_α(z)`` and ``f_α(z⁰)``;
    - ``loss``: the logistic loss ``mean softplus(−f_α(z)) + mean softplus(f_α(z⁰))`` that the estimator
      descends (``2 log 2 ≈ 1.386`` for a classifier that cannot tell the two apart);
    - ``accuracy``: the fraction of all ``n + m`` classified right (``f_α(z) > 0``, ``f_α(z⁰) < 0``);
    - ``log_normaliser``: ``log (1/m) Σ exp f_α(z⁰)``, the estimate of ``log Z(α)`` from the same draws
      (0 at the optimum, where the tilted prior is the aggregate posterior itself; biased low by
      Jensen's inequality for few draws or a peaked ``f_α``).

    Values are kept as detached tensors, so recording never forces a device synchronisation.
    """

    estimator = "nce"

    def __init__(self) -> None:
        self.positive_mean: Optional[Tensor] = None
        self.base_mean: Optional[Tensor] = None
        self.loss: Optional[Tensor] = None
        self.accuracy: Optional[Tensor] = None
        self.log_normaliser: Optional[Tensor] = None

    def record(self, positive: Tensor, base: Tensor) -> None:
        positive, base = positive.detach().flatten(), base.detach().flatten()
        self.positive_mean, self.base_mean = positive.mean(), base.mean()
        self.loss = softplus(-positive).mean() + softplus(base).mean()
        right = (positive > 0).sum() + (base < 0).sum()
        self.accuracy = right / (positive.numel() + base.numel())
        self.log_normaliser = torch.logsumexp(base, 0) - math.log(base.numel())

    def values(self) -> Optional[list[Tensor]]:
        """``[positive_mean, base_mean, loss, accuracy, log_normaliser]``, or ``None`` before any record."""
        if self.loss is None:
            return None
        return [self.positive_mean, self.base_mean, self.loss, self.accuracy, self.log_normaliser]


def penalty_gap(regularisation: float, positive_square_mean: float, negative_square_mean: float) -> float:
    """``2λ (E_q[f²] + E[f(z⁻)²])``: the energy gap at which the magnitude penalty ``λ`` balances the
    likelihood gradient (see the module docstring); at most ``1/λ`` at a stationary point."""
    return 2.0 * regularisation * (positive_square_mean + negative_square_mean)


def check_energy_gap(gap: float, max_gap: float, step: int, step_size: float) -> None:
    """Raise :class:`EBMDivergenceError`, naming the training step and the Langevin step size, when
    ``gap`` is non-finite or its magnitude above ``max_gap``."""
    if math.isfinite(gap) and abs(gap) <= max_gap:
        return
    raise EBMDivergenceError(
        f"EBM prior diverged at step {step}: energy gap E_q[f] - E_p[f] = {gap:.3g} exceeds "
        f"{max_gap:g} (Langevin step size {step_size}). The Langevin negatives no longer reach where the posterior is. "
        "Regularise f (prior regularisation, e.g. 0.1), use spectral normalisation, a smaller "
        "prior learning rate, more Langevin steps, or persistent chains."
    )
