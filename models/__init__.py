"""Pyro models of multimodal data: read them, copy them, edit them."""

from models.multimodal_vae import MultimodalVAE
from models.private_latents import PrivateLatentVAE

__all__ = ["MultimodalVAE", "PrivateLatentVAE"]
