"""Does generation sample the prior it learned? Longer Langevin chains for a trained EBM run.

A jointly trained EBM prior is learned from short-run chains (``K`` steps from ``p0``). Generation
draws from the same sampler by default; if those chains stop short of where ``f_α`` is high, the
samples decoded are not the prior that was learned. For a trained EBM run this script draws prior
samples with ``K`` = each of ``--steps`` (the step size of the run's sampler, or ``--step-sizes``)
and reports, per sampler:

- ``f_mean``: ``E[f_α(z)]`` on its samples, and ``gap``: ``E_q[f_α] − E[f_α]`` with ``q`` the
  aggregate posterior (a posterior draw of each test tuple, one expert at random), and
  ``penalty_gap``: ``2λ (E_q[f²] + E[f²])``, the gap that the magnitude penalty ``λ`` of training
  sustains (:func:`pyro_mmebm.ebm.penalty_gap`). Training stops where the two are equal, so at the
  trained sampler a gap equal to the penalty gap is the penalty's equilibrium, not chains that fall
  behind; without a penalty, maximum likelihood makes the two expectations equal;
- ``joint``: joint coherence of the samples decoded to every modality, beside the aggregate
  posterior's (the ceiling) and ``p0``'s (``K = 0``), and ``top_digit``, the most common digit's
  share of the coherent samples (near 1: the coherence is one blurred class, not generation);
- the seconds the sampler costs per 1,000 samples.

A sampler whose chains diverge (or end beyond ``MAX_BASE_SCALES`` from the base's centre) gets a row
that says so, and the others still run.

``--adjust mala`` makes the chains Metropolis-adjusted (MALA): they sample the prior exactly at any step
size, and the table gives their acceptance rate (``--adjust ula mala`` runs both).

``--starts noise`` starts the chains from the Gaussian that ``--ebm-nce-noise base+gaussian`` fitted
to the posterior draws instead of from ``p0`` (its ``K = 0`` row: that Gaussian's own samples).

``--modalities`` restricts joint coherence (and the ceiling) to some modalities: while one
modality's decoder does not yet draw the digit, every sample disagrees there, and the prior's effect
shows only on the others. For a run with another prior (the Laplace baseline) it reports the ceiling and the prior's own row.

Writes ``<out>/generation_chains.{json,md}`` and ``<out>/generation_f_histograms.png``.

    OMP_NUM_THREADS=1 python bench/generation_chains.py --run ../runs/polymnist_protocol/ebm \\
        --steps 0 60 250 1000 --out ../runs/polymnist_protocol/ebm/generation_chains
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import time
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from pyro_mmebm.data import strided_subset
from pyro_mmebm.diagnostics.figures import plot_energy_histograms
from pyro_mmebm.ebm import EnergyBasedPrior, penalty_gap
from pyro_mmebm.ebm.langevin import LangevinDivergenceError
from pyro_mmebm.ebm.tilted_laplace import GENERATION_STARTS
from pyro_mmebm.evaluation.coherence import (
    aggregate_posterior_coherence,
    format_table,
    generated_digit_counts,
    generated_labels,
    joint_coherence_of,
    sample_mixture,
)
from pyro_mmebm.experiment.evaluation import sampler_name
from trained_run import add_analysis_arguments, load_run_with_classifiers, write_table

ADJUSTMENTS = {False: "ula", True: "mala"}
"""The generation sampler's ``metropolis`` setting, by the name ``--adjust`` gives it."""


def coherence_of_samples(model, classifiers, num_samples: int, device: torch.device, seed: int) -> dict[str, Any]:
    """Joint coherence of ``num_samples`` prior samples and the most common digit's share among the
    coherent ones (near 1 when one blurred class makes the coherence)."""
    torch.manual_seed(seed)
    labels = generated_labels(model, classifiers, num_samples, batch_size=250, device=device)
    return {"joint": joint_coherence_of(labels), "top_digit": generated_digit_counts(labels)["top_share"]}


def main(args: argparse.Namespace) -> dict[str, Any]:
    config, model, guide, train_set, test_set, classifiers, device = load_run_with_classifiers(args)
    out = Path(args.out or Path(args.run) / "generation_chains")
    out.mkdir(parents=True, exist_ok=True)
    loader = DataLoader(strided_subset(test_set, min(args.eval_size, len(test_set))), batch_size=250)
    torch.manual_seed(args.seed)
    with torch.no_grad():
        posterior = torch.cat([
            sample_mixture(guide.posterior({n: x.to(device) for n, x in batch.items()})) for batch, _ in loader
        ])
    ceiling = aggregate_posterior_coherence(model, guide, classifiers, loader, device=device)
    results: dict[str, Any] = {"run": str(args.run), "prior": config.prior, "samples": args.samples,
                               "eval_size": len(loader.dataset), "modalities": list(classifiers)}
    if not isinstance(model.prior, EnergyBasedPrior):
        rows = [{"sampler": "aggregate posterior q(z)", "joint": ceiling},
                {"sampler": f"prior ({config.prior})", **coherence_of_samples(model, classifiers, args.samples, device, args.seed)}]
        return write_table(rows, results, out, "generation_chains")
    energy = model.prior.energy
    trained = model.prior.config
    results["trained_sampler"] = dataclasses.asdict(trained.langevin)
    with torch.no_grad():
        f_on_posterior = energy(posterior)
    f_posterior, f2_posterior = float(f_on_posterior.mean()), float(f_on_posterior.square().mean())
    rows = [{"sampler": "aggregate posterior q(z)", "start": None, "K": None, "s": None, "acceptance": None,
             "f_mean": f_posterior,
             "gap": 0.0, "penalty_gap": None, "joint": ceiling, "top_digit": None, "s_per_1000": None}]
    histograms = {"posterior q(z|X)": posterior}
    step_sizes = args.step_sizes or [trained.generation.step_size]
    starts = args.starts or [trained.generation_start]
    adjustments = args.adjust or [ADJUSTMENTS[trained.generation.metropolis]]
    for start, adjust, step_size, steps in itertools.product(starts, adjustments, step_sizes, args.steps):
        if steps == 0 and (step_size != step_sizes[0] or adjust != adjustments[0]):
            continue  # the chains' starts depend on neither the step size nor the adjustment
        model.prior.config = dataclasses.replace(
            trained, generation_steps=steps, generation_step_size=step_size, generation_start=start,
            generation_metropolis=adjust == "mala",
        )
        if steps == 0:
            label = {"base": "p0", "noise": "fitted Gaussian"}[start]
        else:
            label = (f"{sampler_name(model.prior.config.generation)} K={steps}, s={step_size:g}"
                     + ("" if start == "base" else ", from the fitted Gaussian"))
        torch.manual_seed(args.seed)
        started = time.perf_counter()
        try:
            run = model.prior().generation_run((args.samples,))
        except LangevinDivergenceError as error:  # the row says so; the other samplers still run
            rows.append({"sampler": label, "start": start, "K": steps, "s": step_size, "diverged": str(error)})
            print(f"{label}: {error}", flush=True)
            continue
        seconds = time.perf_counter() - started
        z = run.samples
        with torch.no_grad():
            f_samples = energy(z)
        f_mean = float(f_samples.mean())
        # the gap the magnitude penalty sustains against these samples (at the trained sampler,
        # the training gap's equilibrium; see pyro_mmebm.ebm.monitoring)
        sustained = penalty_gap(trained.regularisation, f2_posterior, float(f_samples.square().mean()))
        acceptance = None if run.acceptance is None else float(run.acceptance.mean())
        rows.append({"sampler": label, "start": start, "K": steps, "s": step_size if steps else None,
                     "acceptance": acceptance,
                     "f_mean": f_mean, "gap": f_posterior - f_mean, "penalty_gap": sustained,
                     **coherence_of_samples(model, classifiers, args.samples, device, args.seed),
                     "s_per_1000": 1000 * seconds / args.samples})
        if start == starts[0] and (steps == 0 or (step_size == step_sizes[0] and adjust == adjustments[0])):
            histograms[label] = z
        print(format_table(rows[-1:]), flush=True)
    model.prior.config = trained
    plot_energy_histograms(energy, histograms, path=out / "generation_f_histograms.png")
    return write_table(rows, results, out, "generation_chains")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", required=True, help="a trained EBM run's folder (experiment.json, checkpoint.pt)")
    parser.add_argument("--out", help="default: RUN/generation_chains")
    parser.add_argument("--steps", type=int, nargs="+", default=[0, 60, 250, 1000])
    parser.add_argument("--step-sizes", type=float, nargs="+", help="default: the run's own")
    parser.add_argument("--starts", nargs="+", choices=GENERATION_STARTS,
                        help="where the chains start (noise: the fitted Gaussian of nce); default: the run's own")
    parser.add_argument("--adjust", nargs="+", choices=sorted(ADJUSTMENTS.values()),
                        help="ula: unadjusted Langevin; mala: Metropolis-adjusted; default: the run's own")
    parser.add_argument("--samples", type=int, default=2000, help="prior samples per sampler")
    parser.add_argument("--eval-size", type=int, default=2000, help="test tuples (strided) for q(z) and the ceiling")
    add_analysis_arguments(parser)
    return parser


if __name__ == "__main__":
    main(build_parser().parse_args())
