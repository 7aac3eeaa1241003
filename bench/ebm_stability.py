"""Does joint training of the EBM prior stay stable on real PolyMNIST? The energy gap over steps.

The gap ``E_q[f_α] − E_{p_α}[f_α]`` (posterior samples against Langevin negatives) is logged at every
training step for several settings of the EBM prior, the rest identical (same seed, networks, data
order). :func:`pyro_mmebm.fit` stops a run with ``EBMDivergenceError`` when ``|gap|`` exceeds
``--max-energy-gap``; that run is reported as "diverged at step N".

    python bench/ebm_stability.py --steps 400 --batch-size 16 --out bench/results/ebm_stability

Writes ``<out>/ebm_stability.json`` (per-step gaps of every setting) and ``<out>/ebm_stability.md``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import torch

from pyro_mmebm import EBMDivergenceError, EnergyGapMonitor, LangevinDivergenceError, fit
from pyro_mmebm.evaluation.coherence import format_table, save_results_json
from pyro_mmebm.experiment import (
    ExperimentConfig,
    build_datasets,
    build_model_and_guide,
    build_objective,
    train_loader,
)
from pyro_mmebm.settings import from_flat, replace_settings, to_dict

SETTINGS: dict[str, dict[str, Any]] = {
    "a: s=0.1, no reg.": {"langevin_step_size": 0.1, "ebm_regularisation": 0.0},
    "b: s=0.3, no reg.": {"langevin_step_size": 0.3, "ebm_regularisation": 0.0},
    "c: s=0.3, L2 0.1 (default)": {"langevin_step_size": 0.3, "ebm_regularisation": 0.1},
    "d: s=0.3, spectral norm": {"langevin_step_size": 0.3, "ebm_regularisation": 0.0, "ebm_spectral_norm": True},
    "e: s=0.3, persistent chains": {"langevin_step_size": 0.3, "ebm_regularisation": 0.0, "ebm_persistent": True},
}
"""The settings compared, by label: changes to the base :class:`ExperimentConfig`, by flat name (every
setting with the full encoder gradient, as measured; the default is now 0)."""


class GapHistory(EnergyGapMonitor):
    """An :class:`EnergyGapMonitor` that also keeps every recorded gap."""

    def __init__(self) -> None:
        super().__init__()
        self.history: list[float] = []

    def record(self, positive: torch.Tensor, negative: torch.Tensor) -> None:
        super().record(positive, negative)
        self.history.append(self.gap)


def run_setting(base: ExperimentConfig, changes: dict[str, Any], train_set) -> dict[str, Any]:
    config = replace_settings(base, **{"ebm_encoder_gradient": 1.0, **changes})
    model, guide = build_model_and_guide(config, train_set)
    monitor = model.prior.monitor = GapHistory()
    started = time.perf_counter()
    outcome = "stable"
    try:
        fit(model, guide, train_loader(config, train_set), config.train, elbo=build_objective(config))
    except (EBMDivergenceError, LangevinDivergenceError, FloatingPointError) as error:
        outcome = f"diverged at step {len(monitor.history)} ({type(error).__name__})"
    gaps = monitor.history
    return {
        "changes": changes,
        "outcome": outcome,
        "steps": len(gaps),
        "seconds": time.perf_counter() - started,
        "gap": gaps,
        "max_abs_gap": max((abs(g) for g in gaps), default=None),
        "final_gap": gaps[-1] if gaps else None,
    }


def main(args: argparse.Namespace) -> dict[str, Any]:
    torch.set_num_threads(args.threads)
    base = from_flat(ExperimentConfig, dict(
        dataset="polymnist", out=str(args.out), data_root=args.data_root, source_root=args.source_root,
        prior="ebm", latent_dim=args.latent_dim, langevin_steps=args.langevin_steps, batch_size=args.batch_size,
        ebm_estimator="ml", ebm_hidden=200, prior_lr=1e-4,  # the gap of maximum likelihood, as it was measured
        epochs=1, epoch_size=args.steps * args.batch_size, max_energy_gap=args.max_energy_gap, seed=args.seed,
        device=args.device,
    ))
    train_set, _ = build_datasets(base)
    results: dict[str, Any] = {"base": to_dict(base), "settings": {}}
    out = Path(args.out)
    checkpoints = [s for s in (1, 50, 100, 200, 300, 400, 500, 600) if s <= args.steps]
    for label in args.settings:
        print(f"== {label}", flush=True)
        results["settings"][label] = run_setting(base, SETTINGS[label], train_set)
        save_results_json(results, out / "ebm_stability.json")
    rows = []
    for label, r in results["settings"].items():
        row = {"setting": label, "outcome": r["outcome"]}
        row.update({f"gap@{s}": r["gap"][s - 1] if len(r["gap"]) >= s else None for s in checkpoints})
        row.update({"max|gap|": r["max_abs_gap"], "seconds": r["seconds"]})
        rows.append(row)
    table = format_table(rows, float_format="{:.3g}")
    (out / "ebm_stability.md").write_text(table + "\n")
    print(table)
    return results


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", default="./data/PolyMNIST")
    parser.add_argument("--source-root", default="../shared/data")
    parser.add_argument("--out", default="bench/results/ebm_stability")
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--latent-dim", type=int, default=32)
    parser.add_argument("--langevin-steps", type=int, default=50)
    parser.add_argument("--max-energy-gap", type=float, default=1e3)
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS)[:3], choices=list(SETTINGS))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    main(parser.parse_args())
