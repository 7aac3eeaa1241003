"""Atomic, durable file writes: a reader sees the old file or the complete new one, never a mix.

Every file the library writes that a later run reads (checkpoints, configs, metrics, cached
classifiers, generated data sets) goes through :func:`atomic_path`: the data is written to a
temporary file beside the target, flushed to disk (``fsync``), and renamed over the target in one
step (``os.replace``); the rename itself is then flushed by syncing the folder. A crash or a kill at
any moment leaves either the previous file or the new one, and after a power loss the renamed file
is not an empty or partial one.
"""

from __future__ import annotations

import contextlib
import json
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def _fsync(path: Path) -> None:
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; when the block succeeds, the file written there is
    flushed to disk and replaces ``path`` in one step.

    Concurrent writers of the same file do not collide (each has its own temporary name). On error
    (or ``KeyboardInterrupt``) the temporary file is removed and ``path`` is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        yield tmp
        _fsync(tmp)
        os.replace(tmp, path)
        if os.name == "posix":  # a folder can be opened and synced on POSIX only
            _fsync(path.parent)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically and durably."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_save_json(obj: Any, path: str | os.PathLike) -> None:
    """Write ``obj`` as indented JSON (sorted keys) to ``path`` atomically and durably."""
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


__all__ = ["atomic_path", "atomic_save_json", "atomic_write_bytes"]
