"""MMVAE's SVHN encoder/decoder: a DCGAN-style CNN on 3×32×32 images.

[1] Shi, Siddharth, Paige, Torr (2019) "Variational Mixture-of-Experts Autoencoders for Multi-Modal
Deep Generative Models", NeurIPS; appendix (MNIST-SVHN).
"""

from __future__ import annotations

from torch import Tensor, nn

from pyro_mmebm.networks.base import Decoder, Encoder

SVHN_SHAPE = (3, 32, 32)
SVHN_BASE_CHANNELS = 32


class SVHNEncoder(Encoder):
    """MMVAE's SVHN encoder [1]: three ``Conv 4×4, stride 2, padding 1 → ReLU`` layers with 32, 64,
    128 channels (32×32 → 16 → 8 → 4), then a ``Conv 4×4`` (no padding) to ``loc`` and the raw
    scale at 1×1. Softmax scale by default (MMVAE's Laplace posterior).

    Input ``(B, 3, 32, 32)``; output ``(loc, scale)``, each ``(B, latent_dim)``.
    """

    def __init__(self, latent_dim: int = 20, scale_activation: str = "softmax") -> None:
        super().__init__(SVHN_SHAPE, latent_dim, scale_activation)
        c = SVHN_BASE_CHANNELS
        self.body = nn.Sequential(
            nn.Conv2d(3, c, 4, 2, 1), nn.ReLU(),
            nn.Conv2d(c, 2 * c, 4, 2, 1), nn.ReLU(),
            nn.Conv2d(2 * c, 4 * c, 4, 2, 1), nn.ReLU(),
        )
        self.head = nn.Conv2d(4 * c, 2 * latent_dim, 4, 1, 0)

    def loc_and_raw_scale(self, x: Tensor) -> tuple[Tensor, Tensor]:
        loc, raw_scale = self.head(self.body(x)).flatten(1).chunk(2, dim=-1)
        return loc, raw_scale


class SVHNDecoder(Decoder):
    """MMVAE's SVHN decoder [1], the transposed mirror of :class:`SVHNEncoder`: ``ConvT 4×4`` from
    the 1×1 latent to 128×4×4, then ``ConvT 4×4, stride 2, padding 1`` to 64×8×8, 32×16×16 and
    3×32×32, ReLU between layers and a sigmoid at the end (the mean image).

    Input ``(N, latent_dim)``; output ``(N, 3, 32, 32)`` in [0, 1].
    """

    def __init__(self, latent_dim: int = 20) -> None:
        super().__init__(latent_dim, SVHN_SHAPE)
        c = SVHN_BASE_CHANNELS
        self.net = nn.Sequential(
            nn.ConvTranspose2d(latent_dim, 4 * c, 4, 1, 0), nn.ReLU(),
            nn.ConvTranspose2d(4 * c, 2 * c, 4, 2, 1), nn.ReLU(),
            nn.ConvTranspose2d(2 * c, c, 4, 2, 1), nn.ReLU(),
            nn.ConvTranspose2d(c, 3, 4, 2, 1), nn.Sigmoid(),
        )

    def decode(self, z: Tensor) -> Tensor:
        return self.net(z[:, :, None, None])


__all__ = ["SVHNDecoder", "SVHNEncoder"]
