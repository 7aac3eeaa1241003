"""Calling a modality's encoder with the checks every guide needs."""

from __future__ import annotations

from torch import Tensor, nn


def encode(
    encoder: nn.Module, name: str, x: Tensor, out_dim: int, described_as: str = "latent_dim"
) -> tuple[Tensor, Tensor]:
    """``(loc, scale)`` of modality ``name``'s encoder at ``x``, each ``(B, out_dim)``.

    Raises ``ValueError`` naming the modality when ``x`` does not have the item shape the encoder
    declares (its ``event_shape`` attribute, when it has one) or the encoder's outputs are not
    ``(B, out_dim)``; ``described_as`` says what ``out_dim`` is in that message.
    """
    event_shape = getattr(encoder, "event_shape", None)
    if event_shape is not None and tuple(x.shape[1:]) != tuple(event_shape):
        raise ValueError(
            f"modality {name!r} has item shape {tuple(x.shape[1:])}, but its encoder expects {tuple(event_shape)}"
        )
    loc, scale = encoder(x)
    expected = (x.shape[0], out_dim)
    if tuple(loc.shape) != expected or tuple(scale.shape) != expected:
        raise ValueError(
            f"encoder of modality {name!r} returned loc {tuple(loc.shape)} and scale {tuple(scale.shape)}; "
            f"expected {expected} (batch, {described_as} = {out_dim})"
        )
    return loc, scale
