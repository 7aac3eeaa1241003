"""The PolyMNIST encoder/decoder of MoPoE (and, with a split latent, MMVAE+), on 3×28×28 images.

[1] Sutter, Daunhawer, Vogt (2021) "Generalized Multimodal ELBO", ICLR; PolyMNIST networks.
[2] Palumbo, Daunhawer, Vogt (2023) "MMVAE+: Enhancing the Generative Quality of Multimodal VAEs
without Compromises", ICLR; same convolutional stack, with separate shared and private latents.
"""

from __future__ import annotations

from torch import Tensor, nn

from pyro_mmebm.networks.base import Decoder, Encoder

POLYMNIST_SHAPE = (3, 28, 28)
_OUTPUTS = {"identity": nn.Identity, "sigmoid": nn.Sigmoid}


class PolyMNISTEncoder(Encoder):
    """The MoPoE PolyMNIST encoder [1]: three ``Conv 3×3, stride 2, padding 1 → ReLU`` layers with
    32, 64, 128 channels (28×28 → 14 → 7 → 4), flatten (2048), then linear heads to ``loc`` and the
    raw scale, as in MoPoE (with ``hidden_dim > 0``, a ``Linear hidden_dim → ReLU`` layer before them). MoPoE's head gives a log-variance of a Gaussian, hence
    the default ``"exp"`` scale; MMVAE+ [2] uses the same stack with a softmax-scaled Laplace.

    Input ``(B, 3, 28, 28)``; output ``(loc, scale)``, each ``(B, latent_dim)``.

    :param latent_dim: MoPoE uses 512.
    :param hidden_dim: width of an extra fully connected layer after the conv stack; 0 (MoPoE): none.
    """

    def __init__(self, latent_dim: int = 512, hidden_dim: int = 0, scale_activation: str = "exp") -> None:
        super().__init__(POLYMNIST_SHAPE, latent_dim, scale_activation)
        if hidden_dim < 0:
            raise ValueError(f"hidden_dim must be 0 (no hidden layer) or positive, got {hidden_dim}")
        hidden = [nn.Linear(128 * 4 * 4, hidden_dim), nn.ReLU()] if hidden_dim else []
        self.body = nn.Sequential(
            nn.Conv2d(3, 32, 3, 2, 1), nn.ReLU(),
            nn.Conv2d(32, 64, 3, 2, 1), nn.ReLU(),
            nn.Conv2d(64, 128, 3, 2, 1), nn.ReLU(),
            nn.Flatten(),
            *hidden,
        )
        self.head = nn.Linear(hidden_dim or 128 * 4 * 4, 2 * latent_dim)

    def loc_and_raw_scale(self, x: Tensor) -> tuple[Tensor, Tensor]:
        loc, raw_scale = self.head(self.body(x)).chunk(2, dim=-1)
        return loc, raw_scale


class PolyMNISTDecoder(Decoder):
    """The MoPoE PolyMNIST decoder [1], the mirror of :class:`PolyMNISTEncoder`: ``Linear 2048 →
    ReLU``, reshape to 128×4×4, ``ConvT 3×3, stride 2, padding 1`` to 64×7×7, then two ``ConvT 3×3,
    stride 2, padding 1, output padding 1`` to 32×14×14 and 3×28×28, ReLU between layers. MoPoE leaves
    the output unbounded (``output="identity"``, the default); ``output="sigmoid"`` bounds it to [0, 1].

    Input ``(N, latent_dim)``; output ``(N, 3, 28, 28)``.

    :param output: ``"identity"`` or ``"sigmoid"``, the map applied to the last layer.
    """

    def __init__(self, latent_dim: int = 512, output: str = "identity") -> None:
        super().__init__(latent_dim, POLYMNIST_SHAPE)
        if output not in _OUTPUTS:
            raise ValueError(f"unknown decoder output {output!r}; choose one of {sorted(_OUTPUTS)}")
        self.net = nn.Sequential(
            nn.Linear(latent_dim, 128 * 4 * 4), nn.ReLU(),
            nn.Unflatten(1, (128, 4, 4)),
            nn.ConvTranspose2d(128, 64, 3, 2, 1), nn.ReLU(),
            nn.ConvTranspose2d(64, 32, 3, 2, 1, output_padding=1), nn.ReLU(),
            nn.ConvTranspose2d(32, 3, 3, 2, 1, output_padding=1), _OUTPUTS[output](),
        )

    def decode(self, z: Tensor) -> Tensor:
        return self.net(z)


__all__ = ["PolyMNISTDecoder", "PolyMNISTEncoder"]
