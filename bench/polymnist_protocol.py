"""The CPU protocol on real PolyMNIST: the EBM prior against MMVAE's Laplace prior, in one command.

Runs, each as its own process with one thread (two side by side on a 2-core machine), each through
``examples/polymnist.py`` so that every run is a plain example run a user can repeat:

1. ``laplace``: MMVAE (mixture-of-experts guide, Laplace prior);
2. ``ebm``: the paper's method, the EBM prior trained jointly (the library's default recipe, with
   the example's two warm-up epochs);
3. ``two_stage``: an EBM prior fitted to the aggregate posterior of the finished ``laplace`` run;
4. ``laplace_private``, ``ebm_private`` and ``two_stage_private``: the same three with MMVAE+-style
   private latents ("Ours+"; the two-stage prior fitted to ``laplace_private``).

By default it runs the private three with the settings the README's table was measured with
(:data:`DEFAULT_RUNS`; batch 32, 12 epochs, two-stage fits of 10 epochs at batch 64, 2,000 test
tuples): about two hours on two cores (118.5 and 124.7 minutes on the machine of 2026-12-07, 164 on the
slower one before it). ``--runs`` picks others. Twelve epochs, not eight, because at eight the
decoders of m0 and m4 still cap the joint coherence over all five modalities: the EBM prior's gain
there was +0.07 to +0.10 at eight epochs and +0.16 to +0.17 at twelve.

An EBM run warms up with the base prior for ``--ebm-warmup-epochs W`` epochs, and in those it repeats
its Laplace counterpart exactly (same seed, same losses). So it does not pay for them: it waits for
the Laplace run's epoch-``W`` checkpoint, which the scheduler keeps as
``<out>/<laplace run>/checkpoint_epoch<W>.pt``, and starts from it (``--start-from``); the core is
free for other runs meanwhile. ``--no-fork`` runs the warm-up instead.

Every run writes a checkpoint each epoch; ``--resume`` continues unfinished runs (a finished run,
one with ``results.json`` of the requested epochs, is read back; asking for more epochs continues it), so the protocol can span sessions. At the end it writes
``<out>/protocol.md`` and ``<out>/protocol.json``: per run the joint, cross and probe accuracy, the
aggregate-posterior ceiling, the fraction of the Laplace-to-ceiling gap closed, epochs, steps, wall
time (and the median epoch's seconds, with the peak GPU memory on CUDA), for an EBM the energy gap at
generation and the excess slope of its tails (``tail_excess``, positive when the prior is not
normalisable: :func:`pyro_mmebm.ebm.tail_growth`) and the command; beside them
``energy_gap.png``, the EBM's energy gap over training.

    OMP_NUM_THREADS=1 python bench/polymnist_protocol.py --out ../runs/protocol --data-root ../data/polymnist
    OMP_NUM_THREADS=1 python bench/polymnist_protocol.py --out ../runs/protocol --data-root ../data/polymnist --resume
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Optional

from matplotlib.figure import Figure

from pyro_mmebm.atomic import atomic_path
from pyro_mmebm.checkpoint import CHECKPOINT_NAME, CheckpointError, read_checkpoint
from pyro_mmebm.evaluation.coherence import format_table, save_results_json
from pyro_mmebm.experiment import RESULTS_NAME, summary_row
from pyro_mmebm.training import METRICS_NAME, TrainConfig
from pyro_mmebm.two_stage import TWO_STAGE_METRICS_NAME

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "polymnist.py"


def add_run_arguments(parser: argparse.ArgumentParser, *, batch_size: int, eval_size: int) -> None:
    """The options of :func:`run_options` (data, latent, batch, seed, evaluation sizes, device), and how
    the runs are scheduled (``--parallel``, ``--resume``): shared by every script that launches
    ``examples/polymnist.py`` runs through :func:`schedule`."""
    parser.add_argument("--data-root", default="./data/PolyMNIST", help="generated here on first use")
    parser.add_argument("--source-root", default="../shared/data")
    parser.add_argument("--cache-dir", default="./data/cache")
    parser.add_argument("--latent-dim", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=batch_size)
    parser.add_argument("--eval-size", type=int, default=eval_size)
    parser.add_argument("--joint-samples", type=int, default=eval_size)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--parallel", type=int, default=2, help="runs side by side (one thread each)")
    parser.add_argument("--resume", action="store_true", help="continue unfinished runs")


def run_options(args: argparse.Namespace) -> list[str]:
    """The ``examples/polymnist.py`` options that every run shares (see :func:`add_run_arguments`)."""
    return [
        "--data-root", args.data_root, "--source-root", args.source_root, "--cache-dir", args.cache_dir,
        "--latent-dim", str(args.latent_dim), "--batch-size", str(args.batch_size), "--seed", str(args.seed),
        "--device", args.device, "--eval-size", str(args.eval_size), "--joint-samples", str(args.joint_samples),
    ]


def run_commands(args: argparse.Namespace) -> dict[str, list[str]]:
    """The ``examples/polymnist.py`` command line of each run, by name."""
    def shared(batch_size: int) -> list[str]:
        options = [*run_options(argparse.Namespace(**{**vars(args), "batch_size": batch_size})), "--epochs", str(args.epochs)]
        if args.epoch_size is not None:
            options += ["--epoch-size", str(args.epoch_size)]
        return options + shlex.split(args.run_options)

    common = shared(args.batch_size)
    two_stage_common = shared(args.two_stage_batch_size)
    if args.ebm_options:
        common_ebm = shlex.split(args.ebm_options)
    else:
        common_ebm = []
    out = Path(args.out)
    private = ["--private-latent-dim", str(args.latent_dim)]
    commands = {
        "laplace": ["--prior", "laplace", "--out", str(out / "laplace")],
        "ebm": ["--prior", "ebm", *common_ebm, "--out", str(out / "ebm")],
        "two_stage": [
            "--prior", "ebm", *common_ebm, "--two-stage-from", str(out / "laplace"), "--two-stage-epochs",
            str(args.two_stage_epochs), "--out", str(out / "two_stage"),
        ],
        "laplace_private": ["--prior", "laplace", *private, "--out", str(out / "laplace_private")],
        "ebm_private": ["--prior", "ebm", *common_ebm, *private, "--out", str(out / "ebm_private")],
        "two_stage_private": [  # the networks, private latents included, are the first stage's
            "--prior", "ebm", *common_ebm, "--two-stage-from", str(out / "laplace_private"), "--two-stage-epochs",
            str(args.two_stage_epochs), "--out", str(out / "two_stage_private"),
        ],
    }
    return {
        name: [sys.executable, str(EXAMPLE), *(two_stage_common if name in DEPENDS_ON else common), *extra]
        for name, extra in commands.items()
    }


RUNS = ("laplace", "ebm", "two_stage", "laplace_private", "ebm_private", "two_stage_private")
"""Every run the protocol knows (:func:`run_commands` builds a command for each): the names ``--runs`` takes."""

DEFAULT_RUNS = ("laplace_private", "ebm_private", "two_stage_private")
"""The runs of the README's table: MMVAE+, Ours+ and two-stage Ours+."""

DEPENDS_ON = {"two_stage": "laplace", "two_stage_private": "laplace_private"}
"""A two-stage run and the Laplace run it starts from, once that has finished."""

FORKS_FROM = {"ebm": "laplace", "ebm_private": "laplace_private"}
"""An EBM run and the Laplace run whose warm-up epochs it repeats exactly (see the module docstring)."""


def example_warmup_epochs() -> int:
    """The EBM warm-up ``examples/polymnist.py`` runs when not told (its ``DEFAULTS``, else the library's)."""
    spec = importlib.util.spec_from_file_location("polymnist_example", EXAMPLE)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    return example.DEFAULTS.get("ebm_warmup_epochs", TrainConfig().prior_warmup_epochs)


def warmup_epochs(ebm_options: str) -> int:
    """The ``--ebm-warmup-epochs`` among the EBM runs' options (the example's default when not given)."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--ebm-warmup-epochs", type=int)
    given = parser.parse_known_args(shlex.split(ebm_options))[0].ebm_warmup_epochs
    return example_warmup_epochs() if given is None else given  # the example is loaded only when needed


def warmup_checkpoint(run: Path, epochs: int) -> Path:
    """Where the scheduler keeps the checkpoint of ``run`` at the end of epoch ``epochs``."""
    return run / f"checkpoint_epoch{epochs}.pt"


def keep_warmup_checkpoint(run: Path, epochs: int) -> Optional[Path]:
    """Keep a copy of ``run``'s checkpoint while it is the one of epoch ``epochs`` (the run's
    ``checkpoint.pt`` is overwritten every epoch); return the copy, or ``None`` while the run has not
    got there, or has gone past it without a copy (then the fork runs the warm-up itself)."""
    kept = warmup_checkpoint(run, epochs)
    if kept.is_file():
        return kept
    metrics = run / METRICS_NAME
    if not metrics.is_file() or len(json.loads(metrics.read_text())) != epochs:
        return None  # the checkpoint is written before the metrics: with `epochs` of them it is epoch `epochs`
    try:
        with atomic_path(kept) as copy:  # the source is written by rename: the copy is one whole file
            shutil.copyfile(run / CHECKPOINT_NAME, copy)
            if read_checkpoint(copy)["epoch"] != epochs - 1:
                raise CheckpointError(f"{run} finished another epoch while its checkpoint was copied")
    except CheckpointError:
        return None
    return kept


def holds_run(folder: Path) -> bool:
    """Whether ``folder`` holds files of a run (started, perhaps unfinished)."""
    return folder.is_dir() and any(folder.iterdir())


def finished(out: Path, name: str, epochs: Optional[int] = None) -> bool:
    """Whether the run ``name`` has its results (of at least ``epochs`` epochs, when given)."""
    path = out / name / RESULTS_NAME
    if not path.is_file():
        return False
    return epochs is None or len(json.loads(path.read_text()).get("history", [])) >= epochs


def schedule(
    commands: dict[str, list[str]],
    out: Path,
    *,
    parallel: int,
    resume: bool,
    epochs: dict[str, int],
    fork_after: int = 0,
    poll_s: float = 5.0,
) -> dict[str, int]:
    """Run every unfinished command, at most ``parallel`` at a time, one thread each; return exit codes.

    Each run's output goes to ``<out>/<name>.log``. A run is resumed (``--resume``) when its folder
    holds a checkpoint and ``resume`` is set. With ``fork_after`` (the EBM warm-up's epochs), a new
    EBM run of :data:`FORKS_FROM` waits for its Laplace run's checkpoint of that epoch and starts
    from it, when that run is scheduled here or its copy is already kept; otherwise it runs the
    warm-up itself.
    """
    pending = [name for name in commands if not finished(out, name, epochs.get(name))]
    running: dict[str, subprocess.Popen] = {}
    codes: dict[str, int] = {}
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")

    def fork_point(name: str) -> tuple[bool, Optional[Path]]:
        """``(wait, checkpoint to start from)`` for a run that has not started yet."""
        source = FORKS_FROM.get(name)
        if not fork_after or source is None or holds_run(out / name):
            return False, None
        kept = warmup_checkpoint(out / source, fork_after)
        if kept.is_file():
            return False, kept
        return source in pending or source in running, None

    while pending or running:
        for name in running:  # keep each forking source's warm-up checkpoint while it is current
            if fork_after and any(FORKS_FROM.get(other) == name for other in pending):
                keep_warmup_checkpoint(out / name, fork_after)
        for name in list(pending):
            dependency = DEPENDS_ON.get(name)
            blocked = dependency is not None and (
                dependency in pending or dependency in running or not finished(out, dependency)
            )
            if blocked and dependency not in pending and dependency not in running:
                pending.remove(name)  # its dependency failed
                codes[name] = -1
                continue
            if len(running) < parallel and not blocked:
                wait, start_from = fork_point(name)
                if wait:
                    continue
                command = list(commands[name])
                if start_from is not None:
                    command += ["--start-from", str(start_from)]
                elif holds_run(out / name):
                    if not resume:
                        raise SystemExit(f"{out / name} holds an unfinished run: rerun with --resume to continue it")
                    command.append("--resume")
                print(f"[{time.strftime('%H:%M:%S')}] start {name}: {shlex.join(command)}", flush=True)
                log = open(out / f"{name}.log", "a")
                running[name] = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
                pending.remove(name)
        for name, process in list(running.items()):
            if process.poll() is not None:
                codes[name] = process.returncode
                print(f"[{time.strftime('%H:%M:%S')}] {name} exited with {process.returncode}", flush=True)
                del running[name]
        time.sleep(poll_s)
    return codes


def gap_closed(joint: Optional[float], baseline: Optional[float], ceiling: Optional[float]) -> Optional[float]:
    """The fraction of the gap from the Laplace baseline's joint coherence to the ceiling closed."""
    if joint is None or baseline is None or ceiling is None or ceiling <= baseline:
        return None
    return (joint - baseline) / (ceiling - baseline)


def plot_energy_gaps(runs: dict[str, Path], path: Path) -> Optional[Path]:
    """The per-epoch energy gap ``E_q[f] − E_p[f]`` of each EBM run folder, by label (of the prior fit,
    for a two-stage run), saved at ``path``; ``None`` when no run has one. With maximum likelihood
    ``E_p`` is over the training negatives (the epoch's mean); with NCE, which has none, over
    generation's chains at the epoch's end (``generation_gap``)."""
    figure = Figure(figsize=(5.5, 3.2), layout="constrained")
    ax = figure.subplots()
    plotted = False
    for name, folder in runs.items():
        found = [folder / file for file in (METRICS_NAME, TWO_STAGE_METRICS_NAME) if (folder / file).is_file()]
        if not found:
            continue
        history = json.loads(found[0].read_text())
        for key, label in (("energy_gap", name), ("generation_gap", f"{name} (generation's chains)")):
            points = [(r["epoch"] + 1, r[key]) for r in history if key in r]
            if points:
                ax.plot(*zip(*points), marker="o", label=label)
                plotted = True
    if not plotted:
        return None
    ax.axhline(0.0, color="grey", lw=0.8)
    ax.set_xlabel("epoch")
    ax.set_ylabel(r"$E_q[f] - E_{p_\alpha}[f]$ (epoch mean)")
    ax.legend()
    figure.savefig(path, dpi=120)
    return path


def report(commands: dict[str, list[str]], out: Path) -> dict[str, Any]:
    """The table of every finished run, written as ``protocol.md`` and ``protocol.json``."""
    results = {name: json.loads((out / name / RESULTS_NAME).read_text()) for name in commands if finished(out, name)}
    baseline = {**FORKS_FROM, **DEPENDS_ON}  # each EBM run's Laplace counterpart
    rows = []
    for name, result in results.items():
        row = summary_row(name, result)
        reference = results.get(baseline.get(name, name), {})
        row["gap_closed"] = gap_closed(
            result.get("joint_coherence"), reference.get("joint_coherence"), reference.get("aggregate_posterior_coherence")
        )
        history = result.get("history", [])
        row["epochs"] = len(history)
        row["steps"] = sum(r.get("steps") or 0 for r in history)
        seconds = sorted(r["seconds"] for r in history)
        row["epoch_s"] = seconds[len(seconds) // 2] if seconds else None
        peaks = [r["peak_memory_gb"] for r in history if "peak_memory_gb" in r]
        if peaks:
            row["peak_memory_gb"] = max(peaks)
        row["energy_gap_end"] = result.get("energy_overlap", {}).get("gap")
        row["tail_excess"] = result.get("tail_growth", {}).get("excess_slope")  # > 0: not normalisable
        rows.append(row)
    accuracies = next((r["classifier_accuracy"] for r in results.values() if "classifier_accuracy" in r), {})
    lines = [format_table(rows), ""]
    if accuracies:
        lines.append("Classifier test accuracy: " + ", ".join(f"{n} {a:.3f}" for n, a in accuracies.items()))
    lines += ["", "Commands (`OMP_NUM_THREADS=1`, from the repository root):", ""]
    for name, result in results.items():
        start_from = result.get("config", {}).get("start_from")
        forked = ["--start-from", start_from] if start_from else []  # a fork of its Laplace run's warm-up
        lines.append(f"- `{name}`: `{shlex.join(['python', 'examples/polymnist.py', *commands[name][2:], *forked])}`")
    table = "\n".join(lines) + "\n"
    (out / "protocol.md").write_text(table)
    summary = {"rows": rows, "classifier_accuracy": accuracies, "commands": {n: commands[n][1:] for n in results}}
    save_results_json(summary, out / "protocol.json")
    plot_energy_gaps({name: out / name for name in results if name in baseline}, out / "energy_gap.png")
    print(table)
    return summary


def main(args: argparse.Namespace) -> dict[str, Any]:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    commands = {name: command for name, command in run_commands(args).items() if name in args.runs}
    epochs = {name: args.two_stage_epochs if name in DEPENDS_ON else args.epochs for name in commands}
    fork_after = 0 if args.no_fork else warmup_epochs(args.ebm_options)
    codes = schedule(commands, out, parallel=args.parallel, resume=args.resume, epochs=epochs, fork_after=fork_after)
    failed = {name: code for name, code in codes.items() if code != 0}
    if failed:
        print(f"runs that did not finish: {failed} (see <out>/<name>.log)", flush=True)
    return report(commands, out)


def build_parser(description: str = __doc__.splitlines()[0]) -> argparse.ArgumentParser:
    """The protocol's command line (``bench/polymnist_gpu.py`` presets other defaults on it)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--out", default="bench/results/polymnist_protocol")
    add_run_arguments(parser, batch_size=32, eval_size=2000)
    parser.add_argument(
        "--runs", nargs="+", choices=RUNS, default=list(DEFAULT_RUNS), metavar="RUN",
        help=f"these runs, of {', '.join(RUNS)} (default: {' '.join(DEFAULT_RUNS)})",
    )
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--epoch-size", type=int, help="training tuples per epoch (default: all 60,000)")
    parser.add_argument("--ebm-options", default="", help="extra options of the EBM runs, e.g. '--prior-lr 2e-5'")
    parser.add_argument("--run-options", default="", help="extra options of every run, e.g. '--precision bf16'")
    parser.add_argument("--two-stage-epochs", type=int, default=10)
    parser.add_argument("--two-stage-batch-size", type=int, default=64, help="batch size of the two-stage fits")
    parser.add_argument(
        "--no-fork", action="store_true", help="EBM runs train their warm-up epochs instead of starting from the Laplace run's"
    )
    return parser


if __name__ == "__main__":
    main(build_parser().parse_args())
