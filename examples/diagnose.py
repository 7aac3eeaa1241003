"""Diagnose a trained run: does the prior's Langevin sampler mix, and how good is the guide?

Reads a run directory written by the examples (``experiment.json`` and ``checkpoint.pt``) and writes
to ``--out``:

- ``transitions.png``: prior chains decoded from ``p0`` (left) to the last Langevin step (right);
- ``f_histograms.png``: ``f_α`` on posterior draws against Langevin draws of the prior;
- ``prior_mixing.md``: R-hat and ESS per latent dimension of several long Langevin chains;
- ``langevin_vs_nuts.md``: short-run Langevin marginals against a NUTS reference, over K and s;
- ``posterior.md``: expert spread and agreement and Pareto k̂ of the guide on test examples;
- ``diagnostics.json``: every figure above in numbers, whether the prior is normalisable
  (``tail_growth``: how fast ``f_α`` grows far out against ``p0``'s decay), ``log Z`` by AIS (``inf``
  when it is not; the AIS figure is then kept as ``ais_estimate``) and the test log-likelihood
  (``-inf`` then, with the figure AIS's log Z gives as ``with_ais_log_z``).

Run: ``python examples/diagnose.py --run runs/polymnist_ebm --out runs/polymnist_ebm/diagnostics``.
``--smoke`` trains a tiny run on generated data first and diagnoses that.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from pyro_mmebm.atomic import atomic_save_json
from pyro_mmebm.data import strided_subset
from pyro_mmebm.device import select_device
from pyro_mmebm.diagnostics import (
    compare_marginals,
    expert_agreement,
    expert_spread,
    langevin_inference_data,
    langevin_sweep,
    mixing_summary,
    nuts_reference,
    plot_energy_histograms,
    plot_transitions,
    pooled_draws,
    prior_chains,
    psis_khat,
)
from pyro_mmebm.ebm import TiltedLaplace, annealed_importance_sampling, tail_growth
from pyro_mmebm.evaluation import evaluate_log_likelihood, sample_mixture
from pyro_mmebm.experiment import ExperimentConfig, load_run, run, smoke_config


def _table(frame) -> str:
    return "```\n" + frame.to_string() + "\n```"


def test_batch(test_set, n: int, device: torch.device) -> dict[str, torch.Tensor]:
    subset = strided_subset(test_set, n)  # PolyMNIST is grouped by digit: stride across all of it
    batch, _ = next(iter(DataLoader(subset, batch_size=len(subset))))
    return {name: x.to(device) for name, x in batch.items()}


def diagnose_prior(prior: TiltedLaplace, model, posterior_z, out: Path, args) -> dict:
    results: dict = {}
    k, s = prior.generation.steps, prior.generation.step_size  # the chains that generate
    short = prior_chains(prior, args.chains)
    steps = sorted(set(np.linspace(0, k, 6).round().astype(int).tolist()))
    plot_transitions(model, short.states, steps, path=out / "transitions.png")
    long = prior_chains(prior, args.chains, langevin=dataclasses.replace(prior.generation, steps=args.long_steps))
    summary = mixing_summary(langevin_inference_data(long, warmup=args.long_steps // 2))
    (out / "prior_mixing.md").write_text(_table(summary) + "\n")
    results["mixing"] = summary["mixing"].value_counts().to_dict()
    results["rhat_max"] = float(summary["r_hat"].max())
    with torch.no_grad():
        prior_z = prior.sample((args.samples,))
    plot_energy_histograms(
        prior.energy, {"posterior q(z|X)": posterior_z, "prior (Langevin)": prior_z}, path=out / "f_histograms.png"
    )
    with torch.no_grad():
        results["energy_gap"] = float(prior.energy(posterior_z).mean() - prior.energy(prior_z).mean())
    reference = pooled_draws(nuts_reference(prior, args.nuts_samples, num_chains=2))
    results["langevin_vs_nuts"] = compare_marginals(prior_z.cpu().numpy(), reference).mean().to_dict()
    sweep = langevin_sweep(prior, reference, [k, 4 * k], [s / 2, s, 2 * s], num_samples=args.samples)
    (out / "langevin_vs_nuts.md").write_text(_table(sweep) + "\n")
    results["sweep"] = json.loads(sweep.reset_index().to_json(orient="records"))
    tails = tail_growth(prior)
    results["tail_growth"] = tails.to_dict()
    print(tails)
    ais = annealed_importance_sampling(prior, args.ais_chains, args.ais_temperatures)
    # Without a finite Z(α), AIS (and so the test log-likelihood) measures only where its chains went.
    results["log_z"] = {"estimate": ais.log_normalizer if tails.normalisable else float("inf"),
                        "ais_estimate": ais.log_normalizer, "standard_error": ais.standard_error,
                        "acceptance_rate": ais.acceptance_rate}
    return results, ais


def main(args: argparse.Namespace) -> None:
    device = select_device(args.device)
    torch.manual_seed(args.seed)
    run_dir = Path(args.run) if args.run else None
    if args.smoke:
        args.samples, args.chains, args.long_steps, args.nuts_samples = 200, 2, 40, 50
        args.ais_chains, args.ais_temperatures, args.examples, args.psis_particles = 100, 20, 8, 50
        if run_dir is None:
            run_dir = Path(tempfile.mkdtemp()) / "smoke_run"
            run(smoke_config(ExperimentConfig(dataset="polymnist", out=str(run_dir), data_root="")), progress=False)
    if run_dir is None:
        raise SystemExit("give --run DIR (a run directory written by the examples) or --smoke")
    out = Path(args.out) if args.out else run_dir / "diagnostics"
    out.mkdir(parents=True, exist_ok=True)
    config, model, guide, _, test_set = load_run(run_dir, device)
    batch = test_batch(test_set, args.examples, device)
    with torch.no_grad():
        posterior_z = sample_mixture(guide.posterior(batch), (max(1, args.samples // args.examples),)).reshape(
            -1, config.latent_dim
        )
    results: dict = {"run": str(run_dir), "prior": config.prior}
    prior = model.prior()
    ais = None
    if isinstance(prior, TiltedLaplace):
        prior_results, ais = diagnose_prior(prior, model, posterior_z, out, args)
        results.update(prior_results)
    spread = expert_spread(guide, batch)
    agreement = expert_agreement(guide, batch)
    khat = psis_khat(model, guide, {k: v[: args.psis_examples] for k, v in batch.items()},
                     num_particles=args.psis_particles)
    (out / "posterior.md").write_text(
        "## Expert spread\n\n" + _table(spread) + "\n\n## Expert agreement (mean over examples)\n\n"
        + _table(agreement.groupby(["modality_a", "modality_b"])[["symmetric_kl", "wasserstein"]].mean())
        + f"\n\n## Pareto k-hat\n\n{np.array2string(khat, precision=2)}\n"
    )
    results["khat"] = {"mean": float(khat.mean()), "max": float(khat.max()), "above_0.7": float((khat > 0.7).mean())}
    loader = DataLoader(strided_subset(test_set, args.examples), batch_size=args.examples)
    estimate = evaluate_log_likelihood(model, guide, loader, args.importance_samples, ais=ais)
    results["test_log_likelihood"] = {"mean": estimate.mean, "standard_error": estimate.standard_error}
    if not results.get("tail_growth", {}).get("normalisable", True):  # with Z(α) = ∞, log p(X) = −∞
        results["test_log_likelihood"] = {"mean": -float("inf"), "with_ais_log_z": estimate.mean,
                                          "standard_error": estimate.standard_error}
    atomic_save_json(results, out / "diagnostics.json")
    print(json.dumps(results, indent=2, default=str))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", help="run directory written by an example (experiment.json + checkpoint.pt)")
    parser.add_argument("--out", help="where to write figures and tables (default RUN/diagnostics)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--examples", type=int, default=64, help="test examples (strided over the test set)")
    parser.add_argument("--samples", type=int, default=1000, help="prior and posterior draws")
    parser.add_argument("--chains", type=int, default=4, help="Langevin chains for mixing and transitions")
    parser.add_argument("--long-steps", type=int, default=1000, help="Langevin steps of the mixing chains")
    parser.add_argument("--nuts-samples", type=int, default=500, help="NUTS reference draws per chain")
    parser.add_argument("--ais-chains", type=int, default=500)
    parser.add_argument("--ais-temperatures", type=int, default=300)
    parser.add_argument("--psis-examples", type=int, default=16)
    parser.add_argument("--psis-particles", type=int, default=500)
    parser.add_argument("--importance-samples", type=int, default=100, help="per example, for log p(X)")
    parser.add_argument("--smoke", action="store_true", help="tiny setting (trains a tiny run when no --run)")
    main(parser.parse_args())
