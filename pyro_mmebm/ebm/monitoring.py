"""Watching the EBM prior during training: the energy gap and its divergence.

The quantity to watch is the gap ``E_q[f_α(z)] − E_{p_α}[f_α(z⁻)]`` between the energy network's mean
on posterior samples and on Langevin negatives. Maximum likelihood drives it towards zero; when the
short-run chains cannot reach the regions the encoder is pulled into, ``f_α`` grows there without bound
and the gap runs away (seen on PolyMNIST: from 1 to 10¹³ within a few hundred steps).
"""

from __future__ import annotations

import math
from typing import Optional

from torch import Tensor


class EBMDivergenceError(FloatingPointError):
    """Raised when the energy gap of the EBM prior diverges during training."""


class EnergyGapMonitor:
    """The last means of ``f_α`` on positive (posterior) and negative (Langevin) samples.

    :class:`~pyro_mmebm.ebm.TiltedLaplace` records into it every time it draws negatives;
    values are kept as detached tensors so recording never forces a device synchronisation.
    """

    def __init__(self) -> None:
        self.positive_mean: Optional[Tensor] = None
        self.negative_mean: Optional[Tensor] = None

    def record(self, positive: Tensor, negative: Tensor) -> None:
        self.positive_mean = positive.detach().mean()
        self.negative_mean = negative.detach().mean()

    @property
    def gap(self) -> Optional[float]:
        """``E_q[f] − E_{p_α}[f]`` at the last record, or ``None`` before any."""
        if self.positive_mean is None or self.negative_mean is None:
            return None
        return float(self.positive_mean - self.negative_mean)


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
