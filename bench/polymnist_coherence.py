"""Coherence on real PolyMNIST: the EBM prior, the Laplace prior (MMVAE) and a two-stage EBM.

Three runs of :func:`pyro_mmebm.experiment.run` with the mixture-of-experts guide, identical networks,
data order and budget (``--epochs`` × ``--epoch-size`` training examples):

1. ``laplace``: MMVAE's Laplace prior;
2. ``two_stage``: the ``laplace`` run's encoders and decoders frozen, an EBM prior fitted to its
   aggregate posterior (cheap: no decoder passes);
3. ``ebm``: the EBM prior trained jointly;
4. ``laplace_private``, ``ebm_private``: the same two priors for the shared ``z`` with modality-specific
   latents ``w_i`` (``--private-latent-dim``, Laplace prior; MMVAE+ style, the paper's "Ours+"),
   encoders and decoders widened by the private dimension.

Each is evaluated on a strided subset of the test set (the tuples are stored digit by digit):
joint coherence (all five classifiers agree on a prior sample), cross coherence (every source subset
to every other modality), a linear probe, and the test objective. The run is restartable: a finished
run (``results.json``) is read back, an interrupted one resumes from its last epoch checkpoint.

    python bench/polymnist_coherence.py --epochs 10 --epoch-size 3200 --out bench/results/polymnist_coherence

Writes ``<out>/polymnist_coherence.json`` and ``<out>/polymnist_coherence.md``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import torch

from pyro_mmebm import EBMDivergenceError, LangevinDivergenceError
from pyro_mmebm.evaluation.coherence import format_table, save_results_json
from pyro_mmebm.experiment import RESULTS_NAME, ExperimentConfig, run, summary_row
from pyro_mmebm.settings import from_flat, replace_settings, to_dict

RUNS = ("laplace", "two_stage", "ebm", "laplace_private", "ebm_private")


def run_config(name: str, base: ExperimentConfig, private_dim: int) -> ExperimentConfig:
    out = str(Path(base.out) / name)
    if name == "laplace":
        return replace_settings(base, out=out, prior="laplace")
    if name == "two_stage":
        return replace_settings(base, out=out, prior="ebm", two_stage_from=str(Path(base.out) / "laplace"))
    if name == "laplace_private":
        return replace_settings(base, out=out, prior="laplace", private_latent_dim=private_dim)
    if name == "ebm_private":
        return replace_settings(base, out=out, prior="ebm", private_latent_dim=private_dim)
    return replace_settings(base, out=out, prior="ebm")


def run_or_load(config: ExperimentConfig) -> dict[str, Any]:
    results_path = Path(config.out) / RESULTS_NAME
    if results_path.is_file():
        return json.loads(results_path.read_text())
    results = run(replace_settings(config, resume=True))  # a folder without a run simply starts
    return json.loads(results_path.read_text()) if results_path.is_file() else results


def main(args: argparse.Namespace) -> dict[str, Any]:
    torch.set_num_threads(args.threads)
    base = from_flat(ExperimentConfig, dict(
        dataset="polymnist", out=args.out, data_root=args.data_root, source_root=args.source_root,
        cache_dir=args.cache_dir, latent_dim=args.latent_dim, batch_size=args.batch_size, epochs=args.epochs,
        epoch_size=args.epoch_size, two_stage_epochs=args.two_stage_epochs, eval_size=args.eval_size,
        joint_samples=args.joint_samples, classifier_epochs=args.classifier_epochs, seed=args.seed,
        device=args.device,
    ))
    summary: dict[str, Any] = {"base": to_dict(base), "runs": {}}
    rows = []
    for name in args.runs:
        print(f"== {name}", flush=True)
        try:
            results = run_or_load(run_config(name, base, args.private_latent_dim))
        except (EBMDivergenceError, LangevinDivergenceError) as error:
            summary["runs"][name] = {"diverged": str(error)}
            rows.append({"run": name, "outcome": str(error).split(":")[0]})
            continue
        summary["runs"][name] = results
        row = summary_row(name, results)
        row["train_steps"] = sum(r.get("steps") or 0 for r in results["history"])
        row["eval_s"] = results.get("eval_seconds")
        rows.append(row)
        save_results_json(summary, Path(args.out) / "polymnist_coherence.json")
    accuracies = next((r["classifier_accuracy"] for r in summary["runs"].values() if "classifier_accuracy" in r), {})
    table = format_table(rows) + "\n\nClassifier test accuracy: " + ", ".join(
        f"{name} {acc:.3f}" for name, acc in accuracies.items()
    )
    summary["table"] = table
    save_results_json(summary, Path(args.out) / "polymnist_coherence.json")
    (Path(args.out) / "polymnist_coherence.md").write_text(table + "\n")
    print(table)
    return summary


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", default="./data/PolyMNIST")
    parser.add_argument("--source-root", default="../shared/data")
    parser.add_argument("--cache-dir", default="./data/cache")
    parser.add_argument("--out", default="bench/results/polymnist_coherence")
    parser.add_argument("--runs", nargs="+", default=list(RUNS[:3]), choices=RUNS)
    parser.add_argument("--latent-dim", type=int, default=32)
    parser.add_argument("--private-latent-dim", type=int, default=32, help="w_i of the *_private runs")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--epoch-size", type=int, default=3200, help="training examples per epoch")
    parser.add_argument("--two-stage-epochs", type=int, default=10)
    parser.add_argument("--eval-size", type=int, default=1000)
    parser.add_argument("--joint-samples", type=int, default=1000)
    parser.add_argument("--classifier-epochs", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=1)
    main(parser.parse_args())
