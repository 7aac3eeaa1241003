"""pyro_mmebm: multimodal latent generative models with an energy-based prior, in Pyro."""

from pyro_mmebm import _torchvision  # noqa: F401  (first: makes torchvision importable everywhere)
from pyro_mmebm.distributions import StratifiedMixtureOfExperts
from pyro_mmebm.ebm import (
    EBMDivergenceError,
    EBMPriorConfig,
    EnergyBasedPrior,
    EnergyGapMonitor,
    EnergyMLP,
    LangevinConfig,
    LangevinDivergenceError,
    NoiseContrastMonitor,
    PersistentChains,
    TiltedLaplace,
    langevin_run,
    langevin_sample,
)
from pyro_mmebm.likelihoods import Likelihood
from pyro_mmebm.priors import PRIORS, LaplacePrior, NormalPrior, SoftmaxScaleLaplacePrior
from pyro_mmebm.training import TrainConfig, evaluate_loss, fit
from pyro_mmebm.two_stage import fit_prior_to_posterior

__version__ = "0.1.0"

__all__ = [
    "EBMDivergenceError",
    "EBMPriorConfig",
    "EnergyBasedPrior",
    "EnergyGapMonitor",
    "EnergyMLP",
    "LaplacePrior",
    "LangevinConfig",
    "LangevinDivergenceError",
    "Likelihood",
    "NoiseContrastMonitor",
    "NormalPrior",
    "PRIORS",
    "PersistentChains",
    "SoftmaxScaleLaplacePrior",
    "StratifiedMixtureOfExperts",
    "TiltedLaplace",
    "TrainConfig",
    "evaluate_loss",
    "fit",
    "fit_prior_to_posterior",
    "langevin_run",
    "langevin_sample",
]
