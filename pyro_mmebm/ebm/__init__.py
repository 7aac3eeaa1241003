"""The energy-based prior ``p_α(z) ∝ exp(f_α(z)) p0(z)`` and everything it is made of.

- :mod:`~pyro_mmebm.ebm.energy`: the energy network ``f_α`` (:class:`EnergyMLP`), and its bound above
  (:class:`BoundedEnergy`) that makes the prior normalisable;
- :mod:`~pyro_mmebm.ebm.langevin`: the short-run Langevin sampler, its settings and persistent chains;
- :mod:`~pyro_mmebm.ebm.tilted_laplace`: the prior as a Pyro distribution (:class:`TiltedLaplace`);
- :mod:`~pyro_mmebm.ebm.noise`: what noise-contrastive estimation classifies against when not ``p0``;
- :mod:`~pyro_mmebm.ebm.monitoring`: what is recorded of ``f_α`` while training (the energy gap; with
  noise-contrastive estimation, the classifier), and the gap's divergence;
- :mod:`~pyro_mmebm.ebm.hooks`: what training does for the prior (its warm-up, the prior watched at
  every step), as hooks of the epoch loop;
- :mod:`~pyro_mmebm.ebm.prior`: the prior as a module (:class:`EnergyBasedPrior`), as a model uses it,
  and its settings (:class:`EBMPriorConfig`);
- :mod:`~pyro_mmebm.ebm.ais`: its normaliser ``log Z(α)`` by annealed importance sampling;
- :mod:`~pyro_mmebm.ebm.tails`: whether it has one: how fast ``f_α`` grows far out against ``p0``'s decay.
"""

from pyro_mmebm.ebm.ais import AISResult, annealed_importance_sampling, sigmoid_schedule
from pyro_mmebm.ebm.energy import ACTIVATIONS, BoundedEnergy, EnergyMLP
from pyro_mmebm.ebm.hooks import BasePriorWarmup, EnergyGapWatch, NoiseContrastWatch, TailWatch, prior_hooks, prior_watch
from pyro_mmebm.ebm.langevin import (
    LangevinConfig,
    LangevinDivergenceError,
    LangevinRun,
    PersistentChains,
    langevin_run,
    langevin_sample,
)
from pyro_mmebm.ebm.monitoring import (
    EBMDivergenceError,
    EnergyGapMonitor,
    NoiseContrastMonitor,
    check_energy_gap,
    penalty_gap,
)
from pyro_mmebm.ebm.noise import NCE_NOISES, BaseAndFittedGaussian
from pyro_mmebm.ebm.prior import EBMPriorConfig, EnergyBasedPrior
from pyro_mmebm.ebm.tails import TailGrowth, tail_growth
from pyro_mmebm.ebm.tilted_laplace import MAX_BASE_SCALES, TiltedLaplace

__all__ = [
    "ACTIVATIONS",
    "AISResult",
    "BaseAndFittedGaussian",
    "BasePriorWarmup",
    "BoundedEnergy",
    "EBMDivergenceError",
    "EBMPriorConfig",
    "EnergyBasedPrior",
    "EnergyGapMonitor",
    "EnergyGapWatch",
    "EnergyMLP",
    "LangevinConfig",
    "LangevinDivergenceError",
    "LangevinRun",
    "MAX_BASE_SCALES",
    "NCE_NOISES",
    "NoiseContrastMonitor",
    "NoiseContrastWatch",
    "PersistentChains",
    "TailGrowth",
    "TailWatch",
    "TiltedLaplace",
    "annealed_importance_sampling",
    "check_energy_gap",
    "langevin_run",
    "langevin_sample",
    "penalty_gap",
    "prior_hooks",
    "prior_watch",
    "sigmoid_schedule",
    "tail_growth",
]
