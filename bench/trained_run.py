"""What the analyses of a trained run share (``generation_chains.py``, ``aggregate_posterior_fits.py``):
their common options, the run loaded with its digit classifiers, and the table they write."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pyro_mmebm.evaluation.coherence import format_table, save_results_json
from pyro_mmebm.experiment import load_run
from pyro_mmebm.experiment.evaluation import load_classifiers


def add_analysis_arguments(parser: argparse.ArgumentParser) -> None:
    """``--modalities``, ``--seed``, ``--device`` and ``--threads``."""
    parser.add_argument("--modalities", nargs="+", help="joint coherence over these modalities only (default: all); "
                        "leaving out one whose decoder does not draw the digit shows what the prior does elsewhere")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1)


def load_run_with_classifiers(args: argparse.Namespace) -> tuple[Any, nn.Module, nn.Module, Any, Any, dict[str, nn.Module], torch.device]:
    """``(config, model, guide, train_set, test_set, classifiers, device)`` of the run ``args.run``, the
    classifiers restricted to ``args.modalities`` when given (an unknown one stops with its name)."""
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    config, model, guide, train_set, test_set = load_run(args.run, device)
    classifiers, _ = load_classifiers(config, train_set, test_set, device, progress=False)
    if args.modalities:
        unknown = sorted(set(args.modalities) - set(classifiers))
        if unknown:
            raise SystemExit(f"--modalities {unknown}: the run's modalities with classifiers are {sorted(classifiers)}")
        classifiers = {name: classifiers[name] for name in args.modalities}
    return config, model, guide, train_set, test_set, classifiers, device


def write_table(rows: list[dict[str, Any]], results: dict[str, Any], out: Path, name: str) -> dict[str, Any]:
    """Save ``results`` with ``rows`` as ``<out>/<name>.json`` and the rows as ``<out>/<name>.md``; print them."""
    results["rows"] = rows
    save_results_json(results, out / f"{name}.json")
    table = format_table(rows, float_format="{:.3g}")
    (out / f"{name}.md").write_text(table + "\n")
    print(table)
    return results
