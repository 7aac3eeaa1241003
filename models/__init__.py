"""Pyro models of multimodal data: read them, copy them, edit them.

Both meet :class:`pyro_mmebm.contracts.MultimodalModel`; the private-latent model also
:class:`~pyro_mmebm.contracts.CrossGeneratingModel`.
"""

from models.multimodal_vae import MultimodalVAE
from models.private_latents import PrivateLatentVAE

__all__ = ["MultimodalVAE", "PrivateLatentVAE"]
