"""MMVAE's MNIST encoder/decoder: a one-hidden-layer MLP on the flattened 1×28×28 image.

[1] Shi, Siddharth, Paige, Torr (2019) "Variational Mixture-of-Experts Autoencoders for Multi-Modal
Deep Generative Models", NeurIPS; appendix (MNIST-SVHN): 784 → FC 400, ReLU → FC 20, 20 and back.
"""

from __future__ import annotations

from pyro_mmebm.networks.mlp import MLPDecoder, MLPEncoder

MNIST_SHAPE = (1, 28, 28)
MNIST_HIDDEN = 400


class MNISTEncoder(MLPEncoder):
    """MMVAE's MNIST encoder [1]: ``784 → Linear 400 → ReLU`` (times ``num_hidden_layers``), then
    linear heads for ``loc`` and the raw scale; the scale uses MMVAE's softmax map by default (it
    parameterises a Laplace posterior).

    Input ``(B, 1, 28, 28)``; output ``(loc, scale)``, each ``(B, latent_dim)``.
    """

    def __init__(
        self, latent_dim: int = 20, num_hidden_layers: int = 1, scale_activation: str = "softmax"
    ) -> None:
        super().__init__(MNIST_SHAPE, latent_dim, (MNIST_HIDDEN,) * num_hidden_layers, scale_activation)


class MNISTDecoder(MLPDecoder):
    """MMVAE's MNIST decoder [1]: ``latent → Linear 400 → ReLU`` (times ``num_hidden_layers``) ``→
    Linear 784 → sigmoid``, the mean image.

    Input ``(N, latent_dim)``; output ``(N, 1, 28, 28)`` in [0, 1].
    """

    def __init__(self, latent_dim: int = 20, num_hidden_layers: int = 1) -> None:
        super().__init__(latent_dim, MNIST_SHAPE, (MNIST_HIDDEN,) * num_hidden_layers, output="sigmoid")


__all__ = ["MNISTDecoder", "MNISTEncoder"]
