"""The data sets of the paper by name: how to load each, the networks, likelihoods and classifiers of
its modalities, and its training batches. Their tiny generated copies for smoke runs are written by
:mod:`pyro_mmebm.data.fake`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable, Mapping, Optional

import torch
from torch.utils.data import DataLoader, Dataset, RandomSampler

from pyro_mmebm.data import MNISTSVHN, CUBImageCaption, InMemoryBatches, PolyMNIST, write_fake_dataset
from pyro_mmebm.likelihoods import Likelihood
from pyro_mmebm.networks import CAPTION_LENGTH

if TYPE_CHECKING:
    from pyro_mmebm.experiment.config import ExperimentConfig


@dataclass(frozen=True)
class DatasetSpec:
    """How to build one data set and the networks, likelihoods and classifiers of its modalities.

    :param load: ``(config, train) -> Dataset`` of items ``({modality: tensor}, label)``.
    :param architectures: ``{modality: key of ARCHITECTURES}``.
    :param likelihoods: ``{modality: Likelihood}``.
    :param likelihood_scales: ``{modality: scale of its log-likelihood}`` (MMVAE's balancing).
    :param classifiers: ``{modality: key of CLASSIFIERS}``; empty where digits are not the labels.
    :param probe: whether labels are shared by the two splits, so that a linear probe means something.
    """

    load: Callable[[ExperimentConfig, bool], Dataset]
    architectures: Mapping[str, str]
    likelihoods: Mapping[str, Likelihood]
    likelihood_scales: Mapping[str, float]
    classifiers: Mapping[str, str]
    probe: bool = True


IMAGE_LIKELIHOOD = Likelihood("laplace", 0.75)
"""MMVAE's image likelihood: a Laplace with fixed scale 0.75 around the decoded mean."""


def _load_polymnist(config: ExperimentConfig, train: bool) -> Dataset:
    source = None
    if config.source_root is not None:
        source = (config.source_root, str(Path(config.source_root) / "PolyMNIST" / "backgrounds"))
    return PolyMNIST(config.data_root, train=train, generate_from=source, download=config.download)


def _load_mnist_svhn(config: ExperimentConfig, train: bool) -> Dataset:
    # Smoke data has a handful of images per class: pair each once instead of MMVAE's 30 times.
    pairs = 1 if config.smoke else 30
    return MNISTSVHN(
        config.data_root, train=train, download=config.download, pairs_per_example=pairs, cache_dir=config.cache_dir
    )


def _load_cub(config: ExperimentConfig, train: bool) -> Dataset:
    train_set = CUBImageCaption(config.data_root, train=True, download=config.download)
    if train:
        return train_set
    return CUBImageCaption(config.data_root, train=False, vocabulary=train_set.vocabulary, download=config.download)


DATASETS: dict[str, DatasetSpec] = {
    "mnist_svhn": DatasetSpec(
        load=_load_mnist_svhn,
        architectures={"mnist": "mnist", "svhn": "svhn"},
        likelihoods={"mnist": IMAGE_LIKELIHOOD, "svhn": IMAGE_LIKELIHOOD},
        # MMVAE weighs MNIST's log-likelihood by the ratio of the data sizes, 3·32·32 / (1·28·28).
        likelihood_scales={"mnist": 3 * 32 * 32 / (1 * 28 * 28), "svhn": 1.0},
        classifiers={"mnist": "mnist", "svhn": "svhn"},
    ),
    "polymnist": DatasetSpec(
        load=_load_polymnist,
        architectures={name: "polymnist" for name in PolyMNIST.modalities},
        likelihoods={name: IMAGE_LIKELIHOOD for name in PolyMNIST.modalities},
        likelihood_scales={name: 1.0 for name in PolyMNIST.modalities},
        classifiers={name: "polymnist" for name in PolyMNIST.modalities},
    ),
    "cub": DatasetSpec(
        load=_load_cub,
        architectures={"image": "cub_image", "caption": "cub_caption"},
        likelihoods={"image": IMAGE_LIKELIHOOD, "caption": Likelihood("categorical")},
        # MMVAE's CUB: the image log-likelihood weighted by caption length / image size.
        likelihood_scales={"image": CAPTION_LENGTH / (3 * 64 * 64), "caption": 1.0},
        classifiers={},
        probe=False,  # train and test hold different bird classes
    ),
}
"""How to build each data set of the paper, by name."""


def build_datasets(config: ExperimentConfig) -> tuple[Dataset, Dataset]:
    """``(train, test)`` data sets of ``config.dataset`` (writing the fake data first for a smoke run)."""
    spec = DATASETS[config.dataset]
    if config.smoke and not Path(config.data_root).exists():
        write_fake_dataset(config.dataset, config.data_root, config.train.seed)
    train_set, test_set = spec.load(config, True), spec.load(config, False)
    if config.eval_size > len(test_set):
        raise ValueError(
            f"--eval-size {config.eval_size} exceeds the {len(test_set)} examples of the {config.dataset} test set"
        )
    return train_set, test_set


def examples_per_epoch(config: ExperimentConfig, train_set: Dataset) -> Optional[int]:
    """``config.epoch_size`` when it is below the training set's size, else ``None`` (all of it)."""
    return config.epoch_size if config.epoch_size is not None and config.epoch_size < len(train_set) else None


def train_loader(config: ExperimentConfig, train_set: Dataset, device: Optional[torch.device] = None) -> Iterable:
    """Shuffled batches; ``epoch_size`` examples per epoch, a fresh random draw each epoch.

    A data set that can hand over all its tensors (``train_set.tensors()``, e.g. PolyMNIST) is
    batched by slicing them (:class:`~pyro_mmebm.data.InMemoryBatches`), the whole set moved to a
    CUDA ``device`` once (as ``uint8``: PolyMNIST's 60,000 tuples take 0.7 GB); any other through a
    ``DataLoader``.
    """
    epoch_size = examples_per_epoch(config, train_set)
    if hasattr(train_set, "tensors"):
        modalities, labels = train_set.tensors()
        batches = InMemoryBatches(modalities, labels, config.batch_size, epoch_size=epoch_size)
        return batches.to(device) if device is not None and device.type == "cuda" else batches
    sampler = None if epoch_size is None else RandomSampler(train_set, num_samples=epoch_size)
    return DataLoader(train_set, batch_size=config.batch_size, shuffle=sampler is None, sampler=sampler)


__all__ = ["DATASETS", "IMAGE_LIKELIHOOD", "DatasetSpec", "build_datasets", "examples_per_epoch", "train_loader"]
