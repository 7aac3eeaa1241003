"""Generic fully connected encoder/decoder for data of any fixed shape (tests, synthetic examples)."""

from __future__ import annotations

import math
from typing import Sequence

from torch import Tensor, nn

from pyro_mmebm.networks.base import Decoder, Encoder

OUTPUT_ACTIVATIONS: dict[str, type[nn.Module]] = {"sigmoid": nn.Sigmoid, "identity": nn.Identity}
"""Output maps of :class:`MLPDecoder`: ``"sigmoid"`` (means in [0, 1]) or ``"identity"`` (real locations)."""


def _relu_mlp(widths: Sequence[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for n_in, n_out in zip(widths[:-1], widths[1:]):
        layers += [nn.Linear(n_in, n_out), nn.ReLU()]
    return nn.Sequential(*layers)


class MLPEncoder(Encoder):
    """Flatten ``x``, apply ``Linear → ReLU`` for each width in ``hidden``, then a linear head to
    ``(loc, raw scale)``.

    :param in_shape: shape of one data item, e.g. ``(1, 28, 28)`` or ``(2,)``.
    :param latent_dim: dimension of the latent.
    :param hidden: widths of the hidden layers (may be empty: a linear encoder).
    :param scale_activation: a key of :data:`~pyro_mmebm.networks.base.SCALE_ACTIVATIONS`.
    """

    def __init__(
        self,
        in_shape: Sequence[int],
        latent_dim: int,
        hidden: Sequence[int] = (128,),
        scale_activation: str = "softplus",
    ) -> None:
        super().__init__(in_shape, latent_dim, scale_activation)
        widths = [math.prod(in_shape), *hidden]
        self.body = _relu_mlp(widths)
        self.head = nn.Linear(widths[-1], 2 * latent_dim)

    def loc_and_raw_scale(self, x: Tensor) -> tuple[Tensor, Tensor]:
        loc, raw_scale = self.head(self.body(x.flatten(1))).chunk(2, dim=-1)
        return loc, raw_scale


class MLPDecoder(Decoder):
    """``Linear → ReLU`` for each width in ``hidden``, a linear layer to ``prod(out_shape)`` values,
    the ``output`` map, reshaped to ``(N, *out_shape)``.

    :param latent_dim: dimension of the latent.
    :param out_shape: shape of one data item.
    :param hidden: widths of the hidden layers (may be empty).
    :param output: a key of :data:`OUTPUT_ACTIVATIONS`.
    """

    def __init__(
        self,
        latent_dim: int,
        out_shape: Sequence[int],
        hidden: Sequence[int] = (128,),
        output: str = "sigmoid",
    ) -> None:
        super().__init__(latent_dim, out_shape)
        if output not in OUTPUT_ACTIVATIONS:
            raise ValueError(f"unknown output {output!r}; choose one of {sorted(OUTPUT_ACTIVATIONS)}")
        widths = [latent_dim, *hidden]
        self.net = nn.Sequential(
            _relu_mlp(widths), nn.Linear(widths[-1], math.prod(out_shape)), OUTPUT_ACTIVATIONS[output]()
        )

    def decode(self, z: Tensor) -> Tensor:
        return self.net(z).view(-1, *self.event_shape)


__all__ = ["OUTPUT_ACTIVATIONS", "MLPDecoder", "MLPEncoder"]
