"""MNIST-SVHN: MNIST and SVHN digits paired by label, as in MMVAE.

[1] Shi, Siddharth, Paige, Torr (2019) "Variational Mixture-of-Experts Autoencoders for
    Multi-Modal Deep Generative Models" (``bin/make-mnist-svhn-idx.py`` in their code).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from pyro_mmebm.atomic import atomic_save_npy
from pyro_mmebm.data._files import load_mnist, load_npy, load_svhn


def match_by_label(
    labels_a: np.ndarray,
    labels_b: np.ndarray,
    max_per_class: int,
    pairs_per_example: int,
    rng: np.random.Generator,
) -> np.ndarray:
    """Index pairs ``(i, j)`` with ``labels_a[i] == labels_b[j]``, MMVAE's ``rand_match_on_idx``.

    For each class ``c`` (in increasing order), both index lists are cut to their first
    ``n_c = min(#a of c, #b of c, max_per_class)`` entries; then ``pairs_per_example`` times, each
    list is randomly permuted and the two are paired position by position. Every kept example
    thus appears in ``pairs_per_example`` pairs.

    :returns: int64 array of shape ``(sum_c n_c * pairs_per_example, 2)``, grouped by class.
    """
    pairs = []
    for label in np.intersect1d(labels_a, labels_b):
        index_a = np.flatnonzero(labels_a == label)
        index_b = np.flatnonzero(labels_b == label)
        n = min(len(index_a), len(index_b), max_per_class)
        index_a, index_b = index_a[:n], index_b[:n]
        for _ in range(pairs_per_example):
            pairs.append(np.stack([index_a[rng.permutation(n)], index_b[rng.permutation(n)]], axis=1))
    return np.concatenate(pairs).astype(np.int64)


class MNISTSVHN(Dataset):
    """Pairs of an MNIST and an SVHN image of the same digit (the MMVAE protocol [1]).

    An item is ``({"mnist": (1, 28, 28), "svhn": (3, 32, 32)}, label)``, float32 images in [0, 1].
    The pairing (see :func:`match_by_label`) is drawn from ``seed`` and the split, computed once
    and cached as ``<cache_dir>/mnist_svhn_<split>_max<max_per_class>_dm<pairs_per_example>_seed<seed>.npy``.
    Items are grouped by digit: shuffle when loading, and use :func:`strided_subset` for subsets.

    :param root: folder with ``MNIST/raw/*-ubyte`` (torchvision's MNIST layout) and
        ``SVHN/{train,test}_32x32.mat``.
    :param train: training split if true, else the test split (of both data sets).
    :param download: fetch missing files online with torchvision.
    :param max_per_class: at most this many examples of each data set per class (MMVAE: 10000).
    :param pairs_per_example: number of random pairings per example, MMVAE's ``dm`` (default 30).
    :param seed: seed of the pairing.
    :param cache_dir: where the index pairs are cached (default ``root``).
    """

    modalities: tuple[str, ...] = ("mnist", "svhn")

    def __init__(
        self,
        root: str | os.PathLike,
        train: bool = True,
        download: bool = False,
        max_per_class: int = 10000,
        pairs_per_example: int = 30,
        seed: int = 0,
        cache_dir: str | os.PathLike | None = None,
    ) -> None:
        self.mnist_images, mnist_labels = load_mnist(root, train, download)
        self.svhn_images, svhn_labels = load_svhn(root, train, download)
        split = "train" if train else "test"
        cache = Path(root if cache_dir is None else cache_dir) / (
            f"mnist_svhn_{split}_max{max_per_class}_dm{pairs_per_example}_seed{seed}.npy"
        )
        pairs = load_npy(cache) if cache.is_file() else None
        if pairs is None or not _pairs_match(pairs, mnist_labels.numpy(), svhn_labels.numpy()):
            rng = np.random.default_rng([seed, int(train)])
            pairs = match_by_label(mnist_labels.numpy(), svhn_labels.numpy(), max_per_class, pairs_per_example, rng)
            atomic_save_npy(cache, pairs)
        self.pairs = torch.from_numpy(pairs)
        self.labels = mnist_labels[self.pairs[:, 0]]

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> tuple[dict[str, Tensor], int]:
        i, j = self.pairs[index].tolist()
        images = {
            "mnist": self.mnist_images[i].unsqueeze(0).float() / 255,
            "svhn": self.svhn_images[j].float() / 255,
        }
        return images, int(self.labels[index])


def _pairs_match(pairs: np.ndarray, labels_a: np.ndarray, labels_b: np.ndarray) -> bool:
    """Whether cached ``pairs`` fit the data read (a stale cache from other files is recomputed)."""
    if pairs.ndim != 2 or pairs.shape[1] != 2 or pairs.size == 0:
        return False
    if pairs.min() < 0 or pairs[:, 0].max() >= len(labels_a) or pairs[:, 1].max() >= len(labels_b):
        return False
    return bool(np.all(labels_a[pairs[:, 0]] == labels_b[pairs[:, 1]]))
