"""Pyro models of multimodal data: read them, copy them, edit them."""

from models.multimodal_vae import MultimodalVAE

__all__ = ["MultimodalVAE"]
