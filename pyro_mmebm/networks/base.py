"""The encoder/decoder contract shared by every architecture in this package.

An :class:`Encoder` maps a batch ``x`` of shape ``(B, *event_shape)`` to ``(loc, scale)``, each
``(B, latent_dim)`` with ``scale > 0``. A :class:`Decoder` maps latents ``z`` of shape
``(N, latent_dim)`` to the likelihood's parameter for each of the ``N`` items. Both check their
input's shape up front, so a wrong input is reported in terms of the data, not of a layer deep inside.
"""

from __future__ import annotations

from typing import Callable, ClassVar, Optional, Sequence

import torch
from torch import Tensor, nn
from torch.nn import functional as F

SCALE_EPS = 1e-6
"""Floor added to every scale (MMVAE's ``Constants.eta``), so that scales stay strictly positive."""

SCALE_ACTIVATIONS: dict[str, Callable[[Tensor], Tensor]] = {
    # MMVAE: the D scales sum to D, which stops a Laplace posterior from collapsing single dimensions.
    "softmax": lambda raw: F.softmax(raw, dim=-1) * raw.shape[-1] + SCALE_EPS,
    "softplus": lambda raw: F.softplus(raw) + SCALE_EPS,
    # ``raw`` is a log-scale (a log-variance head with its factor 1/2 absorbed), as in MoPoE.
    "exp": lambda raw: torch.exp(raw) + SCALE_EPS,
}
"""Maps from an encoder's unconstrained output to a positive scale, keyed by name."""


def _autocast(dtype: torch.dtype, device_type: str) -> torch.autocast:
    """Autocast to ``dtype`` for a network's layers."""
    return torch.autocast(device_type, dtype=dtype)


def _shape_str(shape: Sequence[int | str]) -> str:
    return "(" + ", ".join(str(s) for s in shape) + ")"


class Encoder(nn.Module):
    """Base class: ``x`` of shape ``(B, *event_shape)`` → ``(loc, scale)``, each ``(B, latent_dim)``.

    Subclasses build their layers and implement :meth:`loc_and_raw_scale`; this class checks the
    input and maps the raw scale through the chosen :data:`SCALE_ACTIVATIONS` entry. With
    ``compute_dtype`` set (e.g. ``torch.bfloat16``, see :func:`pyro_mmebm.speed.use_mixed_precision`)
    the layers run under autocast to it, and ``loc`` and ``scale`` come back in the input's dtype.

    :param event_shape: shape of one data item.
    :param latent_dim: dimension of the latent.
    :param scale_activation: a key of :data:`SCALE_ACTIVATIONS`.
    """

    token_input: ClassVar[bool] = False
    """Whether the input holds integer token ids (captions) rather than real values (images)."""

    def __init__(self, event_shape: Sequence[int], latent_dim: int, scale_activation: str) -> None:
        super().__init__()
        if latent_dim < 1:
            raise ValueError(f"latent_dim must be positive, got {latent_dim}")
        if scale_activation not in SCALE_ACTIVATIONS:
            raise ValueError(
                f"unknown scale_activation {scale_activation!r}; choose one of {sorted(SCALE_ACTIVATIONS)}"
            )
        self.event_shape = torch.Size(event_shape)
        self.latent_dim = latent_dim
        self.scale_activation = scale_activation
        self.compute_dtype: Optional[torch.dtype] = None

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Return ``(loc, scale)``, each of shape ``(B, latent_dim)``."""
        name = type(self).__name__
        if x.dim() != 1 + len(self.event_shape) or x.shape[1:] != self.event_shape:
            raise ValueError(
                f"{name} expects a batch of shape {_shape_str(('B', *self.event_shape))}, "
                f"got {_shape_str(x.shape)}"
            )
        if self.token_input and (x.is_floating_point() or x.is_complex()):
            raise ValueError(f"{name} expects integer token ids, got a tensor of dtype {x.dtype}")
        if not self.token_input and not x.is_floating_point():
            raise ValueError(f"{name} expects a floating-point batch, got a tensor of dtype {x.dtype}")
        if self.compute_dtype is None:
            loc, raw_scale = self.loc_and_raw_scale(x)
        else:
            with _autocast(self.compute_dtype, x.device.type):
                loc, raw_scale = self.loc_and_raw_scale(x)
            dtype = x.dtype if x.is_floating_point() else torch.get_default_dtype()  # tokens: the default
            loc, raw_scale = loc.to(dtype), raw_scale.to(dtype)
        return loc, SCALE_ACTIVATIONS[self.scale_activation](raw_scale)

    def loc_and_raw_scale(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Return ``loc`` and the unconstrained scale, each ``(B, latent_dim)``, for a checked ``x``."""
        raise NotImplementedError


class Decoder(nn.Module):
    """Base class: ``z`` of shape ``(N, latent_dim)`` → the likelihood's parameter for each item.

    Subclasses implement :meth:`decode`. The model flattens sample dimensions before calling a
    decoder, so ``z`` must be 2-D. With ``compute_dtype`` set, the layers run under autocast to it and
    the output comes back in ``z``'s dtype.

    :param latent_dim: dimension of the latent.
    :param event_shape: shape of one data item.
    """

    def __init__(self, latent_dim: int, event_shape: Sequence[int]) -> None:
        super().__init__()
        if latent_dim < 1:
            raise ValueError(f"latent_dim must be positive, got {latent_dim}")
        self.latent_dim = latent_dim
        self.event_shape = torch.Size(event_shape)
        self.compute_dtype: Optional[torch.dtype] = None

    def forward(self, z: Tensor) -> Tensor:
        """Return the likelihood's parameter, of shape ``(N, *event_shape)`` (captions: plus vocabulary)."""
        if z.dim() != 2 or z.shape[1] != self.latent_dim:
            raise ValueError(
                f"{type(self).__name__} expects latents of shape (N, {self.latent_dim}), "
                f"got {_shape_str(z.shape)}"
            )
        if self.compute_dtype is None:
            return self.decode(z)
        with _autocast(self.compute_dtype, z.device.type):
            out = self.decode(z)
        return out.to(z.dtype) if out.is_floating_point() else out

    def decode(self, z: Tensor) -> Tensor:
        """The likelihood's parameter for a checked ``z`` of shape ``(N, latent_dim)``."""
        raise NotImplementedError


__all__ = ["SCALE_ACTIVATIONS", "SCALE_EPS", "Decoder", "Encoder"]
