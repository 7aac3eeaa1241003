"""Distributions of the library, written as Pyro ``TorchDistribution`` subclasses.

The EBM prior's distribution, :class:`~pyro_mmebm.ebm.TiltedLaplace`, lives with the rest of the
EBM prior in :mod:`pyro_mmebm.ebm`.
"""

from pyro_mmebm.distributions.families import LOCATION_SCALE_FAMILIES
from pyro_mmebm.distributions.stratified_mixture import StratifiedMixtureOfExperts

__all__ = ["LOCATION_SCALE_FAMILIES", "StratifiedMixtureOfExperts"]
