"""Subsets for evaluation that cover every class of a data set stored class by class."""

from __future__ import annotations

import torch
from torch.utils.data import Dataset, Subset


def strided_subset(dataset: Dataset, n: int) -> Subset:
    """``n`` items evenly spread over ``dataset``: indices ``floor(i * len(dataset) / n)``, ``i < n``.

    PolyMNIST and MNIST-SVHN store their items grouped by digit, so the first ``n`` items would
    hold only 0s (and 1s); a strided subset holds each class in proportion to its size (±1 item).
    """
    if not 0 < n <= len(dataset):
        raise ValueError(f"n must be in 1..{len(dataset)}, got {n}")
    return Subset(dataset, (torch.arange(n) * len(dataset) // n).tolist())
