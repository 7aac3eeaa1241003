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
``f_α`` is the logit of a classifier of posterior samples against draws of a noise (the base ``p0``); what shows
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

    From ``f_α`` and the classifier's logit ``h`` on the ``n`` scored posterior samples ``z`` and on the
    ``m`` draws ``z⁰`` of the noise ``ν`` (``h = f_α + log p0 − log ν``; ``h = f_α`` when ``ν = p0``):

    - ``positive_mean``, ``noise_mean``: the means of ``f_α(z)`` and ``f_α(z⁰)``;
    - ``loss``: the logistic loss ``mean softplus(−h(z)) + mean softplus(h(z⁰))`` that the estimator
      descends (``2 log 2 ≈ 1.386`` for a classifier that cannot tell the two apart);
    - ``accuracy``: the fraction of all ``n + m`` classified right (``h(z) > 0``, ``h(z⁰) < 0``);
    - ``log_normaliser``: ``log (1/m) Σ exp h(z⁰)``, the importance-sampling estimate of
      ``log Z(α) = log E_ν[exp(f_α) p0 / ν]`` from the same draws (0 at the optimum, where the tilted
      prior is the aggregate posterior itself; biased low by Jensen's inequality for few draws or a
      peaked ``f_α``).

    Values are kept as detached tensors, so recording never forces a device synchronisation.
    """

    estimator = "nce"

    def __init__(self) -> None:
        self.positive_mean: Optional[Tensor] = None
        self.noise_mean: Optional[Tensor] = None
        self.loss: Optional[Tensor] = None
        self.accuracy: Optional[Tensor] = None
        self.log_normaliser: Optional[Tensor] = None

    def record(
        self, positive: Tensor, noise: Tensor, positive_logit: Optional[Tensor] = None,
        noise_logit: Optional[Tensor] = None,
    ) -> None:
        """From ``f_α`` on the scored latents and the noise's draws, and their logits (default ``f_α``)."""
        self.positive_mean, self.noise_mean = positive.detach().mean(), noise.detach().mean()
        positive = (positive if positive_logit is None else positive_logit).detach().flatten()
        noise = (noise if noise_logit is None else noise_logit).detach().flatten()
        self.loss = softplus(-positive).mean() + softplus(noise).mean()
        right = (positive > 0).sum() + (noise < 0).sum()
        self.accuracy = right / (positive.numel() + noise.numel())
        self.log_normaliser = torch.logsumexp(noise, 0) - math.log(noise.numel())

    def values(self) -> Optional[list[Tensor]]:
        """``[positive_mean, noise_mean, loss, accuracy, log_normaliser]``, or ``None`` before any record."""
        if self.loss is None:
            return None
        return [self.positive_mean, self.noise_mean, self.loss, self.accuracy, self.log_normaliser]


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
