"""Evaluating a trained run: test objective, joint and cross coherence, the aggregate-posterior ceiling,
a latent linear probe, ``f_α`` on posterior against prior draws and whether the prior is normalisable
(:func:`~pyro_mmebm.ebm.tail_growth`), sample grids; the one-row summary of
a run and its TensorBoard view."""

from __future__ import annotations

import time
import warnings
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Optional

import numpy as np
import pyro
import torch
from PIL import Image
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from pyro_mmebm.data import strided_subset
from pyro_mmebm.diagnostics.figures import plot_energy_histograms
from pyro_mmebm.ebm import EnergyBasedPrior, tail_growth
from pyro_mmebm.ebm.langevin import LangevinConfig, langevin_sample
from pyro_mmebm.evaluation import for_inference, load_or_train_classifier
from pyro_mmebm.evaluation.coherence import (
    aggregate_posterior_coherence,
    cross_coherence,
    generated_digit_counts,
    generated_labels,
    joint_coherence_of,
    linear_probe_accuracy,
    sample_mixture,
    save_cross_grid,
    save_joint_grid,
)
from pyro_mmebm.experiment.building import build_objective
from pyro_mmebm.experiment.config import ExperimentConfig
from pyro_mmebm.experiment.datasets import DATASETS
from pyro_mmebm.tensorboard import TensorBoardLog
from pyro_mmebm.training import evaluate_loss


def load_classifiers(
    config: ExperimentConfig, train_set: Dataset, test_set: Dataset, device: torch.device, progress: bool
) -> tuple[dict[str, nn.Module], dict[str, float]]:
    """``({modality: classifier}, {modality: test accuracy})``, trained once and cached in
    ``<cache_dir>/classifiers/<dataset>``, each ready for evaluation only (:func:`for_inference`)."""
    spec = DATASETS[config.dataset]
    classifiers, accuracies = {}, {}
    for name, arch in spec.classifiers.items():
        classifier, accuracies[name] = load_or_train_classifier(
            name, lambda: train_set, lambda: test_set, Path(config.cache_dir) / "classifiers" / config.dataset,
            architecture=arch, epochs=config.classifier_epochs, device=device, seed=config.train.seed,
            progress=progress,
        )
        classifiers[name] = for_inference(classifier)
    return classifiers, accuracies


def _decode_captions(train_set: Dataset) -> Optional[Callable[[Tensor], list[str]]]:
    vocabulary = getattr(train_set, "vocabulary", None)
    if vocabulary is None:
        return None
    return lambda tokens: [vocabulary.decode(row.tolist()) for row in tokens]


def evaluate(
    config: ExperimentConfig,
    model: nn.Module,
    guide: nn.Module,
    train_set: Dataset,
    test_set: Dataset,
    device: torch.device,
    progress: bool = True,
) -> dict[str, Any]:
    """Test objective, coherence, linear probe and grids of a trained ``model`` and ``guide``."""
    spec = DATASETS[config.dataset]
    out = Path(config.out)
    pyro.set_rng_seed(config.train.seed)
    model.eval()
    guide.eval()
    test_subset = strided_subset(test_set, min(config.eval_size, len(test_set)))
    test_loader = DataLoader(test_subset, batch_size=config.eval_batch_size)
    results: dict[str, Any] = {}
    started = time.perf_counter()
    results["test_loss"] = evaluate_loss(model, guide, test_loader, elbo=build_objective(config), device=device)
    classifiers, accuracies = load_classifiers(config, train_set, test_set, device, progress)
    results["classifier_accuracy"] = accuracies
    if len(classifiers) >= 2:
        labels = generated_labels(
            model, classifiers, config.joint_samples, batch_size=config.eval_batch_size, device=device
        )
        results["joint_coherence"] = joint_coherence_of(labels)
        results["joint_digits"] = generated_digit_counts(labels)
        results["aggregate_posterior_coherence"] = aggregate_posterior_coherence(
            model, guide, classifiers, test_loader, device=device
        )
    if isinstance(model.prior, EnergyBasedPrior):
        results["energy_overlap"] = energy_overlap(model, guide, test_loader, out / "energy_histograms.png")
        tails = tail_growth(model.prior())  # its own random stream: the other figures are unchanged
        results["tail_growth"] = tails.to_dict()
        if not tails.normalisable:
            warnings.warn(str(tails), stacklevel=2)
    if classifiers:
        results["cross_coherence"] = cross_coherence(
            model, guide, classifiers, test_loader, device=device, max_source_size=config.max_source_size
        )
    if spec.probe:
        probe_subset = strided_subset(train_set, min(config.probe_train_size, len(train_set)))
        results["linear_probe"] = linear_probe_accuracy(
            guide, DataLoader(probe_subset, batch_size=config.eval_batch_size), test_loader, device=device
        )
    decode_text = _decode_captions(train_set)
    grid_batch = next(iter(DataLoader(test_subset, batch_size=min(8, len(test_subset)))))
    save_joint_grid(model, out / "joint_samples.png", 8, decode_text=decode_text)
    for name in model.modalities:
        save_cross_grid(model, guide, grid_batch, name, out / f"cross_from_{name}.png", decode_text=decode_text)
    results["eval_seconds"] = time.perf_counter() - started
    return results


def sampler_name(langevin: LangevinConfig) -> str:
    """``"MALA"`` for Metropolis-adjusted chains, ``"Langevin"`` for unadjusted ones."""
    return "MALA" if langevin.metropolis else "Langevin"


@torch.no_grad()
def energy_overlap(model: nn.Module, guide: nn.Module, loader: Iterable, figure_path: Path) -> dict[str, Any]:
    """``f_α`` on posterior draws of ``loader``'s tuples against ``f_α`` on the prior samples that
    generation uses, with the histograms saved at ``figure_path``: a prior that generation samples
    correctly gives overlapping histograms, ``E_q[f] − E_{p_α}[f] ≈ 0``. Also shown: with maximum
    likelihood, the training negatives' chains when generation runs other ones; with noise-contrastive
    estimation, the draws of the noise that ``f_α`` learned to tell from the posterior's."""
    prior = model.prior
    device = prior.loc.device
    posterior = torch.cat([
        sample_mixture(guide.posterior({name: x.to(device) for name, x in batch.items()})) for batch, _ in loader
    ])
    samples = {"posterior q(z|X)": posterior}
    p_alpha = prior()
    generation, negatives = p_alpha.generation, p_alpha.langevin
    generated = f"prior, {sampler_name(generation)} K={generation.steps}, s={generation.step_size}"
    samples[generated] = p_alpha.sample((len(posterior),))
    if p_alpha.estimator == "nce":
        samples["NCE's noise"] = p_alpha.noise_draws(len(posterior))
    elif generation != negatives:
        label = f"prior, {sampler_name(negatives)} K={negatives.steps}, s={negatives.step_size} (training's negatives)"
        samples[label] = langevin_sample(
            p_alpha.unnormalized_log_prob, p_alpha.base_dist.sample((len(posterior),)), negatives
        )
    plot_energy_histograms(prior.energy, samples, path=figure_path)
    means = {label: float(prior.energy(z).mean()) for label, z in samples.items()}
    return {"f_mean": means, "gap": means["posterior q(z|X)"] - means[generated]}


def summary_row(name: str, results: Mapping[str, Any]) -> dict[str, Any]:
    """One table row: the headline numbers of a run's results."""
    row: dict[str, Any] = {"run": name, "test_loss": results.get("test_loss")}
    if "joint_coherence" in results:
        row["joint"] = results["joint_coherence"]
    if results.get("joint_digits") is not None:
        row["joint_top_digit"] = results["joint_digits"]["top_share"]
    if "aggregate_posterior_coherence" in results:
        row["ceiling"] = results["aggregate_posterior_coherence"]
    cross = results.get("cross_coherence")
    if cross is not None:
        cross = cross if isinstance(cross, Mapping) else cross.to_dict()
        row["cross"] = cross["mean"]
        row.update({f"cross_k={k}": v for k, v in cross["mean_by_size"].items()})
    if "linear_probe" in results:
        row["probe_all"] = results["linear_probe"].get("all")
    row["train_s"] = results.get("train_seconds")
    return row


def log_evaluation(log_dir: Path, results: Mapping[str, Any], out: Path, step: int) -> None:
    """The headline numbers of an evaluation (:func:`summary_row`) and its sample grids (the PNGs
    in ``out``) as TensorBoard scalars ``eval/...`` and images at training step ``step``."""
    log = TensorBoardLog(log_dir)
    row = summary_row(out.name, results)
    log.scalars({f"eval/{k}": v for k, v in row.items() if isinstance(v, (int, float)) and k != "train_s"}, step)
    for path in sorted(out.glob("*.png")):
        image = torch.from_numpy(np.array(Image.open(path).convert("RGB"))).permute(2, 0, 1)
        log.images(f"samples/{path.stem}", image.float() / 255, step)
    log.close()


__all__ = ["energy_overlap", "evaluate", "load_classifiers", "log_evaluation", "summary_row"]
