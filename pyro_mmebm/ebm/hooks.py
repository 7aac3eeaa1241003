"""What training does for the EBM prior, as hooks of the epoch loop (:class:`~pyro_mmebm.contracts.TrainingHook`):
a warm-up with the base prior, and the prior watched at every step: the energy gap with maximum likelihood,
the classifier with noise-contrastive estimation (:func:`prior_watch` picks)."""

from __future__ import annotations

import math

from typing import TYPE_CHECKING, Union

from torch import Tensor, nn

from pyro_mmebm.contracts import TrainingHook
from pyro_mmebm.ebm.monitoring import EBMDivergenceError, check_energy_gap, penalty_gap
from pyro_mmebm.ebm.prior import EnergyBasedPrior

if TYPE_CHECKING:
    from pyro_mmebm.training import TrainConfig


class BasePriorWarmup(TrainingHook):
    """The prior's base ``p0`` for the first ``epochs`` epochs (``f_α`` unused and untrained), then the
    tilted prior: the encoders learn the data before ``f_α`` starts to pull them. The prior is tilted
    when training ends, so that generation uses the EBM."""

    def __init__(self, prior: EnergyBasedPrior, epochs: int) -> None:
        self.prior = prior
        self.epochs = epochs

    def start_epoch(self, epoch: int) -> None:
        self.prior.tilted = epoch >= self.epochs

    def end_training(self) -> None:
        self.prior.tilted = True


class EnergyGapWatch(TrainingHook):
    """The energy gap ``E_q[f] − E_{p_α}[f]`` at every step, from the means of ``f`` that the prior's
    :class:`~pyro_mmebm.ebm.EnergyGapMonitor` holds, averaged over all processes: checked against
    ``max_gap`` (:func:`~pyro_mmebm.ebm.monitoring.check_energy_gap`; every process checks the same
    gap, so all stop together), logged (``ebm/energy_gap``, ``ebm/f_positive``, ``ebm/f_negative``,
    and ``ebm/penalty_gap``, the gap the magnitude penalty sustains at equilibrium,
    :func:`~pyro_mmebm.ebm.monitoring.penalty_gap`) and summarised per epoch (``energy_gap`` its
    mean, ``energy_gap_last``, ``f_positive``, ``f_negative``, ``penalty_gap``)."""

    def __init__(self, prior: EnergyBasedPrior, max_gap: float) -> None:
        self.monitor = prior.monitor
        self.regularisation = prior.config.regularisation
        self.step_size = prior.config.langevin.step_size
        self.max_gap = max_gap
        self.gaps: list[float] = []
        self.energies: list[tuple[float, float]] = []
        self.penalty_gaps: list[float] = []

    def start_epoch(self, epoch: int) -> None:
        self.gaps, self.energies, self.penalty_gaps = [], [], []

    def step_values(self) -> list[Tensor]:
        monitor = self.monitor
        if monitor.gap is None:  # no negatives drawn yet (a warm-up)
            return []
        return [monitor.positive_mean, monitor.negative_mean, monitor.positive_square_mean, monitor.negative_square_mean]

    def end_step(self, values: list[float], step: int) -> dict[str, float]:
        if not values:
            return {}
        positive, negative, positive_square, negative_square = values
        gap = positive - negative
        check_energy_gap(gap, self.max_gap, step, self.step_size)
        sustained = penalty_gap(self.regularisation, positive_square, negative_square)
        self.gaps.append(gap)
        self.energies.append((positive, negative))
        self.penalty_gaps.append(sustained)
        return {"ebm/energy_gap": gap, "ebm/f_positive": positive, "ebm/f_negative": negative, "ebm/penalty_gap": sustained}

    def end_epoch(self) -> dict[str, float]:
        if not self.gaps:
            return {}
        return {
            "energy_gap": sum(self.gaps) / len(self.gaps),
            "energy_gap_last": self.gaps[-1],
            "f_positive": sum(p for p, _ in self.energies) / len(self.energies),
            "f_negative": sum(n for _, n in self.energies) / len(self.energies),
            "penalty_gap": sum(self.penalty_gaps) / len(self.penalty_gaps),
        }


class NoiseContrastWatch(TrainingHook):
    """``f_α`` as the noise-contrastive classifier at every step, from the prior's
    :class:`~pyro_mmebm.ebm.NoiseContrastMonitor`, averaged over all processes: logged
    (``ebm/nce_loss``, ``ebm/nce_accuracy``, ``ebm/f_positive``, ``ebm/f_noise`` and
    ``ebm/log_normaliser``, the estimate of ``log Z(α)``, 0 at the optimum) and summarised per epoch
    by their means (``nce_loss``, ``nce_accuracy``, ``f_positive``, ``f_noise``, ``log_normaliser``).

    The logistic loss is bounded below, so nothing here can run away as the maximum-likelihood gap
    can; a non-finite value stops training with :class:`~pyro_mmebm.ebm.EBMDivergenceError`.
    """

    NAMES = ("f_positive", "f_noise", "nce_loss", "nce_accuracy", "log_normaliser")

    def __init__(self, prior: EnergyBasedPrior) -> None:
        self.monitor = prior.monitor
        self.records: list[list[float]] = []

    def start_epoch(self, epoch: int) -> None:
        self.records = []

    def step_values(self) -> list[Tensor]:
        return self.monitor.values() or []  # none before the first record (a warm-up)

    def end_step(self, values: list[float], step: int) -> dict[str, float]:
        if not values:
            return {}
        if not all(math.isfinite(value) for value in values):
            raise EBMDivergenceError(
                f"EBM prior diverged at step {step}: the noise-contrastive watch of f_α "
                f"({dict(zip(self.NAMES, values))}) is not finite"
            )
        self.records.append(values)
        return {f"ebm/{name}": value for name, value in zip(self.NAMES, values)}

    def end_epoch(self) -> dict[str, float]:
        if not self.records:
            return {}
        return {name: sum(column) / len(column) for name, column in zip(self.NAMES, zip(*self.records))}


def prior_watch(prior: EnergyBasedPrior, max_gap: float) -> Union[EnergyGapWatch, NoiseContrastWatch]:
    """The watch of ``prior``'s estimator: the energy gap (stopping beyond ``max_gap``) with maximum
    likelihood, the classifier with noise-contrastive estimation."""
    if prior.config.estimator == "nce":
        return NoiseContrastWatch(prior)
    return EnergyGapWatch(prior, max_gap)


def prior_hooks(prior: nn.Module, config: TrainConfig) -> list[TrainingHook]:
    """The hooks that joint training runs for ``prior``: for an :class:`EnergyBasedPrior`, its warm-up
    (``config.prior_warmup_epochs``) and its estimator's watch (:func:`prior_watch`, with
    ``config.max_energy_gap``); none for another prior."""
    if not isinstance(prior, EnergyBasedPrior):
        return []
    return [BasePriorWarmup(prior, config.prior_warmup_epochs), prior_watch(prior, config.max_energy_gap)]


__all__ = ["BasePriorWarmup", "EnergyGapWatch", "NoiseContrastWatch", "prior_hooks", "prior_watch"]
