"""Atomic, durable file writes: a reader sees the old file or the complete new one, never a mix.

Every file the library writes that a later run reads (checkpoints, configs, metrics, cached
classifiers and vocabularies, generated data sets) goes through :func:`atomic_path`: the data is
written to a temporary file beside the target, flushed to disk (``fsync``), and renamed over the
target in one step (``os.replace``); the rename itself is then flushed by syncing the folder. A crash
or a kill at any moment leaves either the previous file or the new one, and after a power loss the
renamed file is not an empty or partial one. A folder of many files is written the same way by
:func:`atomic_directory`. Temporary names are ``.<name>.<random>.tmp``.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np


def _fsync(path: Path) -> None:
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _temporary_sibling(path: Path) -> Path:
    """A fresh temporary name beside ``path``: concurrent writers of the same target do not collide."""
    return path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")


def _fsync_folder(folder: Path) -> None:
    if os.name == "posix":  # a folder can be opened and synced on POSIX only
        _fsync(folder)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; when the block succeeds, the file written there is
    flushed to disk and replaces ``path`` in one step.

    Concurrent writers of the same file do not collide (each has its own temporary name). On error
    (or ``KeyboardInterrupt``) the temporary file is removed and ``path`` is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temporary_sibling(path)
    try:
        yield tmp
        _fsync(tmp)
        os.replace(tmp, path)
        _fsync_folder(path.parent)
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a new temporary folder beside ``path``; when the block succeeds, it is renamed to ``path``
    in one step (``path`` must not exist, or be an empty folder).

    On error (or ``KeyboardInterrupt``) the temporary folder and everything in it are removed. The
    files inside are not synced one by one (a folder of images is regenerated, not resumed).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temporary_sibling(path)
    tmp.mkdir()
    try:
        yield tmp
        os.replace(tmp, path)
        _fsync_folder(path.parent)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically and durably."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_save_json(obj: Any, path: str | os.PathLike) -> None:
    """Write ``obj`` as indented JSON (sorted keys) to ``path`` atomically and durably."""
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def atomic_save_npy(path: str | os.PathLike, array: np.ndarray) -> None:
    """``np.save(path, array)``, atomically and durably."""
    with atomic_path(path) as tmp, open(tmp, "wb") as file:
        np.save(file, array)


__all__ = ["atomic_directory", "atomic_path", "atomic_save_json", "atomic_save_npy", "atomic_write_bytes"]
