"""Encoder/decoder architectures of the multimodal VAE baselines (MMVAE, MoPoE, MMVAE+).

Every encoder maps ``(B, *event_shape)`` to ``(loc, scale)``, each ``(B, latent_dim)``; every
decoder maps ``(N, latent_dim)`` to the likelihood's parameter (see :mod:`pyro_mmebm.networks.base`).
:data:`ARCHITECTURES` names the ``(encoder class, decoder class)`` pair for each dataset modality.
"""

from __future__ import annotations

from pyro_mmebm.networks.base import SCALE_ACTIVATIONS, SCALE_EPS, Decoder, Encoder
from pyro_mmebm.networks.cub import (
    CAPTION_LENGTH,
    CUBCaptionDecoder,
    CUBCaptionEncoder,
    CUBImageDecoder,
    CUBImageEncoder,
)
from pyro_mmebm.networks.mlp import OUTPUT_ACTIVATIONS, MLPDecoder, MLPEncoder
from pyro_mmebm.networks.mnist import MNISTDecoder, MNISTEncoder
from pyro_mmebm.networks.polymnist import PolyMNISTDecoder, PolyMNISTEncoder
from pyro_mmebm.networks.svhn import SVHNDecoder, SVHNEncoder

ARCHITECTURES: dict[str, tuple[type[Encoder], type[Decoder]]] = {
    "mnist": (MNISTEncoder, MNISTDecoder),
    "svhn": (SVHNEncoder, SVHNDecoder),
    "polymnist": (PolyMNISTEncoder, PolyMNISTDecoder),
    "cub_image": (CUBImageEncoder, CUBImageDecoder),
    "cub_caption": (CUBCaptionEncoder, CUBCaptionDecoder),
}
"""``(encoder class, decoder class)`` per modality kind. All take ``latent_dim`` as a keyword with
the source paper's default; the caption classes also need ``vocab_size``."""

__all__ = [
    "ARCHITECTURES",
    "CAPTION_LENGTH",
    "CUBCaptionDecoder",
    "CUBCaptionEncoder",
    "CUBImageDecoder",
    "CUBImageEncoder",
    "Decoder",
    "Encoder",
    "MLPDecoder",
    "MLPEncoder",
    "MNISTDecoder",
    "MNISTEncoder",
    "OUTPUT_ACTIVATIONS",
    "PolyMNISTDecoder",
    "PolyMNISTEncoder",
    "SCALE_ACTIVATIONS",
    "SCALE_EPS",
    "SVHNDecoder",
    "SVHNEncoder",
]
