"""Distributions of the library, written as Pyro ``TorchDistribution`` subclasses."""

from pyro_mmebm.distributions.stratified_mixture import StratifiedMixtureOfExperts
from pyro_mmebm.distributions.tilted_laplace import TiltedLaplace

__all__ = ["StratifiedMixtureOfExperts", "TiltedLaplace"]
