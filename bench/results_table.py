"""The README's table of PolyMNIST runs, one row per finished run, read from the runs' own files.

Each ``LABEL=FOLDER`` names a finished ``examples/polymnist.py`` run (or its copy under
``bench/results/``): ``FOLDER/results.json``, and ``FOLDER/generation_chains_m123/generation_chains.json``
from ``bench/generation_chains.py --modalities m1 m2 m3`` where it exists. Per run:

- ``epochs`` and ``steps``: what trained the networks (a two-stage fit: the fit's epochs and steps, the
  networks being those of the run it was fitted to); ``train``: the wall time of that training, forked
  epochs included (``train_seconds``);
- ``joint all five (top)``: joint coherence of prior samples over every modality, and the most common
  digit's share of the coherent ones; ``ceiling``: the aggregate posterior's (from
  ``FOLDER/generation_chains/`` over all modalities where it exists, else the run's own: runs made
  before the ceiling's definition was fixed recorded another figure);
- ``joint m1–m3``: the same over m1–m3 with the run's own generation sampler (``K``, ``s`` and the
  adjustment it ran with), and its ceiling;
- ``cross``: mean cross coherence over every subset of sources; ``probe``: the linear probe on the
  posterior means of all modalities.

    python bench/results_table.py \\
        "MMVAE+=bench/results/polymnist_protocol_private_12/laplace_private" \\
        "two-stage NCE=bench/results/polymnist_protocol_private_12/two_stage_nce_gauss_on_laplace_private"
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, Optional

from pyro_mmebm.evaluation.coherence import format_table
from pyro_mmebm.experiment.config import ExperimentConfig, read_experiment_config
from pyro_mmebm.priors import EBM_PRIORS


CEILING = "aggregate posterior q(z)"
"""The ``generation_chains`` row of the aggregate posterior."""


def chains_rows(folder: Path, name: str) -> Optional[list[dict[str, Any]]]:
    """The rows of ``FOLDER/<name>/generation_chains.json``, or ``None`` when there is none."""
    path = folder / name / "generation_chains.json"
    return json.loads(path.read_text())["rows"] if path.exists() else None


def as_run_m123(folder: Path, config: ExperimentConfig) -> tuple[Optional[float], Optional[float]]:
    """``(joint over m1–m3 with the run's own generation sampler, its ceiling)`` from the run's
    ``generation_chains_m123``; ``(None, None)`` without it. A Laplace run's own sampler is its prior."""
    rows = chains_rows(folder, "generation_chains_m123")
    if rows is None:
        return None, None
    ceiling = next(row["joint"] for row in rows if row["sampler"] == CEILING)
    if config.prior not in EBM_PRIORS:
        return next(row["joint"] for row in rows if row["sampler"].startswith("prior")), ceiling
    generation = config.ebm.generation
    for row in rows:
        if (row.get("K") == generation.steps and row.get("s") == generation.step_size
                and (row.get("start") or "base") == config.ebm.generation_start
                and row["sampler"].startswith("MALA") == generation.metropolis):
            return row["joint"], ceiling
    return None, ceiling


def table_row(label: str, folder: Path) -> dict[str, Any]:
    results = json.loads((folder / "results.json").read_text())
    config = read_experiment_config(results["config"])
    history = results.get("history", [])
    joint_m123, ceiling_m123 = as_run_m123(folder, config)
    all_five = chains_rows(folder, "generation_chains")
    ceiling = (results.get("aggregate_posterior_coherence") if all_five is None
               else next(row["joint"] for row in all_five if row["sampler"] == CEILING))
    top = results.get("joint_digits", {}).get("top_share")
    return {
        "run": label,
        "epochs": len(history),
        "steps": sum(epoch.get("steps", 0) for epoch in history),
        "train": f"{results['train_seconds'] / 60:.0f} min" if results.get("train_seconds") else None,
        "joint all five (top)": f"{results['joint_coherence']:.3f} ({top:.2f})" if top is not None else None,
        "ceiling": ceiling,
        "joint m1–m3": joint_m123,
        "ceiling m1–m3": ceiling_m123,
        "cross": results["cross_coherence"]["mean"],
        "probe": results.get("linear_probe", {}).get("all"),
    }


def main(args: argparse.Namespace) -> str:
    rows = []
    for item in args.runs:
        label, sep, folder = item.partition("=")
        if not sep or not (Path(folder) / "results.json").exists():
            raise SystemExit(f"need LABEL=FOLDER with FOLDER/results.json, got {item!r}")
        rows.append(table_row(label, Path(folder)))
    table = format_table(rows)
    print(table)
    return table


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="LABEL=FOLDER, a finished run's folder (results.json)")
    return parser


if __name__ == "__main__":
    main(build_parser().parse_args())
