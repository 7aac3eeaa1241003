"""One experiment end to end, for the benchmarks, CUB and the examples: configure, build, train,
evaluate, report.

- :mod:`~pyro_mmebm.experiment.config`: :class:`ExperimentConfig`, everything a run depends on,
  composed of its components' settings, saved as ``experiment.json``; the run's folder;
- :mod:`~pyro_mmebm.experiment.datasets`: the data sets by name (:data:`DATASETS`), with their
  modalities' networks, likelihoods and classifiers, and the training batches;
- :mod:`~pyro_mmebm.experiment.building`: the prior, model, guide and objective of a configuration;
- :mod:`~pyro_mmebm.experiment.running`: :func:`run` (joint or two-stage training, with a checkpoint
  every epoch in ``config.out``, so ``resume=True`` continues an interrupted run; then evaluation,
  ``results.json`` and PNGs) and :func:`load_run`;
- :mod:`~pyro_mmebm.experiment.evaluation`: test objective, joint and cross coherence with cached
  per-modality classifiers, a latent linear probe and sample grids;
- :mod:`~pyro_mmebm.experiment.command_line`: the examples' options, derived from the settings.

**Smoke runs** (``smoke=True``) replace the data by a tiny generated data set in the official file
layout of each data set (:mod:`pyro_mmebm.data.fake`) and every size by a tiny one
(:func:`smoke_config`), so that the whole pipeline runs in seconds.
"""

from pyro_mmebm.data.fake import write_fake_dataset
from pyro_mmebm.experiment.building import build_model_and_guide, build_objective, build_prior
from pyro_mmebm.experiment.command_line import add_arguments, config_from_args
from pyro_mmebm.experiment.config import (
    ADDED_SETTINGS,
    ARCHITECTURE_SETTINGS,
    EXPERIMENT_CONFIG_NAME,
    RESULTS_NAME,
    RESUMABLE_SETTINGS,
    RUN_FILE_PATTERNS,
    TENSORBOARD_FOLDER,
    ExperimentConfig,
    claim_out_folder,
    load_experiment_config,
    read_experiment_config,
    smoke_config,
)
from pyro_mmebm.experiment.datasets import DATASETS, DatasetSpec, build_datasets, train_loader
from pyro_mmebm.experiment.evaluation import evaluate, summary_row
from pyro_mmebm.experiment.running import ModelAndGuide, load_run, run

__all__ = [
    "ADDED_SETTINGS",
    "ARCHITECTURE_SETTINGS",
    "DATASETS",
    "DatasetSpec",
    "EXPERIMENT_CONFIG_NAME",
    "ExperimentConfig",
    "ModelAndGuide",
    "RESULTS_NAME",
    "RESUMABLE_SETTINGS",
    "RUN_FILE_PATTERNS",
    "TENSORBOARD_FOLDER",
    "add_arguments",
    "build_datasets",
    "build_model_and_guide",
    "build_objective",
    "build_prior",
    "claim_out_folder",
    "config_from_args",
    "evaluate",
    "load_experiment_config",
    "load_run",
    "read_experiment_config",
    "run",
    "smoke_config",
    "summary_row",
    "train_loader",
    "write_fake_dataset",
]
