"""PolyMNIST: five "views" of a digit class, each an MNIST digit drawn on a different background.

[1] Sutter, Daunhawer, Vogt (2021) "Generalized Multimodal ELBO" (ICLR), the data set's recipe and
    official release.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from pyro_mmebm.atomic import atomic_directory, atomic_path, atomic_save_npy
from pyro_mmebm.data._files import DatasetFilesNotFoundError, check_labels, download_and_extract, load_mnist, load_npy

MODALITIES: tuple[str, ...] = ("m0", "m1", "m2", "m3", "m4")
IMAGE_SIZE = 28
BACKGROUND_SUFFIXES = (".jpg", ".jpeg", ".png")
_SPLIT_STREAM = {"train": 0, "test": 1}
_CHUNK = 2048


def load_backgrounds(backgrounds_dir: str | os.PathLike) -> list[np.ndarray]:
    """The five background images, uint8 ``(H, W, 3)``, in sorted file-name order (= ``m0..m4``)."""
    backgrounds_dir = Path(backgrounds_dir)
    files = sorted(p for p in backgrounds_dir.glob("*") if p.suffix.lower() in BACKGROUND_SUFFIXES)
    if len(files) != len(MODALITIES):
        raise DatasetFilesNotFoundError(
            f"PolyMNIST needs exactly {len(MODALITIES)} background images ({', '.join(BACKGROUND_SUFFIXES)}) "
            f"in {backgrounds_dir}, one per modality in sorted file-name order; found {len(files)}"
        )
    backgrounds = []
    for file in files:
        with Image.open(file) as image:
            background = np.asarray(image.convert("RGB"))
        if min(background.shape[:2]) <= IMAGE_SIZE:
            height, width = background.shape[:2]
            raise ValueError(f"background {file} is {width}×{height}; it must exceed 28×28")
        backgrounds.append(background)
    return backgrounds


def distinct_permutations(n: int, k: int, rng: np.random.Generator) -> np.ndarray:
    """``k`` random permutations of ``range(n)``, the columns of an ``(n, k)`` array, no value twice in a row.

    Columns are drawn independently, as in the original recipe [1]; each row that repeats a value
    of an earlier column is then repaired by swapping with a uniformly drawn row for which the swap
    leaves both rows free of repeats (such a row exists whenever ``n >= 2k - 1``).
    """
    if n < 2 * k - 1:
        raise ValueError(f"need at least {2 * k - 1} items to draw {k} permutations without repeats, got {n}")
    columns = np.stack([rng.permutation(n) for _ in range(k)], axis=1)
    for m in range(1, k):
        earlier, column = columns[:, :m], columns[:, m]
        for row in np.flatnonzero((earlier == column[:, None]).any(axis=1)):
            if not (earlier[row] == column[row]).any():
                continue  # already repaired as the partner of an earlier swap
            valid = ~np.isin(column, earlier[row]) & ~(earlier == column[row]).any(axis=1)
            partner = rng.choice(np.flatnonzero(valid))
            column[row], column[partner] = column[partner], column[row]
    return columns


def same_label_tuples(labels: np.ndarray, k: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Tuples of ``k`` different examples of one class, every example used once per position.

    :returns: indices ``(N, k)`` into ``labels`` and tuple labels ``(N,)``, grouped by class
        (increasing), ``N = len(labels)``.
    """
    sources, tuple_labels = [], []
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        sources.append(members[distinct_permutations(len(members), k, rng)])
        tuple_labels.append(np.full(len(members), label, dtype=np.int64))
    return np.concatenate(sources), np.concatenate(tuple_labels)


def compose(background: np.ndarray, digits: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """PolyMNIST images: 28×28 background crops with the colours inverted where the digit is above 128.

    :param background: uint8 ``(H, W, 3)``.
    :param digits: uint8 MNIST images ``(B, 28, 28)``.
    :param offsets: top-left corners ``(B, 2)`` as (row, column).
    :returns: uint8 ``(B, 28, 28, 3)``.
    """
    span = np.arange(IMAGE_SIZE)
    rows = offsets[:, 0, None] + span
    cols = offsets[:, 1, None] + span
    crops = background[rows[:, :, None], cols[:, None, :]]
    return np.where(digits[..., None] > 128, 255 - crops, crops)


def generate_polymnist(
    mnist_root: str | os.PathLike,
    backgrounds_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    seed: int = 0,
    splits: Sequence[str] = ("train", "test"),
    export_png: bool = False,
    progress: bool = True,
) -> None:
    """Generate PolyMNIST from MNIST and the five backgrounds by the published recipe [1].

    Each MNIST image of a split is used once per modality; a tuple holds five different images of
    one digit (see :func:`same_label_tuples`), so 60,000 train and 10,000 test tuples, grouped by
    digit. Modality ``m`` crops a uniformly placed 28×28 patch of background ``m`` (offsets in
    ``[0, size - 28)``, as the original) and inverts its colours where the digit's pixel exceeds 128.
    Deterministic given ``seed``; each split has its own random stream.

    Writes, atomically, for each split: ``<out>/<split>_images.npy`` uint8 ``(N, 5, 28, 28, 3)``,
    ``<split>_labels.npy`` int64 ``(N,)`` and ``<split>_sources.npy`` int64 ``(N, 5)`` (the MNIST
    indices used); with ``export_png`` also the official layout ``<out>/<split>/m<k>/<index>.<label>.png``
    (refused if that folder exists).

    :param mnist_root: folder with ``MNIST/raw/*-ubyte`` (torchvision's layout).
    :param backgrounds_dir: folder with exactly five images, modality order = sorted file names.
    """
    backgrounds = load_backgrounds(backgrounds_dir)
    out_dir = Path(out_dir)
    for split in splits:
        if export_png and (out_dir / split).exists():
            raise FileExistsError(f"{out_dir / split} exists; remove it or generate without export_png")
        digits, mnist_labels = (t.numpy() for t in load_mnist(mnist_root, train=split == "train"))
        rng = np.random.default_rng([seed, _SPLIT_STREAM[split]])
        sources, labels = same_label_tuples(mnist_labels, len(MODALITIES), rng)
        offsets = np.stack([_crop_corners(b, len(labels), rng) for b in backgrounds], axis=1)
        atomic_save_npy(out_dir / f"{split}_sources.npy", sources)
        images_path = out_dir / f"{split}_images.npy"
        with atomic_path(images_path) as tmp:
            shape = (len(labels), len(MODALITIES), IMAGE_SIZE, IMAGE_SIZE, 3)
            images = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=shape)
            with tqdm(total=len(labels), desc=f"PolyMNIST {split}", unit="tuple", disable=not progress) as bar:
                for start in range(0, len(labels), _CHUNK):
                    rows = slice(start, start + _CHUNK)
                    views = [compose(b, digits[sources[rows, m]], offsets[rows, m]) for m, b in enumerate(backgrounds)]
                    images[rows] = np.stack(views, axis=1)
                    bar.update(len(views[0]))
            images.flush()
            del images
        atomic_save_npy(out_dir / f"{split}_labels.npy", labels)
        if export_png:
            export_png_layout(np.load(images_path, mmap_mode="r"), labels, out_dir / split, progress)


def _crop_corners(background: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` top-left corners (row, column) of 28×28 crops, uniform in ``[0, size - 28)`` as the original."""
    return np.stack([rng.integers(0, background.shape[axis] - IMAGE_SIZE, n) for axis in (0, 1)], axis=1)


def export_png_layout(images: np.ndarray, labels: np.ndarray, split_dir: Path, progress: bool = True) -> None:
    """Write tuples ``(N, 5, 28, 28, 3)`` as the official release does: ``<split_dir>/m<k>/<index>.<label>.png``.

    The folder is written under a temporary name and renamed when complete
    (:func:`~pyro_mmebm.atomic.atomic_directory`).
    """
    with atomic_directory(split_dir) as tmp:
        for name in MODALITIES:
            (tmp / name).mkdir()
        for index in tqdm(range(len(labels)), desc=f"PNG {split_dir.name}", unit="tuple", disable=not progress):
            for m, name in enumerate(MODALITIES):
                Image.fromarray(np.asarray(images[index, m])).save(tmp / name / f"{index}.{labels[index]}.png")


POLYMNIST_URL = "https://zenodo.org/record/4899160/files/PolyMNIST.zip"
"""The official release of Sutter et al. (2021): ``PolyMNIST/{train,test}/m0..m4/<index>.<label>.png``."""


def _adopt_nested_layout(root: Path) -> None:
    """Move ``<root>/<folder>/{train,test}`` (as the release unpacks) up to ``<root>/{train,test}``."""
    for folder in [path for path in root.iterdir() if (path / "train" / "m0").is_dir()]:
        for split in ("train", "test"):
            if (folder / split).is_dir() and not (root / split).exists():
                (folder / split).rename(root / split)


class PolyMNIST(Dataset):
    """PolyMNIST [1]: an item is ``({"m0": (3, 28, 28), ..., "m4": (3, 28, 28)}, label)``, float32 in [0, 1].

    Read from ``root``, first found of:

    1. arrays written by :func:`generate_polymnist`: ``<root>/<split>_images.npy`` and
       ``<split>_labels.npy`` (memory-mapped);
    2. the official release layout ``<root>/<split>/m0..m4/<index>.<label>.png`` (checked on
       construction for folders, matching indices and labels; each image is checked for being
       readable and 28×28 when read);
    3. otherwise, with ``download=True``, the official release (:data:`POLYMNIST_URL`) is fetched
       and unpacked into ``root`` and read as in 2;
    4. otherwise, with ``generate_from=(mnist_root, backgrounds_dir)``, the split is generated into
       ``root`` (seed 0; call :func:`generate_polymnist` for another seed) and read as in 1.

    Items are grouped by digit: shuffle when loading, and use :func:`strided_subset` for subsets.

    :param root: data folder (``<split>`` is ``train`` or ``test``).
    :param train: training split if true, else the test split.
    :param download: fetch the official release when nothing is found in ``root``.
    :param generate_from: ``(mnist_root, backgrounds_dir)`` to generate from when nothing is found.
    """

    modalities: tuple[str, ...] = MODALITIES

    def __init__(
        self,
        root: str | os.PathLike,
        train: bool = True,
        generate_from: tuple[str | os.PathLike, str | os.PathLike] | None = None,
        download: bool = False,
    ) -> None:
        root = Path(root)
        split = "train" if train else "test"
        images_path, labels_path = root / f"{split}_images.npy", root / f"{split}_labels.npy"
        arrays_found = images_path.is_file() and labels_path.is_file()
        if download and not arrays_found and not (root / split).is_dir():
            download_and_extract(POLYMNIST_URL, root, "PolyMNIST")
            _adopt_nested_layout(root)
        if not arrays_found and not (root / split).is_dir():
            if generate_from is None:
                missing = ", ".join(str(path) for path in (images_path, labels_path) if not path.is_file())
                raise DatasetFilesNotFoundError(
                    f"PolyMNIST {split} split not found in {root}: missing {missing} (from generate_polymnist) "
                    f"and the official PNG layout {root / split}/m0..m4/<index>.<label>.png; pass download=True "
                    "(--download) to fetch the official release, or generate_from=(mnist_root, backgrounds_dir) "
                    "(--source-root, a folder with MNIST/raw and PolyMNIST/backgrounds) to generate it"
                )
            generate_polymnist(*generate_from, root, splits=(split,))
            arrays_found = True
        if arrays_found:
            self._tuples: _ArrayTuples | _PngTuples = _ArrayTuples(images_path)
            labels = load_npy(labels_path)
            if len(labels) != len(self._tuples.images):
                raise ValueError(
                    f"{labels_path} has {len(labels)} labels but {images_path} has {len(self._tuples.images)} tuples"
                )
        else:
            paths, labels = _read_png_layout(root / split)
            self._tuples = _PngTuples(paths)
        check_labels(labels, range(10), labels_path if arrays_found else root / split)
        self.labels = torch.from_numpy(labels)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[dict[str, Tensor], int]:
        images = torch.from_numpy(self._tuples[index]).permute(0, 3, 1, 2).float() / 255
        return dict(zip(self.modalities, images)), int(self.labels[index])

    def tensors(self) -> tuple[dict[str, Tensor], Tensor]:
        """The whole split in memory, ``({modality: uint8 (N, 3, 28, 28)}, labels (N,))``, for
        :class:`~pyro_mmebm.data.InMemoryBatches` (about 118 MB per modality for the training split)."""
        images = torch.from_numpy(self._tuples.all()).permute(1, 0, 4, 2, 3).contiguous()
        return dict(zip(self.modalities, images.unbind(0))), self.labels.clone()


class _ArrayTuples:
    """Tuples from the memory-mapped uint8 array ``(N, 5, 28, 28, 3)`` at ``path``.

    Pickled as its path, so that DataLoader workers started by spawn map the file, not copy it.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.images = load_npy(path, mmap_mode="r")
        if self.images.shape[1:] != (len(MODALITIES), IMAGE_SIZE, IMAGE_SIZE, 3) or self.images.dtype != np.uint8:
            raise ValueError(f"{path} must hold uint8 (N, 5, 28, 28, 3), got {self.images.dtype} {self.images.shape}")

    def __getstate__(self) -> dict:
        return {"path": self.path}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["path"])

    def __getitem__(self, index: int) -> np.ndarray:
        return np.array(self.images[index])

    def all(self) -> np.ndarray:
        return np.array(self.images)


class _PngTuples:
    """Tuples read from five PNG files each, checked when read."""

    def __init__(self, paths: list[tuple[str, ...]]) -> None:
        self.paths = paths

    def __getitem__(self, index: int) -> np.ndarray:
        return np.stack([_read_png(path) for path in self.paths[index]])

    def all(self) -> np.ndarray:
        return np.stack([self[index] for index in range(len(self.paths))])


def _read_png(path: str) -> np.ndarray:
    try:
        with Image.open(path) as image:
            array = np.asarray(image.convert("RGB"))
    except OSError as error:
        raise ValueError(f"corrupt PolyMNIST image {path}: {error}") from error
    if array.shape[:2] != (IMAGE_SIZE, IMAGE_SIZE):
        raise ValueError(f"PolyMNIST image {path} is {array.shape[1]}×{array.shape[0]}, expected 28×28")
    return array


def _read_png_layout(split_dir: Path) -> tuple[list[tuple[str, ...]], np.ndarray]:
    """File paths ``(m0..m4)`` per tuple and labels, sorted by index, from ``<split_dir>/m<k>/<index>.<label>.png``."""
    folders = [split_dir / name for name in MODALITIES]
    missing = [folder for folder in folders if not folder.is_dir()]
    if missing:
        raise DatasetFilesNotFoundError(
            f"PolyMNIST PNG layout in {split_dir} lacks the modality folder(s) {', '.join(map(str, missing))}"
        )
    entries = [_index_png_folder(folder) for folder in folders]
    reference = entries[0]
    if not reference:
        raise DatasetFilesNotFoundError(f"no <index>.<label>.png files in {folders[0]}")
    for folder, entry in zip(folders[1:], entries[1:]):
        if len(entry) != len(reference):
            raise ValueError(f"{folder} has {len(entry)} images but {folders[0]} has {len(reference)}")
        if entry.keys() != reference.keys():
            index = min(entry.keys() ^ reference.keys())
            raise ValueError(f"index {index} is in only one of {folders[0]} and {folder}")
        for index, (label, _) in entry.items():
            if label != reference[index][0]:
                raise ValueError(
                    f"index {index} has label {reference[index][0]} in {folders[0]} but {label} in {folder}"
                )
    indices = sorted(reference)
    paths = [tuple(entry[index][1] for entry in entries) for index in indices]
    labels = np.array([reference[index][0] for index in indices], dtype=np.int64)
    return paths, labels


def _index_png_folder(folder: Path) -> dict[int, tuple[int, str]]:
    """``{index: (label, path)}`` for the files ``<index>.<label>.png`` of ``folder``."""
    entries = {}
    for path in folder.glob("*.png"):
        index, label = path.name[: -len(".png")].partition(".")[::2]
        if not (index.isdigit() and label.isdigit()):
            raise ValueError(f"unexpected file name {path}: PolyMNIST files are named <index>.<label>.png")
        if int(index) in entries:
            raise ValueError(f"index {index} appears twice in {folder}: {entries[int(index)][1]} and {path}")
        entries[int(index)] = (int(label), str(path))
    return entries
