"""Subsets for evaluation that cover every class of a data set stored class by class."""

from __future__ import annotations

import torch
from torch import Tensor
from torch.utils.data import Dataset, Subset


def _strided_index(size: int, n: int) -> Tensor:
    """Indices ``floor(i * size / n)``, ``i < n``: ``n`` items evenly spread over ``size``."""
    if not 0 < n <= size:
        raise ValueError(f"n must be in 1..{size}, got {n}")
    return torch.arange(n) * size // n


def strided_subset(dataset: Dataset, n: int) -> Subset:
    """``n`` items evenly spread over ``dataset``: indices ``floor(i * len(dataset) / n)``, ``i < n``.

    PolyMNIST and MNIST-SVHN store their items grouped by digit, so the first ``n`` items would
    hold only 0s (and 1s); a strided subset holds each class in proportion to its size (±1 item).
    """
    return Subset(dataset, _strided_index(len(dataset), n).tolist())


def strided_tensors(
    modalities: dict[str, Tensor], labels: Tensor, n: int
) -> tuple[dict[str, Tensor], Tensor]:
    """The same ``n`` evenly spread items of in-memory tensors (e.g. ``PolyMNIST.tensors()``):
    ``({name: x[index]}, labels[index])``, for :class:`~pyro_mmebm.data.InMemoryBatches`."""
    index = _strided_index(len(labels), n)
    return {name: x[index] for name, x in modalities.items()}, labels[index]
