"""A run's output folder: claimed by one run only, resumed only by that run, left cleanly on Ctrl-C.

A folder holds the files of one run: its configuration (JSON), its checkpoint, metrics, results and
figures. :func:`claim_run_folder` guarantees that work is never lost or mixed:

- a new run refuses a folder that already holds a run, unless told to ``overwrite`` it (the old
  run's files are deleted first, so a folder never mixes two runs);
- a resume first checks, without writing anything, that the folder's run is this run: the same
  settings wherever they fix the model or its training, and a checkpoint that reads back intact;
  a refused resume leaves the folder exactly as it was;
- settings a resume may change (more epochs, evaluation sizes, device, data paths) are recorded in
  the run's configuration under ``resumes``, with the epoch they changed after, so the recorded
  configuration never claims that the whole run used them.

:func:`exit_cleanly_on_interrupt` is for a training program's ``main``: Ctrl-C or SIGTERM ends it
with one line saying which epoch is saved and how to resume, and no traceback.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from pyro_mmebm.atomic import atomic_save_json
from pyro_mmebm.checkpoint import CHECKPOINT_NAME, CheckpointError, ExistingRunError, read_checkpoint

RESUMES_KEY = "resumes"
"""The configuration's list of resumes that changed a setting:
``[{"after_epoch": n, "changed": {name: {"from": old, "to": new}}}]`` (epochs counted from 1)."""


class ResumeMismatchError(ValueError):
    """A resume asked for settings that the run in the folder was not trained with."""


def run_files(out: Path, patterns: Sequence[str]) -> list[Path]:
    """The files of ``out`` matching any of the glob ``patterns``, sorted."""
    return sorted({path for pattern in patterns for path in Path(out).glob(pattern) if path.is_file()})


def _jsonable(config: Mapping[str, Any]) -> dict[str, Any]:
    """``config`` as it reads back from JSON (tuples become lists), for comparing with a saved one."""
    return json.loads(json.dumps(dict(config)))


def _resumed_config(
    out: Path,
    config: dict[str, Any],
    config_name: str,
    may_change: Collection[str],
    ignore: Collection[str],
    settings: Callable[[Mapping[str, Any]], Mapping[str, Any]],
) -> dict[str, Any]:
    """``config`` with the saved run's history of resumes; raises, writing nothing, when the saved run
    is another run or its checkpoint is unreadable."""
    saved_path, checkpoint = out / config_name, out / CHECKPOINT_NAME
    if not checkpoint.exists():
        return config  # no epoch finished: no work to keep or to mix with
    if not saved_path.is_file():
        raise ExistingRunError(
            f"{out} holds a checkpoint but no {config_name}, so it cannot be checked to be the same run; "
            "start afresh with --overwrite or in a fresh --out"
        )
    saved_config = json.loads(saved_path.read_text())
    saved = _jsonable(settings(saved_config))
    epochs_done = read_checkpoint(checkpoint)["epoch"] + 1  # refuses a damaged checkpoint now
    differing = {
        name: {"from": saved.get(name), "to": value}
        for name, value in _jsonable(settings(config)).items()
        if name not in ignore and name != RESUMES_KEY and saved.get(name) != value
    }
    fixed = {name: change for name, change in differing.items() if name not in may_change}
    if fixed:
        listing = ", ".join(f"{name} {change['from']!r} -> {change['to']!r}" for name, change in fixed.items())
        raise ResumeMismatchError(
            f"cannot resume the run in {out} with other settings ({listing}): they fix the model or its "
            f"training. Resume with the run's own settings (see {saved_path}; only {', '.join(sorted(may_change))} "
            "may change), or start a new run in a fresh --out (or --overwrite this one)."
        )
    history = list(saved_config.get(RESUMES_KEY, []))
    if differing:
        history.append({"after_epoch": epochs_done, "changed": differing})
    return {**config, RESUMES_KEY: history}


def claim_run_folder(
    out: str | os.PathLike,
    config: Mapping[str, Any],
    *,
    config_name: str,
    patterns: Sequence[str],
    resume: bool,
    overwrite: bool,
    may_change: Collection[str] = (),
    ignore: Collection[str] = (),
    settings: Callable[[Mapping[str, Any]], Mapping[str, Any]] = dict,
) -> dict[str, Any]:
    """Make ``out`` the folder of the run configured by ``config``, write ``config`` there as
    ``config_name`` and return what was written (``config``, with the run's history of resumes).

    :param patterns: glob patterns of the files a run writes (its configuration and checkpoint
        among them); a folder holding any of them holds a run.
    :param resume: continue the run in ``out`` (a folder without a run is simply started).
    :param overwrite: delete the run in ``out`` first and start afresh.
    :param may_change: settings a resume may change (recorded under :data:`RESUMES_KEY`); any other
        setting that differs from the saved run's refuses the resume.
    :param ignore: settings never compared (e.g. the ``resume`` flag itself).
    :param settings: a configuration's settings by name, as a resume compares them (default: its
        top-level entries); it reads the saved configuration too, so it fills in settings added since
        the run was saved and reads a layout of an earlier version.
    :raises ExistingRunError: ``out`` holds a run and neither ``resume`` nor ``overwrite`` is set.
    :raises ResumeMismatchError: a resume with other settings than the saved run's.
    :raises CheckpointError: a resume whose checkpoint is damaged or unreadable.
    """
    if resume and overwrite:
        raise ValueError("resume and overwrite exclude each other: continue the run in the folder, or replace it")
    out = Path(out)
    config = _jsonable(config)
    found = run_files(out, patterns)
    if found and not resume:
        if not overwrite:
            names = ", ".join(path.name for path in found[:4]) + (", ..." if len(found) > 4 else "")
            raise ExistingRunError(
                f"{out} already holds a run ({names}): continue it with --resume, replace it with --overwrite "
                "(its files are deleted first), or choose a fresh --out"
            )
        # The configuration goes last: a folder interrupted while being cleared still reads as a run.
        for path in sorted(found, key=lambda path: path.name == config_name):
            path.unlink()
    elif found:
        config = _resumed_config(out, config, config_name, may_change, ignore, settings)
    out.mkdir(parents=True, exist_ok=True)
    atomic_save_json(config, out / config_name)
    return config


def _interrupted_message(out: Path) -> str:
    try:
        epoch = read_checkpoint(out / CHECKPOINT_NAME)["epoch"]
    except CheckpointError:
        return f"interrupted before any epoch was saved in {out}: run the same command with --overwrite to start again"
    return (
        f"interrupted: epoch {epoch + 1}, the last finished, is saved in {out}; "
        "run the same command with --resume to continue"
    )


@contextlib.contextmanager
def exit_cleanly_on_interrupt(out: str | os.PathLike) -> Iterator[None]:
    """For a training program's ``main``: on Ctrl-C or SIGTERM inside the block, print one line
    saying which epoch is saved in ``out`` and how to resume, and exit with status ``128 + signal``
    without a traceback. A run folder refused (another run there, a resume with other settings, a
    damaged checkpoint) likewise ends with its one-line reason and status 2.

    SIGTERM (sent by ``kill``, job schedulers, containers stopping) is turned into the same
    ``KeyboardInterrupt`` as Ctrl-C while the block runs; checkpoints are written atomically, so an
    interrupt never leaves a partial one.
    """
    received = [signal.SIGINT]

    def terminate(signum: int, frame: Any) -> None:
        received[0] = signal.Signals(signum)
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        yield
    except KeyboardInterrupt:
        print(_interrupted_message(Path(out)), file=sys.stderr)
        raise SystemExit(128 + received[0]) from None
    except (ExistingRunError, ResumeMismatchError, CheckpointError) as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    finally:
        signal.signal(signal.SIGTERM, previous)


__all__ = [
    "RESUMES_KEY",
    "ResumeMismatchError",
    "claim_run_folder",
    "exit_cleanly_on_interrupt",
    "run_files",
]
