"""Which recipe keeps the jointly trained EBM prior honest on real PolyMNIST? One change at a time.

Every setting forks from the same Laplace checkpoint at or after the end of the EBM warm-up (the
protocol's ``laplace/checkpoint_epoch2.pt``: same weights, optimiser and random state), trains the EBM prior
jointly for ``--steps`` steps with the protocol's recipe plus one change, and is then evaluated like
any run. Each setting is a plain ``examples/polymnist.py`` run (``<out>/<setting>``, checkpointed
every ``--chunk`` steps, continued with ``--resume``), two side by side with one thread each.

With ``--two-stage-from RUN`` instead of ``--fork``, each setting fits the EBM prior alone to the
aggregate posterior of the finished Laplace run (its encoders and decoders frozen): the cheap test
of whether a sampler and energy recipe can follow a target that stands still (the encoder-gradient
settings then change nothing).

Reported per setting (``<out>/ebm_recipe.{md,json}``, ``<out>/recipe_gap.png``):

- the energy gap ``E_q[f] − E_{p_α}[f]`` over training (mean of each chunk of ``--chunk`` steps),
  ``f`` on posterior samples and on negatives in the last chunk, and the gap the magnitude penalty
  sustains there (``penalty_gap``, :func:`pyro_mmebm.ebm.penalty_gap`);
- at the end, the gap between posterior draws of test tuples and the prior samples that generation
  uses (``gap_end``);
- the linear probe, joint and cross coherence and the aggregate-posterior ceiling.

    OMP_NUM_THREADS=1 python bench/ebm_recipe.py --fork ../runs/polymnist_protocol/laplace/checkpoint_epoch2.pt \\
        --out ../runs/ebm_recipe --data-root ../data/polymnist --cache-dir ../data/cache \\
        --settings today encoder_gradient_0 persistent prior_lr_1e-4
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

import polymnist_protocol
from pyro_mmebm.checkpoint import read_checkpoint
from pyro_mmebm.evaluation.coherence import format_table, save_results_json
from pyro_mmebm.experiment import RESULTS_NAME, summary_row

RECIPE = (
    "--ebm-estimator ml --ebm-hidden 200 --ebm-warmup-epochs 2 --langevin-step-size 0.4 --langevin-steps 60 "
    "--ebm-generation-step-size 0.4 --ebm-generation-steps 60 --prior-lr 2e-5 --ebm-regularisation 0.1 "
    "--ebm-encoder-gradient 1"
)
"""The recipe every setting changes once: the protocol's EBM options with the penalty 0.1 and the full
encoder gradient (the library's defaults until the protocol measured the two without them), trained
by maximum likelihood and generating with the training sampler, as it was measured."""

SETTINGS: dict[str, str] = {
    "today": "",
    "encoder_gradient_0": "--ebm-encoder-gradient 0",
    "encoder_gradient_0.1": "--ebm-encoder-gradient 0.1",
    "persistent": "--ebm-persistent",
    "prior_lr_1e-4": "--prior-lr 1e-4",
    "penalty_0.01": "--ebm-regularisation 0.01",
    "no_penalty": "--ebm-regularisation 0",
    "no_penalty_encoder_gradient_0": "--ebm-regularisation 0 --ebm-encoder-gradient 0",
    "prior_lr_1e-4_penalty_0.01": "--prior-lr 1e-4 --ebm-regularisation 0.01",
    "steps_200": "--langevin-steps 200 --ebm-generation-steps 200",
    "step_size_0.2": "--langevin-step-size 0.2 --ebm-generation-step-size 0.2",
}
"""Each setting's change to :data:`RECIPE` (later options win), by name."""

WARMUP_EPOCHS = polymnist_protocol.warmup_epochs(RECIPE)
"""The recipe's warm-up with the base prior: a fork checkpoint holds at least these epochs."""


def fork_epochs(path: str) -> int:
    """The epochs the fork checkpoint at ``path`` holds (the forked runs do not repeat them)."""
    epochs = read_checkpoint(path)["epoch"] + 1
    if epochs < WARMUP_EPOCHS:
        raise SystemExit(f"--fork {path}: a checkpoint of epoch {epochs}, inside the recipe's {WARMUP_EPOCHS}-epoch warm-up")
    return epochs


def commands(args: argparse.Namespace, forked_epochs: int = 0) -> dict[str, list[str]]:
    """The ``examples/polymnist.py`` command line of each setting, by name."""
    if args.steps % args.chunk:
        raise SystemExit(f"--steps ({args.steps}) must be a multiple of --chunk ({args.chunk})")
    common = [
        *polymnist_protocol.run_options(args),
        "--prior", "ebm", "--epoch-size", str(args.chunk * args.batch_size), *shlex.split(RECIPE),
        *shlex.split(args.run_options),
    ]
    if args.max_source_size is not None:
        common += ["--max-source-size", str(args.max_source_size)]
    if args.two_stage_from:
        common += ["--two-stage-from", args.two_stage_from, "--two-stage-epochs", str(args.steps // args.chunk)]
    else:
        common += ["--start-from", args.fork, "--epochs", str(forked_epochs + args.steps // args.chunk)]
    return {
        name: [sys.executable, str(polymnist_protocol.EXAMPLE), *common, *shlex.split(SETTINGS[name]),
               "--out", str(Path(args.out) / name)]
        for name in args.settings
    }


def gap_curve(ebm_epochs: list[dict[str, Any]], chunk: int) -> list[tuple[int, float]]:
    """``(steps after the fork, mean gap of the chunk ending there)`` for each of the EBM epochs."""
    return [((i + 1) * chunk, r["energy_gap"]) for i, r in enumerate(ebm_epochs)]


def report(
    names: list[str], out: Path, chunk: int, command_lines: dict[str, list[str]], two_stage: bool = False
) -> dict[str, Any]:
    """The table of every finished setting (``ebm_recipe.md``/``.json``) and the gap figure."""
    rows, curves = [], {}
    for name in names:
        path = out / name / RESULTS_NAME
        if not path.is_file():
            continue
        result = json.loads(path.read_text())
        ebm_epochs = [r for r in result.get("history", []) if "energy_gap" in r]
        curves[name] = gap_curve(ebm_epochs, chunk)
        last = ebm_epochs[-1]
        summary = summary_row(name, result)
        row = {"setting": name, "change": SETTINGS[name] or "(none)"}
        row.update({f"gap@{s}": g for s, g in curves[name]})
        row.update({
            "f+": last.get("f_positive"), "f-": last.get("f_negative"), "penalty_gap": last.get("penalty_gap"),
            "gap_end": result.get("energy_overlap", {}).get("gap"),
            "probe": summary.get("probe_all"), "joint": summary.get("joint"),
            "top_digit": summary.get("joint_top_digit"), "ceiling": summary.get("ceiling"),
            "cross": summary.get("cross"), "cross_k=1": summary.get("cross_k=1"),
        })
        rows.append(row)
    table = format_table(rows, float_format="{:.3g}")
    start = "fits the prior alone to the same first stage" if two_stage else "forks from the same warm-up checkpoint"
    lines = [f"Recipe: `{RECIPE}`; every setting {start}.", "", table, "",
             "Commands (`OMP_NUM_THREADS=1`, from the repository root):", ""]
    lines += [f"- `{n}`: `{shlex.join(['python', 'examples/polymnist.py', *command_lines[n][2:]])}`" for n in curves]
    (out / "ebm_recipe.md").write_text("\n".join(lines) + "\n")
    save_results_json({"recipe": RECIPE, "rows": rows, "gap_curves": curves}, out / "ebm_recipe.json")
    if curves:
        figure = Figure(figsize=(5.5, 3.2), layout="constrained")
        ax = figure.subplots()
        for name, points in curves.items():
            ax.plot(*zip(*points), marker="o", label=name)
        ax.axhline(0.0, color="grey", lw=0.8)
        ax.set_xlabel("steps of the prior fit" if two_stage else "steps after the warm-up")
        ax.set_ylabel(r"$E_q[f] - E_{p_\alpha}[f]$" + f" (mean of {chunk} steps)")
        ax.legend(fontsize=8)
        figure.savefig(out / "recipe_gap.png", dpi=120)
    print(table)
    return {"rows": rows, "gap_curves": curves}


def main(args: argparse.Namespace) -> dict[str, Any]:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if (args.fork is None) == (args.two_stage_from is None):
        raise SystemExit("give one of --fork (joint training) and --two-stage-from (the prior alone)")
    if args.fork is not None and not Path(args.fork).is_file():
        raise SystemExit(f"--fork {args.fork}: no such checkpoint (the Laplace run's checkpoint_epoch2.pt)")
    forked_epochs = 0 if args.two_stage_from else fork_epochs(args.fork)
    command_lines = commands(args, forked_epochs)
    epochs = args.steps // args.chunk + forked_epochs
    codes = polymnist_protocol.schedule(
        command_lines, out, parallel=args.parallel, resume=args.resume, epochs=dict.fromkeys(command_lines, epochs)
    )
    failed = {name: code for name, code in codes.items() if code != 0}
    if failed:
        print(f"settings that did not finish: {failed} (see <out>/<name>.log)", flush=True)
    return report(list(command_lines), out, args.chunk, command_lines, two_stage=args.two_stage_from is not None)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fork", help="joint training: the Laplace run's checkpoint at the end of the warm-up")
    parser.add_argument("--two-stage-from", help="the prior alone: fit it to this finished Laplace run's posterior")
    parser.add_argument("--out", default="bench/results/ebm_recipe")
    parser.add_argument("--settings", nargs="+", default=["today", "encoder_gradient_0"], choices=list(SETTINGS))
    parser.add_argument("--steps", type=int, default=1500, help="joint EBM training steps after the warm-up")
    parser.add_argument("--chunk", type=int, default=250, help="steps per epoch (a checkpoint and a gap point)")
    polymnist_protocol.add_run_arguments(parser, batch_size=32, eval_size=1000)
    parser.add_argument("--max-source-size", type=int, help="largest source subset for cross coherence (default: all)")
    parser.add_argument("--run-options", default="", help="extra options of every run, e.g. '--private-latent-dim 32'")
    return parser


if __name__ == "__main__":
    main(build_parser().parse_args())
