"""Watching the EBM prior during training: the energy gap, what sustains it, and its divergence.

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
"""

from __future__ import annotations

import math
from typing import Optional

from torch import Tensor


class EBMDivergenceError(FloatingPointError):
    """Raised when the energy gap of the EBM prior diverges during training."""


class EnergyGapMonitor:
    """The last means of ``f_α`` and ``f_α²`` on positive (posterior) and negative (Langevin) samples.

    :class:`~pyro_mmebm.ebm.TiltedLaplace` records into it every time it draws negatives;
    values are kept as detached tensors so recording never forces a device synchronisation.
    """

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
