"""Per-modality likelihoods ``p_β(x | z)``, built from a decoder's output.

A likelihood maps the decoder output (images: the location/mean, shape ``(*batch, *event)``;
captions: logits, shape ``(*batch, length, vocabulary)``) and the number of event dimensions of the
data to a distribution whose ``log_prob`` of one data item sums over the item.
"""

from __future__ import annotations

from dataclasses import dataclass

from pyro.distributions import Bernoulli, Categorical, TorchDistribution
from torch import Tensor

from pyro_mmebm.distributions.families import LOCATION_SCALE_FAMILIES


@dataclass(frozen=True)
class Likelihood:
    """A named likelihood family with its fixed settings.

    :param name: ``"laplace"`` (fixed ``scale``; MMVAE uses 0.75 for images), ``"normal"`` (fixed
        ``scale``; unit variance as in the paper's Eq. 2), ``"bernoulli"`` (decoder gives
        probabilities in [0, 1]) or ``"categorical"`` (decoder gives logits, last dim the vocabulary).
    :param scale: the fixed scale of the Laplace and Normal likelihoods.
    """

    name: str
    scale: float = 1.0

    def __post_init__(self) -> None:
        if self.name not in _FAMILIES:
            raise ValueError(f"unknown likelihood {self.name!r}; choose one of {sorted(_FAMILIES)}")
        if self.scale <= 0:
            raise ValueError(f"likelihood scale must be positive, got {self.scale}")

    def __call__(self, params: Tensor, batch_dims: int) -> TorchDistribution:
        """The distribution of one data item for each of the first ``batch_dims`` dims of ``params``."""
        event_dim = len(self.data_shape(params, batch_dims))
        return _FAMILIES[self.name](params, self.scale).to_event(event_dim)

    def data_shape(self, params: Tensor, batch_dims: int) -> tuple[int, ...]:
        """The shape of one data item (e.g. ``(3, 28, 28)`` or ``(length,)`` for tokens)."""
        end = params.dim() - 1 if self.name == "categorical" else params.dim()
        return tuple(params.shape[batch_dims:end])

    def mean(self, params: Tensor) -> Tensor:
        """The likelihood's mean (mode for categorical: the argmax token) given decoder output."""
        return params.argmax(-1) if self.name == "categorical" else params


_FAMILIES = {
    **LOCATION_SCALE_FAMILIES,  # called as family(params, scale)
    "bernoulli": lambda params, scale: Bernoulli(probs=params.clamp(1e-6, 1 - 1e-6)),
    "categorical": lambda params, scale: Categorical(logits=params),
}
