"""Source files shared by the data sets: MNIST, SVHN and ``.npy`` readers with clear errors."""

from __future__ import annotations

import os
from pathlib import Path
from urllib.error import URLError

import numpy as np
import torch
from torch import Tensor

from pyro_mmebm._torchvision import datasets


class DatasetFilesNotFoundError(FileNotFoundError):
    """The files a data set is read from are missing; the message says which files to put where."""


def missing_files_error(what: str, missing: list[Path], how_to_get: str) -> DatasetFilesNotFoundError:
    """An error listing ``missing`` (full paths) and saying how to obtain them."""
    listing = "\n".join(f"  {path}" for path in missing)
    return DatasetFilesNotFoundError(f"{what}: missing file(s)\n{listing}\n{how_to_get}")


def load_npy(path: str | os.PathLike, *, mmap_mode: str | None = None) -> np.ndarray:
    """``np.load(path)`` of a plain array (no pickles), with an error naming the file when it is
    truncated or not a ``.npy`` array (numpy's own message does not say which file)."""
    try:
        return np.load(path, mmap_mode=mmap_mode, allow_pickle=False)
    except (ValueError, EOFError, OSError) as error:
        raise ValueError(
            f"{path} is truncated or not a .npy array ({error}); delete it and generate or fetch it again"
        ) from error


def check_labels(labels: Tensor | np.ndarray, classes: range, source: str | os.PathLike) -> None:
    """Raise ``ValueError`` naming ``source`` when a label lies outside ``classes``."""
    labels = torch.as_tensor(labels)
    outside = (labels < classes.start) | (labels >= classes.stop)
    if bool(outside.any()):
        raise ValueError(
            f"{source} holds labels outside {classes.start}..{classes.stop - 1} ({int(outside.sum())} of "
            f"them, e.g. {int(labels[outside][0])}): a corrupt or foreign file"
        )


def download_and_extract(url: str, root: str | os.PathLike, what: str) -> None:
    """Fetch the archive at ``url`` into ``root`` and unpack it there (torchvision's downloader).

    :raises DatasetFilesNotFoundError: when the download fails (no network, moved file), saying
        where to put the unpacked archive by hand.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    try:
        datasets.utils.download_and_extract_archive(url, download_root=str(root), remove_finished=True)
    except (URLError, OSError, RuntimeError) as error:
        raise DatasetFilesNotFoundError(
            f"{what}: download of {url} failed ({error}). Download it by hand and unpack it into {root}."
        ) from error


def mnist_files(root: str | os.PathLike) -> list[Path]:
    """The four idx files ``torchvision.datasets.MNIST(root)`` reads (it needs all four for either split)."""
    raw = Path(root) / "MNIST" / "raw"
    kinds = ("images-idx3-ubyte", "labels-idx1-ubyte")
    return [raw / f"{prefix}-{kind}" for prefix in ("train", "t10k") for kind in kinds]


def load_mnist(root: str | os.PathLike, train: bool, download: bool = False) -> tuple[Tensor, Tensor]:
    """MNIST through torchvision: images ``(N, 28, 28)`` uint8 and labels ``(N,)`` int64.

    :param root: folder holding ``MNIST/raw/<idx files>`` (torchvision's layout).
    :raises DatasetFilesNotFoundError: files missing and ``download`` off, or the download failed.
    """
    how = (
        "Put the uncompressed MNIST idx files there (torchvision's layout), "
        "or pass download=True to fetch them online."
    )
    if not download and not all(path.is_file() for path in mnist_files(root)):
        raise missing_files_error("MNIST", [p for p in mnist_files(root) if not p.is_file()], how)
    try:
        mnist = datasets.MNIST(root, train=train, download=download)
    except (RuntimeError, URLError, OSError) as error:
        missing = [p for p in mnist_files(root) if not p.is_file()]
        if missing:
            raise missing_files_error(f"MNIST (download failed: {error})", missing, how) from error
        raise ValueError(
            f"MNIST files in {Path(root) / 'MNIST' / 'raw'} could not be read ({error}): truncated or "
            "corrupt? Delete them and put complete copies there (or fetch them with download=True)."
        ) from error
    labels_file = mnist_files(root)[1 if train else 3]
    check_labels(mnist.targets, range(10), labels_file)
    return mnist.data, mnist.targets


def svhn_file(root: str | os.PathLike, train: bool) -> Path:
    """Where SVHN's ``.mat`` file is expected: ``<root>/SVHN/{train,test}_32x32.mat``."""
    return Path(root) / "SVHN" / ("train_32x32.mat" if train else "test_32x32.mat")


def load_svhn(root: str | os.PathLike, train: bool, download: bool = False) -> tuple[Tensor, Tensor]:
    """SVHN (cropped digits): images ``(N, 3, 32, 32)`` uint8 and labels ``(N,)`` int64 in 0..9.

    The ``.mat`` file is read exactly as ``torchvision.datasets.SVHN`` reads it (``X`` is
    ``(32, 32, 3, N)``, label 10 means digit 0), but without its md5 check, so that any file in
    that format loads; ``download=True`` fetches it with torchvision, which does check the md5.

    :param root: folder holding ``SVHN/train_32x32.mat`` and ``SVHN/test_32x32.mat``.
    :raises DatasetFilesNotFoundError: file missing and ``download`` off, or the download failed.
    """
    import scipy.io

    path = svhn_file(root, train)
    url, filename, md5 = datasets.SVHN.split_list["train" if train else "test"]
    how = f"Put {filename} from {url} there, or pass download=True to fetch it online."
    if download:
        try:
            datasets.utils.download_url(url, str(path.parent), filename, md5)
        except (RuntimeError, URLError, OSError) as error:
            raise missing_files_error(f"SVHN (download failed: {error})", [path], how) from error
    if not path.is_file():
        raise missing_files_error("SVHN", [path], how)
    mat = scipy.io.loadmat(path)
    images = np.ascontiguousarray(np.transpose(mat["X"], (3, 2, 0, 1)))
    labels = mat["y"].astype(np.int64).reshape(-1)
    check_labels(labels, range(1, 11), path)  # 10 stands for the digit 0
    labels = labels % 10
    return torch.from_numpy(images), torch.from_numpy(labels)
