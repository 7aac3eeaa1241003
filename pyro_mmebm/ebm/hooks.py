"""What training does for the EBM prior, as hooks of the epoch loop (:class:`~pyro_mmebm.contracts.TrainingHook`):
a warm-up with the base prior, the prior watched at every step (the energy gap with maximum likelihood,
the classifier with noise-contrastive estimation: :func:`prior_watch` picks), and whether it is still
normalisable at the end of each epoch (:class:`TailWatch`)."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Union

import torch
from torch import Tensor, nn

from pyro_mmebm.contracts import TrainingHook
from pyro_mmebm.ebm.langevin import LangevinDivergenceError
from pyro_mmebm.ebm.monitoring import EBMDivergenceError, check_energy_gap, penalty_gap
from pyro_mmebm.ebm.prior import EnergyBasedPrior
from pyro_mmebm.ebm.tails import tail_growth

if TYPE_CHECKING:
    from pyro_mmebm.training import TrainConfig

GENERATION_GAP_STEPS = 100
"""The steps at the end of an epoch whose posterior draws :class:`NoiseContrastWatch` compares with
generation's samples (``f_α`` moves during an epoch; its last steps are the prior that generates)."""

GENERATION_GAP_SEED = 0
"""The seed of the chains :class:`NoiseContrastWatch` runs at the end of each epoch: the same starts
every epoch, so that the gap's changes are the prior's."""


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

    Training draws no Langevin chain, so at the end of each epoch the watch runs generation's own
    sampler (``prior().sample``) on ``generation_samples`` chains, from a fixed seed and without
    touching the training's random streams, and records the mean of ``f`` on them (``f_generated``)
    and ``generation_gap``, the mean of ``f`` on the posterior draws of the epoch's last
    :data:`GENERATION_GAP_STEPS` steps minus ``f_generated``: how far the samples that generation
    would decode are from the posterior draws ``f_α`` was fitted to. Chains that leave the base (a
    :class:`~pyro_mmebm.ebm.LangevinDivergenceError`) are recorded as ``generation_diverged = 1``
    and training goes on.
    """

    NAMES = ("f_positive", "f_noise", "nce_loss", "nce_accuracy", "log_normaliser")

    def __init__(self, prior: EnergyBasedPrior, generation_samples: int = 500) -> None:
        self.prior = prior
        self.monitor = prior.monitor
        self.generation_samples = generation_samples
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
        summary = {name: sum(column) / len(column) for name, column in zip(self.NAMES, zip(*self.records))}
        recent = [values[0] for values in self.records[-GENERATION_GAP_STEPS:]]  # f on the posterior draws
        return {**summary, **self.generation_gap(sum(recent) / len(recent))}

    def generation_gap(self, f_positive: float) -> dict[str, float]:
        """``f_generated`` and ``generation_gap`` (see the class), or ``generation_diverged``."""
        device = self.prior.loc.device
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(GENERATION_GAP_SEED)
            try:
                samples = self.prior().sample((self.generation_samples,))
            except LangevinDivergenceError:
                return {"generation_diverged": 1.0}
        with torch.no_grad():
            f_generated = float(self.prior.energy(samples).mean())
        return {"f_generated": f_generated, "generation_gap": f_positive - f_generated}


class TailWatch(TrainingHook):
    """At the end of each epoch with the prior tilted, ``tail_excess``: how much faster ``f_α`` grows far
    out than ``log p0`` falls, along the worst direction found (:func:`~pyro_mmebm.ebm.tail_growth`;
    positive: ``exp(f_α) p0`` is not normalisable). A few seconds an epoch, on its own random stream."""

    def __init__(self, prior: EnergyBasedPrior) -> None:
        self.prior = prior

    def end_epoch(self) -> dict[str, float]:
        if not self.prior.tilted:
            return {}
        return {"tail_excess": tail_growth(self.prior()).excess}


def prior_watch(prior: EnergyBasedPrior, max_gap: float) -> Union[EnergyGapWatch, NoiseContrastWatch]:
    """The watch of ``prior``'s estimator: the energy gap (stopping beyond ``max_gap``) with maximum
    likelihood, the classifier with noise-contrastive estimation."""
    if prior.config.estimator == "nce":
        return NoiseContrastWatch(prior)
    return EnergyGapWatch(prior, max_gap)


def prior_hooks(prior: nn.Module, config: TrainConfig) -> list[TrainingHook]:
    """The hooks that joint training runs for ``prior``: for an :class:`EnergyBasedPrior`, its warm-up
    (``config.prior_warmup_epochs``), its estimator's watch (:func:`prior_watch`, with
    ``config.max_energy_gap``) and its tails' (:class:`TailWatch`); none for another prior."""
    if not isinstance(prior, EnergyBasedPrior):
        return []
    return [BasePriorWarmup(prior, config.prior_warmup_epochs), prior_watch(prior, config.max_energy_gap), TailWatch(prior)]


__all__ = ["BasePriorWarmup", "EnergyGapWatch", "NoiseContrastWatch", "TailWatch", "prior_hooks", "prior_watch"]
