"""Time per PolyMNIST training batch: the ``DataLoader`` over items against ``InMemoryBatches``.

    OMP_NUM_THREADS=1 python bench/data_loading.py --batches 100

Both draw shuffled batches of ``--batch-size`` tuples of the five modalities as float32 in [0, 1],
on one thread; the first batch of each is not timed. Prints milliseconds per batch.
"""

from __future__ import annotations

import argparse
import time

import torch
from torch.utils.data import DataLoader

from pyro_mmebm.data import InMemoryBatches, PolyMNIST


def ms_per_batch(batches, count: int) -> float:
    iterator = iter(batches)
    next(iterator)
    started = time.perf_counter()
    for _ in range(count):
        next(iterator)
    return 1000 * (time.perf_counter() - started) / count


def main(args: argparse.Namespace) -> None:
    torch.set_num_threads(1)
    source = (args.source_root, f"{args.source_root}/PolyMNIST/backgrounds")
    dataset = PolyMNIST(args.data_root, train=True, generate_from=source)
    started = time.perf_counter()
    modalities, labels = dataset.tensors()
    print(f"tensors(): {time.perf_counter() - started:.1f} s for {len(labels)} tuples")
    loader = ms_per_batch(DataLoader(dataset, batch_size=args.batch_size, shuffle=True), args.batches)
    sliced = ms_per_batch(InMemoryBatches(modalities, labels, args.batch_size), args.batches)
    print(f"| DataLoader over items | {loader:.1f} ms |\n| InMemoryBatches | {sliced:.1f} ms |")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", default="./data/PolyMNIST")
    parser.add_argument("--source-root", default="../shared/data")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--batches", type=int, default=100)
    main(parser.parse_args())
