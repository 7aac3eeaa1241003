"""Tiny generated copies of the data sets, in their official file layouts, for smoke runs and tests.

Each writer puts a handful of images per digit (a bright bar whose height gives the digit, on noise)
where the data set's loader looks for its files, so that the whole pipeline (loading, pairing,
training, classifiers, coherence) runs on it in seconds.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image

from pyro_mmebm.data.cub import TEST_CAPTIONS, TRAIN_CAPTIONS
from pyro_mmebm.data.polymnist import PolyMNIST


def _fake_digits(n: int, seed: int, size: int = 28) -> tuple[np.ndarray, np.ndarray]:
    """``n`` uint8 images ``(n, size, size)`` with labels ``0..9`` cycling: a bright bar per digit."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 10
    images = rng.integers(0, 40, (n, size, size), dtype=np.uint8)
    for image, label in zip(images, labels):
        image[2 * label + 4 : 2 * label + 8, 4:-4] = 255
    return images, labels


def _write_idx(path: Path, array: np.ndarray) -> None:
    """An MNIST idx file: magic ``0x0800 | ndim`` byte code 8 (uint8), big-endian sizes, then the data."""
    header = bytes([0, 0, 8, array.ndim]) + b"".join(int(n).to_bytes(4, "big") for n in array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def write_fake_mnist(root: Path, seed: int) -> None:
    """torchvision's MNIST layout ``<root>/MNIST/raw/*-ubyte``: 50 training and 30 test images."""
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for prefix, n, offset in (("train", 50, 0), ("t10k", 30, 1)):
        images, labels = _fake_digits(n, seed + offset)
        _write_idx(raw / f"{prefix}-images-idx3-ubyte", images)
        _write_idx(raw / f"{prefix}-labels-idx1-ubyte", labels)


def write_fake_mnist_svhn(root: Path, seed: int) -> None:
    """MNIST as :func:`write_fake_mnist` and SVHN's ``<root>/SVHN/{train,test}_32x32.mat``."""
    import scipy.io

    write_fake_mnist(root, seed)
    (root / "SVHN").mkdir(parents=True, exist_ok=True)
    for name, n, offset in (("train_32x32.mat", 50, 2), ("test_32x32.mat", 30, 3)):
        images, labels = _fake_digits(n, seed + offset, size=32)
        # SVHN's .mat layout: X is (32, 32, 3, N), y is (N, 1) with 10 for the digit 0.
        x = np.repeat(images[..., None], 3, axis=-1).transpose(1, 2, 3, 0)
        scipy.io.savemat(root / "SVHN" / name, {"X": x, "y": np.where(labels == 0, 10, labels)[:, None]})


def write_fake_polymnist(root: Path, seed: int) -> None:
    """The official release layout ``<root>/<split>/m0..m4/<index>.<label>.png``."""
    for split, n, offset in (("train", 40, 0), ("test", 20, 1)):
        for k in range(len(PolyMNIST.modalities)):
            images, labels = _fake_digits(n, seed + 10 * k + offset)
            folder = root / split / f"m{k}"
            folder.mkdir(parents=True, exist_ok=True)
            colour = np.array([(k * 50) % 256, 128, 255 - k * 40], dtype=np.uint8)
            for index, (image, label) in enumerate(zip(images, labels)):
                rgb = np.where(image[..., None] > 128, colour, image[..., None]).astype(np.uint8)
                Image.fromarray(rgb).save(folder / f"{index}.{label}.png")


_FAKE_WORDS = ("this", "bird", "has", "a", "red", "blue", "small", "wing", "beak", "long", "tail", "and")


def write_fake_cub(root: Path, seed: int) -> None:
    """MMVAE's CUB layout under ``<root>/cub``: captions (10 per image) and ``<split>/<class>/*.jpg``."""
    rng = np.random.default_rng(seed)
    cub = root / "cub"
    splits = (("train", TRAIN_CAPTIONS, ("001.A", "002.B")), ("test", TEST_CAPTIONS, ("003.C", "004.D")))
    for split, captions_name, classes in splits:
        captions = []
        for label, name in enumerate(classes):
            folder = cub / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(2):
                image = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
                image[:, :, label % 3] = 255
                Image.fromarray(image).save(folder / f"{i}.jpg")
                captions += [" ".join(rng.choice(_FAKE_WORDS, 6)) + " ." for _ in range(10)]
        (cub / captions_name).write_text("\n".join(captions) + "\n")


FAKE_WRITERS: dict[str, Callable[[Path, int], None]] = {
    "mnist_svhn": write_fake_mnist_svhn,
    "polymnist": write_fake_polymnist,
    "cub": write_fake_cub,
}
"""``(root, seed) -> None`` by data set name: a tiny copy of it under ``root``."""


def write_fake_dataset(dataset: str, root: str | Path, seed: int = 0) -> Path:
    """Write a tiny generated copy of ``dataset`` (a key of :data:`FAKE_WRITERS`) in its official layout
    under ``root``; return ``root``."""
    root = Path(root)
    FAKE_WRITERS[dataset](root, seed)
    return root


__all__ = [
    "FAKE_WRITERS",
    "write_fake_cub",
    "write_fake_dataset",
    "write_fake_mnist",
    "write_fake_mnist_svhn",
    "write_fake_polymnist",
]
