"""Training on several processes and machines: PyTorch's ``torch.distributed``, launched by ``torchrun``.

One process per GPU (or per CPU worker), each holding a full copy of the model; every process trains
on its own shard of each epoch and the gradients are averaged across processes after every backward
pass by :class:`~torch.nn.parallel.DistributedDataParallel` (DDP). Launch any training script of
this library with ``torchrun`` instead of ``python``::

    torchrun --nproc_per_node 4 examples/polymnist.py --out runs/polymnist        # 4 GPUs of one machine
    torchrun --nnodes 2 --node_rank 0 --nproc_per_node 8 \\
        --rdzv_backend c10d --rdzv_endpoint HOST:29500 examples/polymnist.py ...     # 2 machines

``torchrun`` sets ``RANK``, ``LOCAL_RANK`` and ``WORLD_SIZE``; :func:`init_from_environment` reads
them and joins the process group (``nccl`` on GPUs, ``gloo`` on CPU), and
:func:`pyro_mmebm.fit` notices the group and trains data-parallel. ``--batch-size`` is then the
batch of one process: a step of ``N`` processes sees ``N`` batches, and its gradient equals that of
one process on the concatenated batch (the loss, a sum over examples, is scaled by ``N`` before DDP
averages).

Random streams: rank 0 keeps the run's seed and continues its random stream across epochs, as a
single process does (so ``N = 1`` is exactly the single-process run); every other rank re-seeds at the
start of each epoch with :func:`rank_seed` ``(seed, rank, epoch)``. A run is therefore reproducible for
a given number of processes, and a resumed run continues exactly as the uninterrupted one.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterable, Iterator, Optional, Sequence

import pyro
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, DistributedSampler

from pyro_mmebm.data.in_memory import InMemoryBatches

_SEED_STRIDE = 1_000_003
"""A prime spacing the seeds of ranks and epochs apart (:func:`rank_seed`)."""


@dataclass(frozen=True)
class ProcessGroup:
    """Where this process stands in a data-parallel run: ``rank`` of ``world_size`` processes.

    ``ProcessGroup()`` (rank 0 of 1) is the single process of an ordinary run.
    """

    rank: int = 0
    world_size: int = 1

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Whether this process writes files and shows progress (rank 0)."""
        return self.rank == 0

    @classmethod
    def current(cls) -> "ProcessGroup":
        """The joined ``torch.distributed`` group, or a single process when none is joined."""
        if dist.is_available() and dist.is_initialized():
            return cls(dist.get_rank(), dist.get_world_size())
        return cls()

    def barrier(self) -> None:
        if self.is_distributed:
            dist.barrier()

    def sum(self, values: Sequence[float], device: torch.device) -> list[float]:
        """``values`` summed over every process (one ``all_reduce``); ``values`` itself for one process."""
        if not self.is_distributed:
            return [float(v) for v in values]
        total = torch.tensor([float(v) for v in values], dtype=torch.float64, device=device)
        dist.all_reduce(total)
        return total.tolist()

    def broadcast(self, value: Any) -> Any:
        """Rank 0's ``value`` (picklable Python data) on every process."""
        if not self.is_distributed:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]


def rank_seed(seed: int, rank: int, epoch: int) -> int:
    """The seed of ``rank`` (> 0) for ``epoch``: distinct for every ``(rank, epoch)`` of a run."""
    return (seed + _SEED_STRIDE * (rank + 1000 * epoch)) % 2**63


def seed_epoch(group: ProcessGroup, seed: int, epoch: int) -> None:
    """Re-seed every rank but 0 for ``epoch`` (rank 0 continues the run's stream; see the module notes)."""
    if group.rank > 0:
        pyro.set_rng_seed(rank_seed(seed, group.rank, epoch))


def init_from_environment(device: str = "auto") -> tuple[ProcessGroup, Optional[str]]:
    """Join the process group that ``torchrun`` describes in the environment; return it and the device.

    Without ``WORLD_SIZE`` > 1 in the environment this does nothing and returns ``device`` as given.
    Otherwise it initialises ``torch.distributed`` (``nccl`` when the run uses CUDA, ``gloo`` on CPU)
    and returns ``cuda:LOCAL_RANK`` for a CUDA run (one GPU per process), ``cpu`` for a CPU run.

    :raises ValueError: when a CUDA device is asked for on a machine without one, or with fewer GPUs
        than processes on this node.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return ProcessGroup(), device
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    if use_cuda:
        if not torch.cuda.is_available():
            raise ValueError(f"device {device!r} was asked for, but CUDA is not available on this machine")
        if local_rank >= torch.cuda.device_count():
            raise ValueError(
                f"process {local_rank} of this node has no GPU: {torch.cuda.device_count()} GPUs here; "
                "launch at most that many processes per node (torchrun --nproc_per_node)"
            )
        torch.cuda.set_device(local_rank)
        device = f"cuda:{local_rank}"
    else:
        device = "cpu"
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return ProcessGroup.current(), device


def shard_loader(loader: Iterable, group: ProcessGroup, seed: int) -> Iterable:
    """``loader`` restricted to this process's shard of every epoch (``loader`` itself for one process).

    :class:`~pyro_mmebm.data.InMemoryBatches` and ``DataLoader`` s over map-style data sets are
    sharded as ``DistributedSampler`` does: one permutation per epoch drawn from ``seed + epoch`` on
    every process, padded to a multiple of the number of processes and dealt out by rank, so that every
    process runs the same number of steps. Call ``set_epoch(epoch)`` (see :func:`set_epoch`) before
    each epoch.

    :raises TypeError: for a loader that cannot be sharded (an iterable data set, or a ``DataLoader``
        with its own sampler): shard it yourself, e.g. with ``DistributedSampler``.
    """
    if not group.is_distributed:
        return loader
    if isinstance(loader, InMemoryBatches):
        return loader.sharded(group.rank, group.world_size, seed)
    if isinstance(loader, DataLoader):
        if isinstance(loader.sampler, DistributedSampler):
            return loader
        if not hasattr(loader.dataset, "__len__") or loader.batch_sampler is None:
            raise TypeError(
                "cannot shard a DataLoader without a map-style data set and batch size over processes: "
                "pass one with a DistributedSampler"
            )
        sampler = DistributedSampler(loader.dataset, group.world_size, group.rank, shuffle=True, seed=seed)
        return DataLoader(
            loader.dataset, batch_size=loader.batch_size, sampler=sampler, num_workers=loader.num_workers,
            collate_fn=loader.collate_fn, pin_memory=loader.pin_memory, drop_last=loader.drop_last,
        )
    raise TypeError(
        f"cannot shard a {type(loader).__name__} over {group.world_size} processes: pass InMemoryBatches or a "
        "DataLoader (sharded with DistributedSampler), or one already sharded for this rank"
    )


def set_epoch(loader: Iterable, epoch: int) -> None:
    """Tell a sharded loader which epoch starts (its permutation depends on it); no-op for others."""
    if isinstance(loader, DataLoader) and isinstance(loader.sampler, DistributedSampler):
        loader.sampler.set_epoch(epoch)
    elif hasattr(loader, "set_epoch"):
        loader.set_epoch(epoch)


@contextmanager
def process_group_from_environment(device: str = "auto") -> Iterator[tuple[ProcessGroup, str]]:
    """:func:`init_from_environment` for the length of a ``with`` block, leaving the group at its end
    (if this call joined it): ``with process_group_from_environment(args.device) as (group, device):``."""
    joined_here = not (dist.is_available() and dist.is_initialized())
    group, device = init_from_environment(device)
    try:
        yield group, device
    finally:
        if joined_here and group.is_distributed:
            dist.destroy_process_group()


__all__ = [
    "ProcessGroup",
    "init_from_environment",
    "rank_seed",
    "process_group_from_environment",
    "seed_epoch",
    "set_epoch",
    "shard_loader",
]
