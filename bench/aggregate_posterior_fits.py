"""How much of the aggregate posterior must a prior capture to generate coherently? Density fits of
``q(z)`` of a trained run, used as priors.

The aggregate posterior ``q(z) = E_data[q(z | X)]`` of a trained run generates at its ceiling (a
posterior draw of a data tuple, decoded to every modality). A learned prior closes the gap from the
base prior ``p0`` to that ceiling only as far as it captures what makes ``q(z)`` coherent. This script
draws ``z ~ q(z | X)`` for ``--train-size`` strided training tuples (one expert at random, as
:func:`~pyro_mmebm.evaluation.aggregate_posterior_coherence` does) and fits, from coarse to fine:

- a Gaussian with their mean and full covariance;
- mixtures of ``k`` diagonal Gaussians for each ``k`` of ``--components``: each cluster's weight, mean
  and per-dimension spread of the draws, clustered by Lloyd's k-means either on the draws or on the
  means of the experts they were drawn from (dimensions that carry nothing have posterior spread but
  no spread of means, so they do not blur the clusters there);

- with ``--ebm-steps N``, energy-based priors ``exp(f_α) p0`` (the library's
  :class:`~pyro_mmebm.ebm.EnergyBasedPrior`, ``f_α`` an MLP of width ``--ebm-hidden``) fitted by each
  estimator for ``N`` steps of ``--ebm-batch`` draws: maximum likelihood with short-run negatives
  (K = 60, s = 0.4, Adam 1e-4) and noise-contrastive estimation against ``p0`` (Adam 1e-3). Each is
  sampled by Langevin chains from ``p0`` with its training sampler (K = 60, s = 0.4) and with a finer
  one (K = 500, s = 0.1), and its high ground is probed by climbing ``f_α + log p0`` from ``p0``
  without noise (500 steps of ``0.08 ∇``, the drift of an s = 0.4 step);

then decodes ``--samples`` draws of each, and of ``p0`` and of held-out ``q(z)`` draws, to every
modality (private latents from their prior, as generation does), and reports the joint coherence and
the most common digit's share of the coherent samples. Beside them: the spread per dimension of
``q(z)``, of the experts' means and of the experts themselves, and how far apart the first two
experts' means lie for the same tuple against two different tuples.

The finer the fit must be to approach the ceiling, the more structure an energy-based prior has to
learn, and the narrower the modes its Langevin sampler has to settle in.

    OMP_NUM_THREADS=1 python bench/aggregate_posterior_fits.py --run ../runs/protocol/laplace_private \\
        --modalities m1 m2 m3 --out bench/results/aggregate_posterior_fits
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import Tensor
from torch.utils.data import DataLoader

from pyro_mmebm.data import strided_subset
from pyro_mmebm.distributions import StratifiedMixtureOfExperts
from pyro_mmebm.ebm import EBMPriorConfig, EnergyBasedPrior, LangevinConfig
from pyro_mmebm.ebm.langevin import LangevinDivergenceError, log_density_and_grad
from pyro_mmebm.evaluation.coherence import (
    format_table,
    generated_digit_counts,
    joint_coherence_of,
)
from trained_run import add_analysis_arguments, load_run_with_classifiers, write_table


class PosteriorDraws(NamedTuple):
    """One draw per tuple and its expert's mean and standard deviation, ``(size, d)`` each, and the mean
    distance between the first two experts' means (the first two modalities') for the same tuple and
    for two different tuples."""

    draws: Tensor
    means: Tensor
    stddevs: Tensor
    experts_distance_same_tuple: float
    experts_distance_other_tuple: float


def posterior_draws(guide, dataset, size: int, device: torch.device) -> PosteriorDraws:
    """One draw ``z ~ q(z | X)`` per strided tuple, from one expert picked uniformly at random."""
    draws, means, stddevs, same, other = [], [], [], [], []
    with torch.no_grad():
        for batch, _ in DataLoader(strided_subset(dataset, size), batch_size=500):
            posterior = guide.posterior({n: x.to(device) for n, x in batch.items()})
            if not isinstance(posterior, StratifiedMixtureOfExperts):
                raise SystemExit(f"the run's guide gives a {type(posterior).__name__}; this script needs a mixture of experts")
            picked = torch.randint(posterior.num_experts, (posterior.batch_shape[1],), device=device)
            examples = torch.arange(len(picked), device=device)
            draws.append(posterior.experts.sample()[picked, examples].cpu())
            expert_means = posterior.experts.mean
            means.append(expert_means[picked, examples].cpu())
            stddevs.append(posterior.experts.stddev[picked, examples].cpu())
            same.append((expert_means[0] - expert_means[1]).norm(dim=-1).cpu())
            other.append((expert_means[0] - expert_means[1].roll(1, 0)).norm(dim=-1).cpu())
    return PosteriorDraws(
        torch.cat(draws), torch.cat(means), torch.cat(stddevs), torch.cat(same).mean().item(), torch.cat(other).mean().item()
    )


def kmeans(points: Tensor, k: int, iterations: int = 30) -> Tensor:
    """Lloyd's algorithm from ``k`` random points: the cluster of each row of ``points``."""
    centres = points[torch.randperm(len(points))[:k]].clone()
    for _ in range(iterations):
        assignment = torch.cdist(points, centres).argmin(1)
        counts = torch.bincount(assignment, minlength=k)
        sums = torch.zeros_like(centres).index_add_(0, assignment, points)
        centres = torch.where((counts > 0).unsqueeze(1), sums / counts.clamp(min=1).unsqueeze(1), centres)
    return torch.cdist(points, centres).argmin(1)


def diagonal_mixture_samples(z: Tensor, assignment: Tensor, num_samples: int) -> Tensor:
    """Samples of the mixture of diagonal Gaussians of the clusters ``assignment`` of ``z``: a cluster by
    its share of the rows, then its mean plus its per-dimension spread times standard normal noise."""
    k = int(assignment.max()) + 1
    counts = torch.bincount(assignment, minlength=k)
    means = torch.zeros(k, z.shape[1]).index_add_(0, assignment, z) / counts.clamp(min=1).unsqueeze(1)
    squares = torch.zeros(k, z.shape[1]).index_add_(0, assignment, (z - means[assignment]) ** 2)
    spreads = (squares / (counts - 1).clamp(min=1).unsqueeze(1)).sqrt()
    picked = torch.multinomial(counts.float(), num_samples, replacement=True)
    return means[picked] + spreads[picked] * torch.randn(num_samples, z.shape[1])


EBM_ESTIMATORS = {"maximum likelihood": ("ml", 1e-4), "noise-contrastive": ("nce", 1e-3)}
"""The estimators of the EBM fits, by label: the prior's ``estimator`` and Adam's learning rate."""


def fit_energy(draws: Tensor, estimator: str, lr: float, steps: int, batch_size: int, hidden: int) -> EnergyBasedPrior:
    """An EBM prior with a standard Laplace base fitted to ``draws`` by descending ``−Σ log_prob`` of
    batches drawn with replacement (the α-gradient is ``estimator``'s), Adam with betas (0.5, 0.999)."""
    config = EBMPriorConfig(
        hidden=hidden, estimator=estimator, nce_noise="base" if estimator == "nce" else None,  # NCE against p0
        langevin=LangevinConfig(steps=60, step_size=0.4),
    )
    prior = EnergyBasedPrior(draws.shape[1], config)
    optimizer = torch.optim.Adam(prior.energy.parameters(), lr=lr, betas=(0.5, 0.999))
    for _ in range(steps):
        optimizer.zero_grad()
        (-prior().log_prob(draws[torch.randint(len(draws), (batch_size,))]).sum() / batch_size).backward()
        optimizer.step()
    return prior


def langevin_samples(prior: EnergyBasedPrior, n: int, steps: int, step_size: float) -> Tensor:
    """``n`` samples of the fitted prior by Langevin chains of ``steps`` steps of size ``step_size`` from ``p0``."""
    prior.config = dataclasses.replace(prior.config, generation_steps=steps, generation_step_size=step_size)
    with torch.no_grad():
        return prior().sample((n,))


def climbed(prior: EnergyBasedPrior, n: int, steps: int = 500, rate: float = 0.08) -> Tensor:
    """``n`` draws of ``p0`` moved ``steps`` times by ``rate ∇(f_α + log p0)``, without noise: where
    the fitted density's modes lie."""
    density = prior()
    z = density.base_dist.sample((n,))
    for _ in range(steps):
        z = z + rate * log_density_and_grad(density.unnormalized_log_prob, z)[1]
    return z


def coherence_of(model, classifiers, z: Tensor, device: torch.device, batch_size: int = 250) -> dict[str, float]:
    """Joint coherence of latents ``z`` decoded as generation decodes them, and the top digit's share."""
    labels: dict[str, list[Tensor]] = {name: [] for name in classifiers}
    with torch.no_grad():
        for chunk in z.split(batch_size):
            means = model.decode(chunk.to(device))
            for name, classifier in classifiers.items():
                labels[name].append(classifier(means[name].to(device)).argmax(-1).cpu())
    joined = {name: torch.cat(parts) for name, parts in labels.items()}
    return {"joint": joint_coherence_of(joined), "top_digit": generated_digit_counts(joined)["top_share"]}


def main(args: argparse.Namespace) -> dict[str, Any]:
    _, model, guide, train_set, _, classifiers, device = load_run_with_classifiers(args)
    for classifier in classifiers.values():
        classifier.eval()
    if args.train_size + args.samples > len(train_set):
        raise SystemExit(f"--train-size + --samples exceed the {len(train_set)} training tuples")
    torch.manual_seed(args.seed)
    posterior = posterior_draws(guide, train_set, args.train_size + args.samples, device)
    order = torch.randperm(len(posterior.draws))
    fitted, held_out = posterior.draws[order[: args.train_size]], posterior.draws[order[args.train_size :]]
    fitted_means = posterior.means[order[: args.train_size]]
    n = args.samples
    samplers: dict[str, Any] = {
        "p0 = Laplace(0, I)": lambda: torch.distributions.Laplace(0.0, 1.0).sample((n, fitted.shape[1])),
        "q(z), held-out draws": lambda: held_out,
        "Gaussian, full covariance": lambda: torch.distributions.MultivariateNormal(
            fitted.mean(0), torch.cov(fitted.T)).sample((n,)),
        **{f"{k} diagonal Gaussians, k-means on draws": (lambda k=k: diagonal_mixture_samples(fitted, kmeans(fitted, k), n))
           for k in args.components},
        **{f"{k} diagonal Gaussians, k-means on experts' means": (
            lambda k=k: diagonal_mixture_samples(fitted, kmeans(fitted_means, k), n)) for k in args.components},
    }
    for label, (estimator, lr) in EBM_ESTIMATORS.items() if args.ebm_steps else ():
        torch.manual_seed(args.seed)
        prior = fit_energy(fitted, estimator, lr, args.ebm_steps, args.ebm_batch, args.ebm_hidden)
        samplers.update({
            f"EBM, {label}, Langevin K=60, s=0.4": lambda prior=prior: langevin_samples(prior, n, 60, 0.4),
            f"EBM, {label}, Langevin K=500, s=0.1": lambda prior=prior: langevin_samples(prior, n, 500, 0.1),
            f"EBM, {label}, climbed without noise": lambda prior=prior: climbed(prior, n),
        })
    rows = []
    for name, sample in samplers.items():
        torch.manual_seed(args.seed)
        try:
            rows.append({"sampler": name, **coherence_of(model, classifiers, sample(), device)})
        except LangevinDivergenceError as error:  # a fitted energy that is no distribution: say so, go on
            rows.append({"sampler": name, "joint": None, "top_digit": None, "failed": str(error).split(";")[0]})
        print(format_table(rows[-1:]), flush=True)
    results = {
        "run": str(args.run), "modalities": list(classifiers), "train_size": args.train_size, "samples": n,
        "ebm_steps": args.ebm_steps, "ebm_batch": args.ebm_batch, "ebm_hidden": args.ebm_hidden,
        "q_z_std_per_dimension": fitted.std(0).tolist(),
        "experts_means_std_per_dimension": fitted_means.std(0).tolist(),
        "experts_std_per_dimension_median": posterior.stddevs.median(0).values.tolist(),
        "experts_distance_same_tuple": posterior.experts_distance_same_tuple,
        "experts_distance_other_tuple": posterior.experts_distance_other_tuple,
    }
    out = Path(args.out or Path(args.run) / "aggregate_posterior_fits")
    out.mkdir(parents=True, exist_ok=True)
    return write_table(rows, results, out, "aggregate_posterior_fits")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", required=True, help="a trained run's folder (experiment.json, checkpoint.pt)")
    parser.add_argument("--out", help="default: RUN/aggregate_posterior_fits")
    parser.add_argument("--train-size", type=int, default=20000, help="posterior draws the densities are fitted to")
    parser.add_argument("--samples", type=int, default=2000, help="samples decoded per sampler")
    parser.add_argument("--components", type=int, nargs="+", default=[10, 100, 1000])
    parser.add_argument("--ebm-steps", type=int, default=0, help="steps of each EBM fit (0: no EBM fits)")
    parser.add_argument("--ebm-batch", type=int, default=128, help="posterior draws per EBM fit step")
    parser.add_argument("--ebm-hidden", type=int, default=200, help="width of the EBM fits' energy network")
    add_analysis_arguments(parser)
    return parser


if __name__ == "__main__":
    main(build_parser().parse_args())
