"""Checkpoints that are safe to open, verified when read, and written atomically and durably.

A checkpoint (``checkpoint.pt``) holds the modules' state dicts (weights and buffers, the persistent
Langevin chains of an EBM prior included), the optimiser's state, the last finished epoch, the
per-epoch history, the random states of torch, Python and numpy (and CUDA) and the training
settings, all as plain data: tensors, dicts, lists, tuples, strings, numbers, booleans and ``None``.
It also stores a SHA-256 digest of all of that.

Reading uses ``torch.load(weights_only=True)``, whose unpickler builds nothing but those types, so
opening a file, even a crafted one, never runs code; the digest is then checked before anything is
loaded into a module, so a damaged file is refused instead of loading wrong weights. Writing goes
through :func:`~pyro_mmebm.atomic.atomic_path` (temporary file, ``fsync``, rename): a crash or kill
at any moment leaves the previous checkpoint or the new one.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import pickletools
import random
import zipfile
from collections import OrderedDict
from pathlib import Path
from typing import Any, Mapping, Optional

import numpy as np
import torch
from torch import Tensor, nn

from pyro_mmebm.atomic import atomic_path, atomic_save_json

CHECKPOINT_NAME = "checkpoint.pt"
CONFIG_NAME = "config.json"
FORMAT = "pyro_mmebm.checkpoint/2"
LEGACY_FORMATS = ("pyro_mmebm.checkpoint/1",)
"""Earlier formats, which needed full unpickling to read: :func:`upgrade_checkpoint` converts them."""


class CheckpointError(RuntimeError):
    """A checkpoint file is unreadable, unsafe, damaged, or does not belong to the model it is loaded into."""


class ExistingRunError(FileExistsError):
    """An output folder already holds a run, and neither resuming nor overwriting it was asked for."""


# --- random state as plain data ------------------------------------------------------------------


def _python_state(state: tuple) -> dict[str, Any]:
    version, internal, gauss_next = state
    return {"version": version, "internal": torch.tensor(internal, dtype=torch.int64), "gauss_next": gauss_next}


def _numpy_state(state: tuple) -> dict[str, Any]:
    bit_generator, key, position, has_gauss, cached_gaussian = state
    return {
        "bit_generator": bit_generator, "key": torch.from_numpy(key.astype(np.int64)), "position": int(position),
        "has_gauss": int(has_gauss), "cached_gaussian": float(cached_gaussian),
    }


def _rng_state() -> dict[str, Any]:
    state = {
        "torch": torch.get_rng_state(),
        "python": _python_state(random.getstate()),
        "numpy": _numpy_state(np.random.get_state()),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: Mapping[str, Any]) -> None:
    torch.set_rng_state(state["torch"].cpu())
    python = state["python"]
    random.setstate((python["version"], tuple(python["internal"].tolist()), python["gauss_next"]))
    numpy = state["numpy"]
    np.random.set_state((
        numpy["bit_generator"], numpy["key"].cpu().numpy().astype(np.uint32), numpy["position"],
        numpy["has_gauss"], numpy["cached_gaussian"],
    ))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


# --- the digest ----------------------------------------------------------------------------------

_SCALARS = (type(None), bool, int, float, str)


def _update_digest(digest: Any, value: Any, where: str) -> None:
    """Feed ``value`` to ``digest``, type by type; refuse any type a weights-only load would not build.

    Types are matched exactly: a numpy float is a ``float`` subclass but would be pickled as a numpy
    object, which the safe loader refuses.
    """
    kind = type(value)
    if kind is Tensor or kind is nn.Parameter:
        data = value.detach().cpu().contiguous()
        digest.update(f"tensor {data.dtype} {tuple(data.shape)}\n".encode())
        digest.update(data.reshape(-1).view(torch.uint8).numpy())
    elif kind in (dict, OrderedDict):
        digest.update(f"dict {len(value)}\n".encode())
        for key, item in value.items():
            _update_digest(digest, key, f"{where} (a key)")
            _update_digest(digest, item, f"{where}[{key!r}]")
    elif kind in (list, tuple):
        digest.update(f"{kind.__name__} {len(value)}\n".encode())
        for index, item in enumerate(value):
            _update_digest(digest, item, f"{where}[{index}]")
    elif kind in _SCALARS:
        digest.update(f"{kind.__name__} {value!r}\n".encode())
    else:
        raise TypeError(
            f"checkpoint entry {where} is a {kind.__module__}.{kind.__qualname__}; a checkpoint holds only "
            "tensors, dicts, lists, tuples, strings, numbers, booleans and None"
        )


def _digest(contents: Mapping[str, Any]) -> str:
    """SHA-256 of ``contents``: every tensor's dtype, shape and bytes, and every other value, in order."""
    digest = hashlib.sha256()
    _update_digest(digest, dict(contents), "checkpoint")
    return digest.hexdigest()


# --- writing and reading -------------------------------------------------------------------------


def _checkpoint_file(path: str | os.PathLike) -> Path:
    path = Path(path)
    return path / CHECKPOINT_NAME if path.is_dir() else path


def _write(contents: Mapping[str, Any], path: Path) -> None:
    payload = {**contents, "sha256": _digest(contents)}
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def save_checkpoint(
    directory: str | os.PathLike,
    modules: Mapping[str, nn.Module],
    optimizer: Optional[torch.optim.Optimizer],
    *,
    epoch: int,
    history: list[dict],
    config: Optional[Mapping[str, Any]] = None,
) -> Path:
    """Write ``directory/checkpoint.pt`` (and ``config.json``) atomically and durably; return its path.

    A crash while writing leaves the previous checkpoint intact.

    :raises TypeError: naming the entry, when ``history`` or ``config`` holds a value that is not
        plain data (e.g. a numpy number or a ``Path``), which a safe load could not read back.
    """
    directory = Path(directory)
    contents = {
        "format": FORMAT,
        "modules": {name: module.state_dict() for name, module in modules.items()},
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "epoch": epoch,
        "history": history,
        "rng": _rng_state(),
        "config": dict(config or {}),
    }
    path = directory / CHECKPOINT_NAME
    _write(contents, path)
    if config is not None:
        atomic_save_json(dict(config), directory / CONFIG_NAME)
    return path


def _legacy_format(path: Path) -> Optional[str]:
    """The earlier format a checkpoint file names, found by parsing its pickle without running it."""
    try:
        with zipfile.ZipFile(path) as archive:
            pickled = [name for name in archive.namelist() if name.endswith("data.pkl")]
            data = archive.read(pickled[0]) if pickled else b""
        for _, argument, _ in pickletools.genops(data):
            if argument in LEGACY_FORMATS:
                return argument
    except (zipfile.BadZipFile, ValueError, OSError):
        return None
    return None


def read_checkpoint(path: str | os.PathLike, *, map_location: Any = "cpu") -> dict[str, Any]:
    """The verified contents of a checkpoint file (or of ``checkpoint.pt`` in a folder).

    :raises CheckpointError: naming the file, when it is missing or unreadable; when it holds
        anything but plain data (a crafted file: it is refused before anything in it runs); when it
        is of an earlier format (see :func:`upgrade_checkpoint`) or not a pyro_mmebm checkpoint; when
        its contents do not match the digest stored in it (damaged).
    """
    path = _checkpoint_file(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}")
    if not zipfile.is_zipfile(path):
        raise CheckpointError(f"{path} is not a readable checkpoint: it is not an archive written by torch.save")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:
        legacy = _legacy_format(path)
        if legacy is not None:
            raise CheckpointError(
                f"{path} is a checkpoint of the earlier format {legacy}, which can only be opened by full "
                "unpickling (able to run code hidden in a file), so it is not opened. If you wrote it "
                "yourself, convert it once with pyro_mmebm.checkpoint.upgrade_checkpoint(path)."
            ) from None
        # torch's own advice (allowlisting the global) would defeat the point: keep only the reason.
        reasons = [line.strip().split(" Please")[0] for line in str(error).splitlines() if "Unsupported" in line]
        raise CheckpointError(
            f"{path} was refused: it holds objects other than tensors and plain data, which no "
            "pyro_mmebm checkpoint does, so it was not opened (nothing in it was run)"
            + (f". The safe loader said: {reasons[0]}" if reasons else "")
        ) from None
    except Exception as error:  # torch raises many types for a corrupt file
        raise CheckpointError(f"{path} is not a readable checkpoint: {error}") from error
    if not isinstance(payload, dict) or not isinstance(payload.get("format"), str):
        raise CheckpointError(f"{path} is not a pyro_mmebm checkpoint (format {FORMAT} expected)")
    if payload["format"] != FORMAT:
        raise CheckpointError(f"{path} has format {payload['format']!r}; this version reads {FORMAT!r}")
    stored = payload.pop("sha256", None)
    try:
        matches = stored == _digest(payload)
    except TypeError:
        matches = False
    if not matches:
        raise CheckpointError(
            f"{path} is damaged: its contents do not match the SHA-256 digest stored in it, so it was "
            "not loaded. Restore it from a copy, or start the run afresh."
        )
    return payload


def load_checkpoint(
    path: str | os.PathLike,
    modules: Mapping[str, nn.Module],
    optimizer: Optional[torch.optim.Optimizer] = None,
    *,
    restore_rng: bool = False,
    map_location: Any = "cpu",
) -> dict[str, Any]:
    """Load weights (and optimiser state) into ``modules``; return the checkpoint's other contents.

    ``path`` is a checkpoint file or the directory holding ``checkpoint.pt``. The file is read and
    verified by :func:`read_checkpoint` first. Raises :class:`CheckpointError` naming the file and
    the mismatch when it is not a checkpoint of these modules (missing or unexpected parameters,
    different shapes).
    """
    payload = read_checkpoint(path, map_location=map_location)
    path = _checkpoint_file(path)
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
    and random state) when ``resume`` and one exists, else ``([], 0)``.

    :raises ExistingRunError: when ``out_dir`` holds a checkpoint and ``resume`` is false: a new run
        would overwrite the finished work of another.
    """
    if out_dir is None or not (Path(out_dir) / CHECKPOINT_NAME).exists():
        return [], 0
    if not resume:
        raise ExistingRunError(
            f"{out_dir} already holds a run ({CHECKPOINT_NAME}): continue it with resume=True (--resume), "
            "or train into another folder (a fresh --out, or --overwrite to delete the old run first)"
        )
    state = load_checkpoint(out_dir, modules, optimizer, restore_rng=True, map_location=map_location)
    return state["history"], state["epoch"] + 1


def start_from_other_prior(
    path: str | os.PathLike,
    model: nn.Module,
    guide: nn.Module,
    optimizer: torch.optim.Optimizer,
    *,
    map_location: Any = "cpu",
) -> tuple[list[dict], int]:
    """Continue a run with another prior: ``(history, first epoch to run)`` from the checkpoint at
    ``path`` of a run whose model differs from ``model`` in its prior only.

    Encoders, decoders, the state of the optimiser's first parameter group (the VAE's, which holds
    the same parameters in the same order whatever the prior) and the random state are restored;
    the prior keeps its own initial weights and a fresh optimiser state. An EBM run with a warm-up
    of ``W`` epochs repeats a Laplace run of the same seed exactly for those epochs, so starting it
    from that run's epoch-``W`` checkpoint gives the same run without paying for the warm-up, and
    several EBM recipes can fork from one warm-up.

    :raises CheckpointError: when the checkpoint's model or guide differs from ``model``/``guide``
        outside the prior, or its optimiser state does not fit the first parameter group.
    """
    payload = read_checkpoint(path, map_location=map_location)
    path = _checkpoint_file(path)
    for name, module in (("model", model), ("guide", guide)):
        stored = payload["modules"].get(name)
        if stored is None:
            raise CheckpointError(f"{path} holds no {name}")
        own = module.state_dict()
        differing = sorted(
            key for key in set(stored) ^ set(own) if not key.startswith("prior.")
        ) + sorted(
            key for key in set(stored) & set(own)
            if not key.startswith("prior.") and stored[key].shape != own[key].shape
        )
        if differing:
            raise CheckpointError(f"{path}: its {name} differs from this one outside the prior: {differing[:5]}")
        module.load_state_dict({**own, **{k: v for k, v in stored.items() if not k.startswith("prior.")}})
    stored_optimizer = payload["optimizer"]
    state = optimizer.state_dict()
    first = state["param_groups"][0]["params"]
    stored_first = stored_optimizer["param_groups"][0]["params"]
    if len(first) != len(stored_first):
        raise CheckpointError(
            f"{path}: its optimiser's first group has {len(stored_first)} parameters, this one {len(first)}"
        )
    state["state"] = {
        new: stored_optimizer["state"][old] for new, old in zip(first, stored_first) if old in stored_optimizer["state"]
    }
    optimizer.load_state_dict(state)
    _set_rng_state(payload["rng"])
    return payload["history"], payload["epoch"] + 1


def upgrade_checkpoint(path: str | os.PathLike) -> Path:
    """Rewrite a checkpoint of an earlier format (:data:`LEGACY_FORMATS`) in the current one, in place.

    The earlier format stored Python and numpy random states as objects that only full unpickling
    reads, and full unpickling can run code hidden in a file: **upgrade only files you wrote
    yourself.** Persistent Langevin chains were not saved then: a persistent run resumed from an
    upgraded checkpoint restarts its chains from the base distribution.
    """
    path = _checkpoint_file(path)
    legacy = _legacy_format(path) if path.is_file() else None
    if legacy is None:
        raise CheckpointError(f"{path} is not a checkpoint of an earlier format ({', '.join(LEGACY_FORMATS)})")
    old = torch.load(path, map_location="cpu", weights_only=False)
    rng = {"torch": old["rng"]["torch"], "python": _python_state(old["rng"]["python"]),
           "numpy": _numpy_state(old["rng"]["numpy"])}
    if "cuda" in old["rng"]:
        rng["cuda"] = list(old["rng"]["cuda"])
    contents = {key: old[key] for key in ("modules", "optimizer", "epoch", "history", "config")}
    _write({"format": FORMAT, **contents, "rng": rng}, path)
    return path


__all__ = [
    "CHECKPOINT_NAME",
    "CONFIG_NAME",
    "FORMAT",
    "CheckpointError",
    "ExistingRunError",
    "load_checkpoint",
    "read_checkpoint",
    "resume_state",
    "save_checkpoint",
    "start_from_other_prior",
    "upgrade_checkpoint",
]
