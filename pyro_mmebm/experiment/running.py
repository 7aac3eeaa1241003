"""Running one experiment end to end: the run's folder and processes, its data, training (jointly, or
two-stage), evaluation and report; and rebuilding a trained run from its folder.

**Two-stage training** (``two_stage_from=<run dir>``), as the paper does on CUB [1]: the encoders
and decoders of a trained run (typically with the Laplace prior) are frozen and an
:class:`~pyro_mmebm.ebm.EnergyBasedPrior` is fitted to the aggregate posterior
``q(z) = E_data[q(z | X)]`` by maximum likelihood on guide samples
(:func:`~pyro_mmebm.two_stage.fit_prior_to_posterior`).

[1] Yuan et al. (2024) "Learning Multimodal Latent Generative Models with Energy-Based Prior".
"""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path
from typing import Any, Callable, Optional

import torch
from torch import nn
from torch.utils.data import Dataset

from pyro_mmebm.checkpoint import load_checkpoint
from pyro_mmebm.device import select_device
from pyro_mmebm.distributed import ProcessGroup, process_group_from_environment
from pyro_mmebm.evaluation.coherence import format_table, save_results_json
from pyro_mmebm.experiment.building import build_model_and_guide, build_objective, build_prior
from pyro_mmebm.experiment.config import (
    ARCHITECTURE_SETTINGS,
    RESULTS_NAME,
    TENSORBOARD_FOLDER,
    ExperimentConfig,
    claim_out_folder,
    load_experiment_config,
    smoke_config,
)
from pyro_mmebm.experiment.datasets import build_datasets, examples_per_epoch, train_loader
from pyro_mmebm.experiment.evaluation import evaluate, log_evaluation, summary_row
from pyro_mmebm.priors import EBM_PRIORS
from pyro_mmebm.settings import replace_settings, to_dict, to_flat
from pyro_mmebm.training import fit
from pyro_mmebm.two_stage import PosteriorTable, fit_prior_to_posterior

ModelAndGuide = Callable[[ExperimentConfig], tuple[nn.Module, nn.Module]]
"""Builds the model and guide a configuration describes (seeded with ``config.train.seed``)."""


def run(
    config: ExperimentConfig, *, progress: bool = True, model_and_guide: Optional[ModelAndGuide] = None
) -> dict[str, Any]:
    """Train (or, with ``two_stage_from``, fit the EBM prior of a trained run) and evaluate.

    Writes ``experiment.json``, a checkpoint per epoch, ``results.json`` and PNG grids into
    ``config.out``, prints a one-row table and returns the results. A folder holding another run is
    refused unless ``config.resume`` or ``config.overwrite`` (:func:`claim_out_folder`).

    :param model_and_guide: builds the model and guide (an example's, written out in it); default
        :func:`~pyro_mmebm.experiment.build_model_and_guide` from the data set's registry entry. A
        two-stage run rebuilds the trained run with it as well.

    Launched by ``torchrun`` with several processes, it joins their process group
    (:func:`~pyro_mmebm.distributed.process_group_from_environment`) and trains data-parallel; rank 0
    alone claims the folder, writes files and evaluates, and the other processes return the training
    history only.
    """
    if config.smoke and Path(config.data_root) != Path(config.out) / "smoke_data":
        config = smoke_config(config)
    if config.two_stage_from is not None:
        config = _with_first_stage_architecture(config)
    elif config.prior in EBM_PRIORS and config.train.prior_warmup_epochs >= config.train.epochs:
        raise ValueError(
            f"--ebm-warmup-epochs {config.train.prior_warmup_epochs} leaves none of the {config.train.epochs} "
            "epochs to train the EBM prior: pass more --epochs or fewer --ebm-warmup-epochs"
        )
    with process_group_from_environment(config.device) as (group, device_name):
        device = select_device(device_name)
        return _run(config, group, device, progress=progress and group.is_main, model_and_guide=model_and_guide)


def _with_first_stage_architecture(config: ExperimentConfig) -> ExperimentConfig:
    """``config`` with the settings that fix the networks taken from the run it starts from."""
    first = load_experiment_config(config.two_stage_from)
    if first.dataset != config.dataset:
        raise ValueError(
            f"--two-stage-from {config.two_stage_from} is a {first.dataset} run; a {config.dataset} run "
            "cannot start from it"
        )
    first_settings = to_flat(first)
    return replace_settings(config, **{name: first_settings[name] for name in ARCHITECTURE_SETTINGS})


def _run(
    config: ExperimentConfig,
    group: ProcessGroup,
    device: torch.device,
    *,
    progress: bool,
    model_and_guide: Optional[ModelAndGuide],
) -> dict[str, Any]:
    out = Path(config.out)
    if not group.is_main:  # rank 0 first writes what is missing (generated or fake data), then the rest read
        group.barrier()
    train_set, test_set = build_datasets(config)
    if group.is_main:
        config = claim_out_folder(config)
        group.barrier()
    config = group.broadcast(config)
    build = model_and_guide or functools.partial(build_model_and_guide, train_set=train_set)
    tensorboard = out / TENSORBOARD_FOLDER if config.tensorboard else None
    if config.two_stage_from is not None:
        model, guide = _first_stage(config, build, device)
        # q(z | X) of every training example, once: the encoders are frozen from here on
        posteriors = PosteriorTable.of(guide, train_set, batch_size=config.eval_batch_size, device=device, progress=progress)
        history = fit_prior_to_posterior(
            model, guide, posteriors.loader(config.batch_size, epoch_size=examples_per_epoch(config, train_set)),
            dataclasses.replace(config.train, epochs=config.two_stage_epochs), out_dir=out, resume=config.resume,
            device=device, progress=progress, tensorboard=tensorboard, posterior=posteriors.posterior,
        )
    else:
        model, guide = build(config)
        history = fit(
            model, guide, train_loader(config, train_set, device), config.train, elbo=build_objective(config),
            out_dir=out, resume=config.resume, start_from=config.start_from, device=device, progress=progress,
            tensorboard=tensorboard,
        )
    results = {"config": to_dict(config), "history": history, "train_seconds": sum(r["seconds"] for r in history)}
    if not group.is_main:
        return results
    results.update(evaluate(config, model, guide, train_set, test_set, device, progress))
    save_results_json(results, out / RESULTS_NAME)
    if tensorboard is not None:
        log_evaluation(tensorboard, results, out, step=sum(record["steps"] for record in history))
    print(format_table([summary_row(out.name, results)]))
    return results


def _first_stage(
    config: ExperimentConfig, build: ModelAndGuide, device: torch.device
) -> tuple[nn.Module, nn.Module]:
    """The trained model and guide of ``config.two_stage_from``, with a fresh prior of ``config``."""
    model, guide = build(load_experiment_config(config.two_stage_from))
    load_checkpoint(config.two_stage_from, {"model": model, "guide": guide}, map_location=device)
    model.prior = build_prior(config)
    return model.to(device), guide.to(device)


def load_run(
    directory: str | Path, device: Optional[torch.device] = None
) -> tuple[ExperimentConfig, nn.Module, nn.Module, Dataset, Dataset]:
    """Rebuild a trained run from its directory: ``(config, model, guide, train_set, test_set)``.

    The model and guide are built from ``experiment.json`` (a two-stage run already names its EBM
    prior there; a flat ``experiment.json`` of an earlier version is read as well), loaded from the
    checkpoint, moved to ``device`` (default: the run's) and put in eval mode.
    """
    config = load_experiment_config(directory)
    device = device or select_device(config.device)
    train_set, test_set = build_datasets(config)
    model, guide = build_model_and_guide(config, train_set)
    load_checkpoint(directory, {"model": model, "guide": guide}, map_location=device)
    return config, model.to(device).eval(), guide.to(device).eval(), train_set, test_set


__all__ = ["ModelAndGuide", "load_run", "run"]
