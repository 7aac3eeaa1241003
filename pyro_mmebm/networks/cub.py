"""MMVAE's CUB networks: a DCGAN-style CNN for 3×64×64 bird images and a 2-D CNN for captions of
``CAPTION_LENGTH`` tokens.

[1] Shi, Siddharth, Paige, Torr (2019) "Variational Mixture-of-Experts Autoencoders for Multi-Modal
Deep Generative Models", NeurIPS; appendix (CUB image-caption).
"""

from __future__ import annotations

from torch import Tensor, nn

from pyro_mmebm.networks.base import Decoder, Encoder

CUB_IMAGE_SHAPE = (3, 64, 64)
CUB_IMAGE_BASE_CHANNELS = 64
CAPTION_LENGTH = 32
CAPTION_EMBEDDING_DIM = 128
CAPTION_BASE_CHANNELS = 32


class CUBImageEncoder(Encoder):
    """DCGAN-style encoder for CUB images, as in MMVAE's image model [1]: four ``Conv 4×4, stride 2,
    padding 1 → ReLU`` layers with 64, 128, 256, 512 channels (64×64 → 32 → 16 → 8 → 4), then a
    ``Conv 4×4`` (no padding) to ``loc`` and the raw scale at 1×1. Softmax scale by default (MMVAE's
    Laplace posterior).

    Input ``(B, 3, 64, 64)``; output ``(loc, scale)``, each ``(B, latent_dim)``. MMVAE's CUB latent is
    64-d.
    """

    def __init__(self, latent_dim: int = 64, scale_activation: str = "softmax") -> None:
        super().__init__(CUB_IMAGE_SHAPE, latent_dim, scale_activation)
        c = CUB_IMAGE_BASE_CHANNELS
        self.body = nn.Sequential(
            nn.Conv2d(3, c, 4, 2, 1), nn.ReLU(),
            nn.Conv2d(c, 2 * c, 4, 2, 1), nn.ReLU(),
            nn.Conv2d(2 * c, 4 * c, 4, 2, 1), nn.ReLU(),
            nn.Conv2d(4 * c, 8 * c, 4, 2, 1), nn.ReLU(),
        )
        self.head = nn.Conv2d(8 * c, 2 * latent_dim, 4, 1, 0)

    def loc_and_raw_scale(self, x: Tensor) -> tuple[Tensor, Tensor]:
        loc, raw_scale = self.head(self.body(x)).flatten(1).chunk(2, dim=-1)
        return loc, raw_scale


class CUBImageDecoder(Decoder):
    """The transposed mirror of :class:`CUBImageEncoder` [1]: ``ConvT 4×4`` from the 1×1 latent to
    512×4×4, then ``ConvT 4×4, stride 2, padding 1`` to 256×8×8, 128×16×16, 64×32×32 and 3×64×64,
    ReLU between layers and a sigmoid at the end (the mean image).

    Input ``(N, latent_dim)``; output ``(N, 3, 64, 64)`` in [0, 1].
    """

    def __init__(self, latent_dim: int = 64) -> None:
        super().__init__(latent_dim, CUB_IMAGE_SHAPE)
        c = CUB_IMAGE_BASE_CHANNELS
        self.net = nn.Sequential(
            nn.ConvTranspose2d(latent_dim, 8 * c, 4, 1, 0), nn.ReLU(),
            nn.ConvTranspose2d(8 * c, 4 * c, 4, 2, 1), nn.ReLU(),
            nn.ConvTranspose2d(4 * c, 2 * c, 4, 2, 1), nn.ReLU(),
            nn.ConvTranspose2d(2 * c, c, 4, 2, 1), nn.ReLU(),
            nn.ConvTranspose2d(c, 3, 4, 2, 1), nn.Sigmoid(),
        )

    def decode(self, z: Tensor) -> Tensor:
        return self.net(z[:, :, None, None])


def _conv_bn_relu(conv: nn.Module, channels: int) -> list[nn.Module]:
    return [conv, nn.BatchNorm2d(channels), nn.ReLU()]


class CUBCaptionEncoder(Encoder):
    """MMVAE's CUB sentence encoder [1]: embed each of the 32 tokens in 128 dimensions and treat the
    32×128 (length × embedding) array as a one-channel image. Three ``Conv 4×4, stride 2, padding 1``
    layers with 32, 64, 128 channels (→ 4×16), two ``Conv 1×4, stride (1, 2), padding (0, 1)`` layers
    along the embedding axis (→ 4×4), each followed by batch norm and ReLU and without bias, then a
    ``Conv 4×4`` to ``loc`` and the raw scale. Softmax scale by default (MMVAE's Laplace posterior).

    Input ``(B, 32)`` integer token ids; output ``(loc, scale)``, each ``(B, latent_dim)``.

    :param vocab_size: number of distinct tokens (MMVAE's CUB vocabulary has 1590).
    :param padding_idx: token id of padding, whose embedding is fixed at zero (``None``: no padding).
    """

    token_input = True

    def __init__(
        self,
        vocab_size: int,
        latent_dim: int = 64,
        padding_idx: int | None = 0,
        scale_activation: str = "softmax",
    ) -> None:
        super().__init__((CAPTION_LENGTH,), latent_dim, scale_activation)
        c = CAPTION_BASE_CHANNELS
        self.vocab_size = vocab_size
        self.embedding = nn.Embedding(vocab_size, CAPTION_EMBEDDING_DIM, padding_idx=padding_idx)
        self.body = nn.Sequential(
            *_conv_bn_relu(nn.Conv2d(1, c, 4, 2, 1, bias=False), c),
            *_conv_bn_relu(nn.Conv2d(c, 2 * c, 4, 2, 1, bias=False), 2 * c),
            *_conv_bn_relu(nn.Conv2d(2 * c, 4 * c, 4, 2, 1, bias=False), 4 * c),
            *_conv_bn_relu(nn.Conv2d(4 * c, 4 * c, (1, 4), (1, 2), (0, 1), bias=False), 4 * c),
            *_conv_bn_relu(nn.Conv2d(4 * c, 4 * c, (1, 4), (1, 2), (0, 1), bias=False), 4 * c),
        )
        self.head = nn.Conv2d(4 * c, 2 * latent_dim, 4, 1, 0, bias=False)

    def loc_and_raw_scale(self, x: Tensor) -> tuple[Tensor, Tensor]:
        if x.numel() and (x.min() < 0 or x.max() >= self.vocab_size):
            raise ValueError(
                f"{type(self).__name__} expects token ids in [0, {self.vocab_size}), "
                f"got values in [{int(x.min())}, {int(x.max())}]"
            )
        features = self.body(self.embedding(x).unsqueeze(1))
        loc, raw_scale = self.head(features).flatten(1).chunk(2, dim=-1)
        return loc, raw_scale


class CUBCaptionDecoder(Decoder):
    """MMVAE's CUB sentence decoder [1], the transposed mirror of :class:`CUBCaptionEncoder`: ``ConvT
    4×4`` from the 1×1 latent to 128×4×4, two ``ConvT 1×4, stride (1, 2), padding (0, 1)`` (→ 4×16),
    ``ConvT 4×4, stride 2, padding 1`` to 64, 32 and 1 channels (→ 32×128), each followed by batch
    norm (not the last) and ReLU and without bias; a linear map from each position's 128 values to
    the vocabulary gives the logits.

    Input ``(N, latent_dim)``; output logits ``(N, 32, vocab_size)``.

    :param vocab_size: number of distinct tokens.
    """

    def __init__(self, vocab_size: int, latent_dim: int = 64) -> None:
        super().__init__(latent_dim, (CAPTION_LENGTH,))
        c = CAPTION_BASE_CHANNELS
        self.vocab_size = vocab_size
        self.net = nn.Sequential(
            *_conv_bn_relu(nn.ConvTranspose2d(latent_dim, 4 * c, 4, 1, 0, bias=False), 4 * c),
            *_conv_bn_relu(nn.ConvTranspose2d(4 * c, 4 * c, (1, 4), (1, 2), (0, 1), bias=False), 4 * c),
            *_conv_bn_relu(nn.ConvTranspose2d(4 * c, 4 * c, (1, 4), (1, 2), (0, 1), bias=False), 4 * c),
            *_conv_bn_relu(nn.ConvTranspose2d(4 * c, 2 * c, 4, 2, 1, bias=False), 2 * c),
            *_conv_bn_relu(nn.ConvTranspose2d(2 * c, c, 4, 2, 1, bias=False), c),
            nn.ConvTranspose2d(c, 1, 4, 2, 1, bias=False), nn.ReLU(),
        )
        self.to_vocab = nn.Linear(CAPTION_EMBEDDING_DIM, vocab_size)

    def decode(self, z: Tensor) -> Tensor:
        return self.to_vocab(self.net(z[:, :, None, None]).squeeze(1))


__all__ = ["CAPTION_LENGTH", "CUBCaptionDecoder", "CUBCaptionEncoder", "CUBImageDecoder", "CUBImageEncoder"]
