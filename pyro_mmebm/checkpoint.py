"""Atomic, resumable checkpoints: weights and optimiser state, with the run's config as JSON beside."""

from __future__ import annotations

import json
import os
import random
from pathlib import Path
from typing import Any, Mapping, Optional

import numpy as np
import torch
from torch import nn

CHECKPOINT_NAME = "checkpoint.pt"
CONFIG_NAME = "config.json"
FORMAT = "pyro_mmebm.checkpoint/1"


class CheckpointError(RuntimeError):
    """A checkpoint file is unreadable or does not belong to the model it is loaded into."""


def atomic_write_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def atomic_save_json(obj: Any, path: Path) -> None:
    atomic_write_bytes(Path(path), (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def _rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: Mapping[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(
    directory: str | os.PathLike,
    modules: Mapping[str, nn.Module],
    optimizer: Optional[torch.optim.Optimizer],
    *,
    epoch: int,
    history: list[dict],
    config: Optional[Mapping[str, Any]] = None,
) -> Path:
    """Write ``directory/checkpoint.pt`` (and ``config.json``) atomically; return the checkpoint path.

    A crash while writing leaves the previous checkpoint intact.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    payload = {
        "format": FORMAT,
        "modules": {name: module.state_dict() for name, module in modules.items()},
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "epoch": epoch,
        "history": history,
        "rng": _rng_state(),
        "config": dict(config or {}),
    }
    path = directory / CHECKPOINT_NAME
    tmp = path.with_name(path.name + ".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)
    if config is not None:
        atomic_save_json(dict(config), directory / CONFIG_NAME)
    return path


def load_checkpoint(
    path: str | os.PathLike,
    modules: Mapping[str, nn.Module],
    optimizer: Optional[torch.optim.Optimizer] = None,
    *,
    restore_rng: bool = False,
    map_location: Any = "cpu",
) -> dict[str, Any]:
    """Load weights (and optimiser state) into ``modules``; return the checkpoint's other contents.

    ``path`` is a checkpoint file or the directory holding ``checkpoint.pt``. Raises
    :class:`CheckpointError` naming the file and the mismatch when it is not a checkpoint of these
    modules (missing or unexpected parameters, different shapes).
    """
    path = Path(path)
    if path.is_dir():
        path = path / CHECKPOINT_NAME
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as error:  # torch raises many types for a corrupt file
        raise CheckpointError(f"{path} is not a readable checkpoint: {error}") from error
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a pyro_mmebm checkpoint (format {FORMAT} expected)")
    stored = payload["modules"]
    if set(stored) != set(modules):
        raise CheckpointError(f"{path} holds modules {sorted(stored)}, expected {sorted(modules)}")
    for name, module in modules.items():
        try:
            module.load_state_dict(stored[name])
        except RuntimeError as error:
            raise CheckpointError(f"{path} does not match the {name}: {error}") from error
    if optimizer is not None and payload["optimizer"] is not None:
        try:
            optimizer.load_state_dict(payload["optimizer"])
        except (ValueError, KeyError) as error:
            raise CheckpointError(f"{path}: optimiser state does not match: {error}") from error
    if restore_rng:
        _set_rng_state(payload["rng"])
    return {key: payload[key] for key in ("epoch", "history", "config")}


def resume_state(
    out_dir: Optional[Path],
    modules: Mapping[str, nn.Module],
    optimizer: torch.optim.Optimizer,
    *,
    resume: bool,
    map_location: Any = "cpu",
) -> tuple[list[dict], int]:
    """``(history, first epoch to run)``: restored from ``out_dir``'s checkpoint (weights, optimiser
    and random state) when ``resume`` and one exists, else ``([], 0)``."""
    if not (resume and out_dir is not None and (Path(out_dir) / CHECKPOINT_NAME).exists()):
        return [], 0
    state = load_checkpoint(out_dir, modules, optimizer, restore_rng=True, map_location=map_location)
    return state["history"], state["epoch"] + 1
