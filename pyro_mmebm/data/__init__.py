"""Multimodal data sets: an item is ``(modalities, label)``, ``modalities`` a dict of tensors by name.

Every data set class has a ``modalities`` tuple of names; images are float32 in [0, 1], channels first.
:mod:`~pyro_mmebm.data.fake` writes tiny generated copies of them, in their official layouts, for smoke runs.
"""

from pyro_mmebm.data._files import DatasetFilesNotFoundError
from pyro_mmebm.data.cub import CUBImageCaption, Vocabulary, tokenize
from pyro_mmebm.data.fake import write_fake_dataset
from pyro_mmebm.data.in_memory import InMemoryBatches
from pyro_mmebm.data.mnist_svhn import MNISTSVHN, match_by_label
from pyro_mmebm.data.polymnist import PolyMNIST, generate_polymnist
from pyro_mmebm.data.subsets import strided_subset, strided_tensors

__all__ = [
    "CUBImageCaption",
    "DatasetFilesNotFoundError",
    "InMemoryBatches",
    "MNISTSVHN",
    "PolyMNIST",
    "Vocabulary",
    "generate_polymnist",
    "match_by_label",
    "strided_subset",
    "strided_tensors",
    "tokenize",
    "write_fake_dataset",
]
