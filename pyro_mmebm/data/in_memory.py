"""Mini-batches of a multimodal data set held in memory, each one index into stored tensors.

A ``DataLoader`` over a map-style data set builds every batch item by item (``__getitem__``, a
conversion per image, then collation of dicts): on PolyMNIST that costs ~170 ms per batch of 128 on
one CPU core, a tenth of a training step there and nearly all of one on a GPU. Data sets that fit in
memory instead keep their images as ``uint8`` tensors, one per modality, and a batch is a single
``index_select`` per modality, converted to float once (on the device, when the tensors live there).
"""

from __future__ import annotations

import copy
import math
from typing import Iterator, Mapping, Optional

import torch
from torch import Tensor


class InMemoryBatches:
    """Shuffled mini-batches ``({modality: float tensor}, labels)`` sliced from in-memory tensors.

    A drop-in for a ``DataLoader`` in :func:`pyro_mmebm.fit` and the evaluation: iterating gives one
    epoch; ``len`` is its number of batches. The order comes from torch's global random stream (so a
    checkpoint, which saves that stream, resumes the same order). ``uint8`` images are divided by 255
    into float32 per batch, exactly as the data sets' ``__getitem__`` does.

    For data-parallel training, :meth:`sharded` gives one process's part of every epoch.

    :param modalities: ``{name: tensor (N, *item_shape)}``, ``uint8`` (images in 0..255) or floating.
    :param labels: ``(N,)`` integer labels, or ``None``.
    :param batch_size: examples per batch.
    :param shuffle: a fresh random order every epoch (else the stored order).
    :param epoch_size: examples per epoch (default: all ``N``), drawn without replacement.
    :param drop_last: drop a last batch smaller than ``batch_size``.
    """

    def __init__(
        self,
        modalities: Mapping[str, Tensor],
        labels: Optional[Tensor],
        batch_size: int,
        *,
        shuffle: bool = True,
        epoch_size: Optional[int] = None,
        drop_last: bool = False,
    ) -> None:
        if not modalities:
            raise ValueError("InMemoryBatches needs at least one modality")
        sizes = {name: int(x.shape[0]) for name, x in modalities.items()}
        if len(set(sizes.values())) != 1:
            raise ValueError(f"modalities hold different numbers of examples: {sizes}")
        self.num_examples = next(iter(sizes.values()))
        if labels is not None and labels.shape[:1] != (self.num_examples,):
            raise ValueError(f"labels have shape {tuple(labels.shape)}, expected ({self.num_examples},)")
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        if epoch_size is not None and not 0 < epoch_size <= self.num_examples:
            raise ValueError(f"epoch_size must be in 1..{self.num_examples}, got {epoch_size}")
        self.modalities = dict(modalities)
        self.labels = labels
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.epoch_size = epoch_size or self.num_examples
        self.drop_last = drop_last
        self.rank, self.world_size, self.seed, self.epoch = 0, 1, 0, 0

    def sharded(self, rank: int, world_size: int, seed: int) -> "InMemoryBatches":
        """The batches of process ``rank`` of ``world_size``, as ``DistributedSampler`` deals them.

        Every epoch's order is drawn from ``seed + epoch`` (set with :meth:`set_epoch`) on every
        process, padded by repeating its start to a multiple of ``world_size``, and dealt out by rank:
        the shards of an epoch are disjoint (but for the padding) and all have the same length.
        """
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in 0..{world_size - 1}, got {rank}")
        shard = copy.copy(self)
        shard.rank, shard.world_size, shard.seed = rank, world_size, seed
        return shard

    def set_epoch(self, epoch: int) -> None:
        """The epoch whose order a sharded loader deals out next."""
        self.epoch = epoch

    @property
    def _examples_per_process(self) -> int:
        return math.ceil(self.epoch_size / self.world_size)

    def to(self, device: torch.device | str) -> "InMemoryBatches":
        """Move the stored tensors to ``device`` (the whole data set on the GPU); return ``self``."""
        self.modalities = {name: x.to(device) for name, x in self.modalities.items()}
        if self.labels is not None:
            self.labels = self.labels.to(device)
        return self

    def __len__(self) -> int:
        rounding = math.floor if self.drop_last else math.ceil
        return rounding(self._examples_per_process / self.batch_size)

    def _order(self) -> Tensor:
        if self.world_size == 1:
            return torch.randperm(self.num_examples) if self.shuffle else torch.arange(self.num_examples)
        if self.shuffle:
            order = torch.randperm(self.num_examples, generator=torch.Generator().manual_seed(self.seed + self.epoch))
        else:
            order = torch.arange(self.num_examples)
        order = order[: self.epoch_size]
        padded = torch.cat([order, order[: self._examples_per_process * self.world_size - self.epoch_size]])
        return padded[self.rank :: self.world_size]

    def __iter__(self) -> Iterator[tuple[dict[str, Tensor], Optional[Tensor]]]:
        device = next(iter(self.modalities.values())).device
        order = self._order()[: self._examples_per_process].to(device)
        for batch in range(len(self)):
            index = order[batch * self.batch_size : (batch + 1) * self.batch_size]
            images = {name: _as_float(x.index_select(0, index)) for name, x in self.modalities.items()}
            yield images, None if self.labels is None else self.labels.index_select(0, index)


def _as_float(x: Tensor) -> Tensor:
    return x.float().div_(255) if x.dtype == torch.uint8 else x


__all__ = ["InMemoryBatches"]
