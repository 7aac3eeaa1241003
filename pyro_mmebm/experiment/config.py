"""A run's configuration: everything it depends on, composed of its components' own settings and saved
as ``experiment.json`` in the run's folder; the folder claimed for one run, and the smoke setting."""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional

from guides import GuideConfig
from pyro_mmebm.checkpoint import CHECKPOINT_NAME, CONFIG_NAME
from pyro_mmebm.ebm import EBMPriorConfig
from pyro_mmebm.experiment.datasets import DATASETS
from pyro_mmebm.objectives import OBJECTIVES
from pyro_mmebm.priors import EBM_PRIORS, PRIORS
from pyro_mmebm.run_folder import RESUMES_KEY, claim_run_folder
from pyro_mmebm.settings import at_least, check_settings, from_dict, replace_settings, setting, to_dict, to_flat
from pyro_mmebm.training import METRICS_NAME, TrainConfig
from pyro_mmebm.two_stage import TWO_STAGE_METRICS_NAME

EXPERIMENT_CONFIG_NAME = "experiment.json"
RESULTS_NAME = "results.json"
TENSORBOARD_FOLDER = "tensorboard"


@dataclass(frozen=True)
class ExperimentConfig:
    """Everything a run depends on, saved as ``experiment.json`` beside its checkpoint.

    The components' settings are their own: ``ebm`` the EBM prior's
    (:class:`~pyro_mmebm.ebm.EBMPriorConfig`, its Langevin sampler in ``ebm.langevin``), ``guide`` the
    guide's (:class:`guides.GuideConfig`, private latents included), ``train`` the optimisation's
    (:class:`~pyro_mmebm.training.TrainConfig`, the seed included). The run's own:

    Data: ``dataset`` (a key of :data:`~pyro_mmebm.experiment.datasets.DATASETS`), ``data_root`` (its
    files), ``source_root`` (raw files a data set is generated from when ``data_root`` lacks it:
    PolyMNIST from MNIST and the backgrounds), ``download`` (fetch missing files online: MNIST and
    SVHN through torchvision, the official PolyMNIST and MMVAE CUB releases), ``cache_dir`` (writable:
    classifiers, pairings), ``batch_size`` and ``epoch_size`` (training examples drawn at random per
    epoch; ``None``: the whole set).

    Model: ``latent_dim``, ``prior`` (a key of :data:`~pyro_mmebm.priors.PRIORS`), ``objective`` (a
    key of :data:`~pyro_mmebm.objectives.OBJECTIVES`) with ``num_samples`` = ``K``.

    Evaluation: ``eval_size`` test examples (a strided subset: the sets are stored digit by digit)
    in batches of ``eval_batch_size``, ``joint_samples`` prior samples, ``probe_train_size`` training
    examples for the linear probe, ``max_source_size`` (largest source subset for cross coherence),
    ``classifier_epochs``.

    Two-stage: ``two_stage_from`` (a run directory) and ``two_stage_epochs``. ``start_from``: a
    checkpoint of a run that differs in its prior only, to start from (see :func:`pyro_mmebm.fit`).
    ``device``; ``tensorboard``: log training and evaluation to ``out/tensorboard`` as well (needs the
    ``tensorboard`` package); ``smoke``: tiny generated data and sizes (:func:`smoke_config`).

    The run's folder ``out``: ``resume`` continues the run there; ``overwrite`` deletes the run there
    first; without either, a folder holding a run is refused. ``resumes`` is the run's history of
    resumes that changed a setting (see :data:`RESUMABLE_SETTINGS`), written by
    :func:`claim_out_folder`.

    Every setting has a flat name, its command-line option without the dashes (``ebm.langevin.step_size``
    is ``langevin_step_size``, ``--langevin-step-size``): change settings by it with
    :func:`~pyro_mmebm.settings.replace_settings`. Impossible settings (``epochs=0``, a negative step
    size, ...) raise ``ValueError`` on construction.
    """

    dataset: str = setting(choices=DATASETS)
    out: str = setting(help="output folder: checkpoints, results, grids")
    data_root: str = setting(help="folder with the data set's files")
    source_root: Optional[str] = setting(None, "raw files to generate the data set from when missing")
    download: bool = setting(False, "fetch missing data files online")
    cache_dir: str = setting("./data/cache", "writable cache: classifiers, pairings")
    prior: str = setting("ebm", "prior of the shared latent", choices=PRIORS)
    latent_dim: int = setting(20, "dimension of the shared latent", check=at_least(1))
    ebm: EBMPriorConfig = field(default_factory=EBMPriorConfig)
    guide: GuideConfig = field(default_factory=GuideConfig)
    objective: str = setting("elbo", "training objective", choices=OBJECTIVES)
    num_samples: int = setting(1, "importance samples per stratum (iwae, dreg)", check=at_least(1), flag="-K")
    train: TrainConfig = field(default_factory=TrainConfig)
    batch_size: int = setting(128, "training batch size", check=at_least(1))
    epoch_size: Optional[int] = setting(None, "training examples per epoch (None: all)", check=at_least(1))
    device: str = setting("auto", "auto (cuda when present), cpu, cuda, cuda:1, ...")
    tensorboard: bool = setting(False, "log training and evaluation to OUT/tensorboard (needs tensorboard)")
    eval_size: int = setting(1000, "test examples for coherence and the probe", check=at_least(1))
    eval_batch_size: int = setting(250, "batch size of the evaluation", check=at_least(1))
    joint_samples: int = setting(1000, "prior samples for joint coherence", check=at_least(1))
    probe_train_size: int = setting(2000, "training examples of the linear probe", check=at_least(1))
    max_source_size: Optional[int] = setting(
        None, "largest source subset for cross coherence (None: all)", check=at_least(1)
    )
    classifier_epochs: int = setting(4, "epochs of the coherence classifiers", check=at_least(1))
    two_stage_from: Optional[str] = setting(None, "fit an EBM prior to this trained run's posterior")
    two_stage_epochs: int = setting(5, "epochs of the two-stage prior fit", check=at_least(1))
    start_from: Optional[str] = setting(
        None, "start from this checkpoint of a run differing in its prior only (e.g. a Laplace run at the end "
        "of the EBM warm-up)",
    )
    smoke: bool = setting(False, "a seconds-long run on tiny generated data")
    resume: bool = setting(False, "continue the run in --out")
    overwrite: bool = setting(False, "delete the run in --out and start afresh")
    resumes: list[dict[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        check_settings(self)
        if self.two_stage_from is not None and self.prior not in EBM_PRIORS:
            raise ValueError(f"two-stage training fits an EBM prior; got prior {self.prior!r}")


RETIRED_SETTINGS = ("extra",)
"""Settings of earlier versions that no longer exist, dropped when their ``experiment.json`` is read."""

ADDED_SETTINGS = {
    "ebm_encoder_gradient": 1.0,
    "ebm_estimator": "ml",
    "ebm_nce_noise": "base",
    "ebm_generation_steps": None,
    "ebm_generation_step_size": None,
    "ebm_generation_start": "base",
    "ebm_warmup_epochs": 0,
    "ebm_ceiling_margin": math.inf,
}
"""Settings added since the first runs were saved, with what those runs did, for an ``experiment.json``
that lacks them: the full encoder gradient, maximum likelihood, NCE against ``p0`` (before its noise
was a setting), generation by the training sampler from ``p0`` (``None``, which is that for an
unbounded ``f_α``), no warm-up, ``f_α`` unbounded. Their defaults now differ."""

ARCHITECTURE_SETTINGS = ("dataset", "latent_dim", "private_latent_dim", "guide")
"""Settings a two-stage run takes from the run it starts from (they fix the trained networks)."""

RUN_FILE_PATTERNS = (
    EXPERIMENT_CONFIG_NAME, CHECKPOINT_NAME, CONFIG_NAME, METRICS_NAME, TWO_STAGE_METRICS_NAME, RESULTS_NAME,
    "*.png", ".*.tmp", f"{TENSORBOARD_FOLDER}/*",
)
"""The files :func:`~pyro_mmebm.experiment.run` writes into ``config.out``: a folder holding any of them holds a run."""

RESUMABLE_SETTINGS = (
    "epochs", "two_stage_epochs", "max_energy_gap", "ebm_generation_steps", "ebm_generation_step_size", "ebm_generation_start",
    "ebm_generation_metropolis", "device",
    "tensorboard", "data_root", "source_root", "download", "cache_dir", "eval_size", "eval_batch_size", "joint_samples",
    "probe_train_size", "max_source_size", "classifier_epochs", "channels_last", "precision", "compile",
)
"""Settings (by flat name) a resume may change: they do not change what the finished epochs trained;
each change is recorded in ``resumes``. A resume that changes any other setting is refused."""


def read_experiment_config(saved: Mapping[str, Any]) -> ExperimentConfig:
    """An :class:`ExperimentConfig` from its JSON form: nested, or flat (every setting by its flat name,
    ``ebm_hidden``, ``langevin_step_size``, ...) as earlier versions wrote it; settings it lacks (added
    since) take what those versions did (:data:`ADDED_SETTINGS`), or their defaults."""
    return from_dict(ExperimentConfig, saved, retired=RETIRED_SETTINGS, added=ADDED_SETTINGS)


def load_experiment_config(directory: str | Path) -> ExperimentConfig:
    """The :class:`ExperimentConfig` saved in a run's directory (:func:`read_experiment_config`)."""
    path = Path(directory) / EXPERIMENT_CONFIG_NAME
    if not path.is_file():
        raise FileNotFoundError(f"no {EXPERIMENT_CONFIG_NAME} in {directory}: is it the output folder of a run?")
    return read_experiment_config(json.loads(path.read_text()))


def claim_out_folder(config: ExperimentConfig) -> ExperimentConfig:
    """Make ``config.out`` this run's folder and write ``experiment.json`` there; return ``config``
    with the run's history of resumes.

    See :func:`~pyro_mmebm.run_folder.claim_run_folder`: a folder holding another run is refused
    unless ``config.overwrite``; a resume is checked against the saved run, setting by setting (a
    run saved flat by an earlier version is read as such, and is written back nested), before
    anything is written. A resume that does not give ``start_from`` keeps the saved run's: where a
    run started matters only before its first checkpoint.
    """
    saved = Path(config.out) / EXPERIMENT_CONFIG_NAME
    if config.resume and config.start_from is None and saved.is_file():
        config = dataclasses.replace(config, start_from=load_experiment_config(config.out).start_from)
    written = claim_run_folder(
        config.out, to_dict(config), config_name=EXPERIMENT_CONFIG_NAME, patterns=RUN_FILE_PATTERNS,
        resume=config.resume, overwrite=config.overwrite, may_change=RESUMABLE_SETTINGS,
        ignore=("out", "resume", "overwrite"), settings=lambda saved: to_flat(read_experiment_config(saved)),
    )
    return dataclasses.replace(config, resumes=written[RESUMES_KEY])


def smoke_config(config: ExperimentConfig) -> ExperimentConfig:
    """``config`` shrunk to seconds: generated data under ``<out>/smoke_data``, tiny networks and sizes,
    and a warm-up that leaves the EBM prior's tilt its last epoch to train."""
    data = str(Path(config.out) / "smoke_data")
    epochs = min(config.train.epochs, 2)
    return replace_settings(
        config,
        data_root=data, source_root=None, cache_dir=str(Path(data) / "cache"), smoke=True,
        latent_dim=min(config.latent_dim, 4), private_latent_dim=min(config.guide.private_latent_dim, 2),
        ebm_hidden=min(config.ebm.hidden, 16), ebm_depth=min(config.ebm.depth, 2),
        langevin_steps=min(config.ebm.langevin.steps, 3), num_samples=min(config.num_samples, 2),
        ebm_generation_steps=min(config.ebm.generation.steps, 3),  # the bounded prior's default is 1,000
        epochs=epochs, ebm_warmup_epochs=min(config.train.prior_warmup_epochs, epochs - 1),
        batch_size=min(config.batch_size, 10), epoch_size=None,
        eval_size=10, eval_batch_size=10, joint_samples=10, probe_train_size=20,
        max_source_size=1, classifier_epochs=1, two_stage_epochs=min(config.two_stage_epochs, 1),
    )


__all__ = [
    "ADDED_SETTINGS",
    "ARCHITECTURE_SETTINGS",
    "EXPERIMENT_CONFIG_NAME",
    "RESULTS_NAME",
    "RESUMABLE_SETTINGS",
    "RETIRED_SETTINGS",
    "RUN_FILE_PATTERNS",
    "TENSORBOARD_FOLDER",
    "ExperimentConfig",
    "claim_out_folder",
    "load_experiment_config",
    "read_experiment_config",
    "smoke_config",
]
