"""Choosing the guide: the guides of the shared latent by name, and the settings that pick and build one."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

from torch import nn

from guides.mixture_of_experts import MixtureOfExpertsGuide
from guides.mixture_of_products import MixtureOfProductsOfExpertsGuide
from guides.private_latents import PrivateLatentGuide
from guides.product_of_experts import ProductOfExpertsGuide
from pyro_mmebm.settings import at_least, check_settings, setting

GUIDES = {
    "moe": MixtureOfExpertsGuide,
    "poe": ProductOfExpertsGuide,
    "mopoe": MixtureOfProductsOfExpertsGuide,
}
"""Guides of the shared latent by name, each built as ``GUIDES[name](encoders, latent_dim)``."""

ENCODER_SCALES = {"moe": "softmax", "poe": "softplus", "mopoe": "softplus"}
"""The scale map of each guide's encoders (a key of :data:`pyro_mmebm.networks.SCALE_ACTIVATIONS`):
MMVAE's softmax for the Laplace experts of the mixture; a softplus for the Gaussian experts of
products (an ``exp`` head can overflow in a product of many experts)."""


@dataclass(frozen=True)
class GuideConfig:
    """The settings of the guide: which guide of the shared latent ``z`` (a key of :data:`GUIDES`), and
    a private latent ``w_i`` per modality beside it (MMVAE+'s, with the mixture of experts).

    :raises ValueError: for private latents with another guide than the mixture of experts.
    """

    name: str = setting("moe", "guide of the shared latent: moe (MMVAE), poe (MVAE), mopoe (MoPoE)",
                        choices=GUIDES, name="guide")
    private_latent_dim: int = setting(0, "private latent per modality (0: none)", check=at_least(0))

    def __post_init__(self) -> None:
        check_settings(self)
        if self.private_latent_dim and self.name != "moe":
            raise ValueError("private latents are implemented with the mixture-of-experts guide only (--guide moe)")

    @property
    def encoder_scale(self) -> str:
        """How the guide's encoders map their output to a scale (:data:`ENCODER_SCALES`)."""
        return ENCODER_SCALES[self.name]

    def build(self, encoders: Mapping[str, nn.Module], latent_dim: int) -> nn.Module:
        """The guide of ``z`` (dimension ``latent_dim``) from the modalities' ``encoders``, whose latents
        are ``latent_dim + private_latent_dim`` wide (:class:`PrivateLatentGuide` when private)."""
        if self.private_latent_dim:
            return PrivateLatentGuide(encoders, latent_dim, self.private_latent_dim)
        return GUIDES[self.name](encoders, latent_dim)


__all__ = ["ENCODER_SCALES", "GUIDES", "GuideConfig"]
