"""Is each trained EBM prior a distribution? Its excess slope (:func:`pyro_mmebm.ebm.tail_growth`), one
row per run.

Per run: the estimator and the magnitude penalty it trained with, and its ceiling ``m`` (the bound
of ``f_α`` when it is a :class:`~pyro_mmebm.ebm.BoundedEnergy`; empty otherwise); ``f``'s slope far
out along the direction where it most outgrows ``−log p0``, ``p0``'s decay there, their difference
(the excess: > 0 means ``Z(α) = ∞``); and the unnormalised log density ``f_α + log p0`` along that direction at
distances ``t`` from the base's centre, relative to the centre, to show where it turns up; and where
generation's own chains (the run's sampler, ``--samples`` of them, seed 0) end: their median and largest
distance from the centre, and how far the furthest gets along that direction.

    OMP_NUM_THREADS=1 python bench/prior_tails.py ../runs/protocol8_nce_seed1/ebm_private \\
        ../runs/protocol_private/ebm_private --out bench/results/prior_tails.json
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import torch

from pyro_mmebm.atomic import atomic_save_json
from pyro_mmebm.ebm import BoundedEnergy, EnergyBasedPrior, tail_growth
from pyro_mmebm.evaluation.coherence import format_table
from pyro_mmebm.experiment import load_run

DISTANCES = (3, 10, 30, 100, 300)


def tail_row(run: Path, samples: int) -> dict[str, Any]:
    config, model, *_ = load_run(run, torch.device("cpu"))
    if not isinstance(model.prior, EnergyBasedPrior):
        raise SystemExit(f"{run} has a {config.prior} prior, not an EBM")
    prior = model.prior()
    tails = tail_growth(prior)
    row: dict[str, Any] = {
        "run": str(run),
        "estimator": config.ebm.estimator,
        "penalty": config.ebm.regularisation,
        "ceiling": float(prior.energy.ceiling) if isinstance(prior.energy, BoundedEnergy) else None,
        **tails.to_dict(),
    }
    if tails.direction is not None:
        with torch.no_grad():
            points = prior.loc + torch.tensor(DISTANCES, dtype=prior.loc.dtype)[:, None] * tails.direction
            relative = prior.log_prob(points) - prior.log_prob(prior.loc)
        row.update({f"log p(t={t}) - log p(0)": float(value) for t, value in zip(DISTANCES, relative)})
        torch.manual_seed(0)
        generated = prior.sample((samples,)) - prior.loc
        distance = generated.norm(dim=-1)
        row.update({
            "generated distance median": float(distance.median()),
            "generated distance max": float(distance.max()),
            "generated along it max": float((generated @ tails.direction).max()),
        })
    return row


def main(args: argparse.Namespace) -> list[dict[str, Any]]:
    torch.set_num_threads(1)
    rows = [tail_row(Path(run), args.samples) for run in args.runs]
    print(format_table(rows, float_format="{:.2f}"))
    if args.out:
        atomic_save_json({"distances": DISTANCES, "rows": rows}, args.out)
    return rows


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="run folders (experiment.json and checkpoint.pt) with an EBM prior")
    parser.add_argument("--samples", type=int, default=2000, help="generation's chains per run")
    parser.add_argument("--out", help="also write the rows as JSON here")
    return parser


if __name__ == "__main__":
    main(build_parser().parse_args())
