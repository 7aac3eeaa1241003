"""Pyro guides (amortised posteriors) of multimodal data: read them, copy them, edit them.

Every guide meets :class:`pyro_mmebm.contracts.ExpertGuide`: ``posterior(batch)``, the distribution
of the shared ``z`` given whichever non-empty subset of the modalities ``batch`` holds (cross
generation from missing modalities), ``experts(batch)``, the per-modality experts it combines, and
``num_draws``, the latent draws per example it makes when called as Pyro's ``guide``. The
private-latent guide meets :class:`~pyro_mmebm.contracts.GuideWithPrivateLatents` as well. Which guide
a run uses, and its encoders' scale map, are its :class:`GuideConfig` (:mod:`guides.config`).
"""

from guides.config import ENCODER_SCALES, GUIDES, GuideConfig
from guides.mixture_of_experts import MixtureOfExpertsGuide
from guides.mixture_of_products import MixtureOfProductsOfExpertsGuide
from guides.private_latents import PrivateLatentGuide
from guides.product_of_experts import ProductOfExpertsGuide, product_of_experts

__all__ = [
    "ENCODER_SCALES",
    "GUIDES",
    "GuideConfig",
    "MixtureOfExpertsGuide",
    "MixtureOfProductsOfExpertsGuide",
    "PrivateLatentGuide",
    "ProductOfExpertsGuide",
    "product_of_experts",
]
