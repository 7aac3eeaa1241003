"""One experiment end to end, shared by the example scripts: build, train, evaluate, report.

An :class:`ExperimentConfig` names everything a run depends on (data set, networks, prior, guide,
objective, optimisation, evaluation); :func:`run` builds the data sets (:data:`DATASETS`), the
networks (:data:`~pyro_mmebm.networks.ARCHITECTURES`), the likelihoods, the prior
(:data:`~pyro_mmebm.priors.PRIORS`), the guide (:data:`guides.GUIDES`) and the objective
(:data:`~pyro_mmebm.objectives.OBJECTIVES`), trains with :func:`pyro_mmebm.fit` (a checkpoint every
epoch in ``config.out``, so ``resume=True`` continues an interrupted run) and evaluates: test
objective, joint and cross coherence with cached per-modality classifiers, a latent linear probe,
and sample grids, written to ``config.out/results.json`` and PNGs beside it.

**Two-stage training** (``two_stage_from=<run dir>``), as the paper does on CUB [1]: the encoders
and decoders of a trained run (typically with the Laplace prior) are frozen and an
:class:`~pyro_mmebm.priors.EnergyBasedPrior` is fitted to the aggregate posterior
``q(z) = E_data[q(z | X)]`` by maximum likelihood on guide samples (:func:`fit_prior_to_posterior`).

**Smoke runs** (``smoke=True``) replace the data by a tiny generated data set in the official file
layout of each data set (:func:`write_fake_dataset`) and every size by a tiny one
(:func:`smoke_config`), so that the whole pipeline runs in seconds.

[1] Yuan et al. (2024) "Learning Multimodal Latent Generative Models with Energy-Based Prior".
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Optional

import numpy as np
import pyro
import torch
from PIL import Image
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, RandomSampler

from guides import GUIDES, PrivateLatentGuide
from models import MultimodalVAE
from models.private_latents import PrivateLatentVAE
from pyro_mmebm.checkpoint import CHECKPOINT_NAME, CONFIG_NAME, load_checkpoint
from pyro_mmebm.data import MNISTSVHN, CUBImageCaption, InMemoryBatches, PolyMNIST, strided_subset
from pyro_mmebm.data.cub import TEST_CAPTIONS, TRAIN_CAPTIONS
from pyro_mmebm.device import select_device
from pyro_mmebm.distributed import ProcessGroup, process_group_from_environment
from pyro_mmebm.evaluation import load_or_train_classifier
from pyro_mmebm.diagnostics.figures import plot_energy_histograms
from pyro_mmebm.evaluation.coherence import (
    aggregate_posterior_coherence,
    cross_coherence,
    format_table,
    joint_coherence,
    linear_probe_accuracy,
    save_cross_grid,
    save_joint_grid,
    sample_mixture,
    save_results_json,
)
from pyro_mmebm.ebm import EBMPriorConfig, EnergyBasedPrior, LangevinConfig
from pyro_mmebm.ebm.langevin import langevin_sample
from pyro_mmebm.likelihoods import Likelihood
from pyro_mmebm.networks import ARCHITECTURES, CAPTION_LENGTH
from pyro_mmebm.objectives import OBJECTIVES, SubsampledELBO
from pyro_mmebm.priors import PRIORS
from pyro_mmebm.run_folder import RESUMES_KEY, claim_run_folder
from pyro_mmebm.tensorboard import TensorBoardLog
from pyro_mmebm.training import (
    METRICS_NAME,
    TWO_STAGE_METRICS_NAME,
    TrainConfig,
    evaluate_loss,
    fit,
    fit_prior_to_posterior,
)

EXPERIMENT_CONFIG_NAME = "experiment.json"
RESULTS_NAME = "results.json"
TENSORBOARD_FOLDER = "tensorboard"


# --- the configuration ---------------------------------------------------------------------------


_AT_LEAST = {
    "latent_dim": 1, "private_latent_dim": 0, "ebm_hidden": 1, "ebm_depth": 1, "langevin_steps": 0,
    "ebm_generation_steps": 0, "ebm_warmup_epochs": 0, "num_samples": 1, "epochs": 1, "batch_size": 1,
    "epoch_size": 1, "eval_size": 1, "eval_batch_size": 1, "joint_samples": 1, "probe_train_size": 1,
    "max_source_size": 1, "classifier_epochs": 1, "two_stage_epochs": 1,
}
"""The smallest value of each whole-number setting (``None``, where allowed, means the default)."""
_POSITIVE = ("langevin_step_size", "lr", "prior_lr", "grad_clip", "max_energy_gap")
_NON_NEGATIVE = ("ebm_regularisation",)


def _setting_problem(name: str, value: Any) -> Optional[str]:
    """What makes ``value`` impossible for the setting ``name``, or ``None`` when it is possible."""
    if value is None:
        return None
    if name in _AT_LEAST and value < _AT_LEAST[name]:
        return f"must be at least {_AT_LEAST[name]}, got {value}"
    if name in _POSITIVE and not (value > 0 and (math.isfinite(value) or name == "max_energy_gap")):
        return f"must be a positive number, got {value}"
    if name in _NON_NEGATIVE and not (value >= 0 and math.isfinite(value)):
        return f"must be a non-negative number, got {value}"
    return None


def _flag(name: str) -> str:
    """The command-line option of the setting ``name``."""
    return "-K" if name == "num_samples" else "--" + name.replace("_", "-")


@dataclass
class ExperimentConfig:
    """Everything a run depends on, saved as ``experiment.json`` beside its checkpoint.

    Data: ``dataset`` (a key of :data:`DATASETS`), ``data_root`` (its files), ``source_root`` (raw
    files a data set is generated from when ``data_root`` lacks it: PolyMNIST from MNIST and the
    backgrounds), ``download`` (fetch missing files online: MNIST and SVHN through torchvision, the
    official PolyMNIST and MMVAE CUB releases), ``cache_dir`` (writable: classifiers, pairings),
    ``epoch_size`` (training examples drawn at random per epoch; ``None``: the whole set).

    Model: ``latent_dim``, ``private_latent_dim`` (> 0: a private latent per modality, MMVAE+ style),
    ``prior`` (a key of :data:`~pyro_mmebm.priors.PRIORS`) and the EBM prior's settings ``ebm_*`` and
    ``langevin_*``, ``guide`` (a key of :data:`guides.GUIDES`), ``objective`` (a key of
    :data:`~pyro_mmebm.objectives.OBJECTIVES`) with ``num_samples`` = ``K``.

    Evaluation: ``eval_size`` test examples (a strided subset: the sets are stored digit by digit),
    ``joint_samples`` prior samples, ``probe_train_size`` training examples for the linear probe,
    ``max_source_size`` (largest source subset for cross coherence), ``classifier_epochs``.

    Two-stage: ``two_stage_from`` (a run directory) and ``two_stage_epochs``. ``start_from``: a
    checkpoint of a run that differs in its prior only, to start from (see :func:`pyro_mmebm.fit`). ``extra``: free-form
    notes kept with the run.

    ``tensorboard``: log training and evaluation to ``out/tensorboard`` as well (needs the
    ``tensorboard`` package).

    The run's folder: ``resume`` continues the run in ``out``; ``overwrite`` deletes the run there
    first; without either, a folder holding a run is refused. ``resumes`` is the run's history of
    resumes that changed a setting (see :data:`RESUMABLE_FIELDS`), written by :func:`run`.

    Impossible settings (``epochs=0``, a negative step size, ...) raise ``ValueError`` on construction.
    """

    dataset: str
    out: str
    data_root: str
    source_root: Optional[str] = None
    download: bool = False
    cache_dir: str = "./data/cache"
    prior: str = "ebm"
    latent_dim: int = 20
    private_latent_dim: int = 0
    ebm_hidden: int = 200
    ebm_depth: int = 4
    ebm_regularisation: float = 0.1
    ebm_spectral_norm: bool = False
    ebm_persistent: bool = False
    langevin_steps: int = 50
    langevin_step_size: float = 0.3
    ebm_generation_steps: Optional[int] = None
    ebm_warmup_epochs: int = 0
    guide: str = "moe"
    objective: str = "elbo"
    num_samples: int = 1
    epochs: int = 10
    batch_size: int = 128
    epoch_size: Optional[int] = None
    lr: float = 1e-3
    amsgrad: bool = False
    prior_lr: float = 1e-4
    grad_clip: Optional[float] = None
    max_energy_gap: float = 1e3
    seed: int = 0
    device: str = "auto"
    tensorboard: bool = False
    eval_size: int = 1000
    eval_batch_size: int = 250
    joint_samples: int = 1000
    probe_train_size: int = 2000
    max_source_size: Optional[int] = None
    classifier_epochs: int = 4
    two_stage_from: Optional[str] = None
    start_from: Optional[str] = None
    two_stage_epochs: int = 5
    smoke: bool = False
    resume: bool = False
    overwrite: bool = False
    extra: dict[str, Any] = field(default_factory=dict)
    resumes: list[dict[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        for name in (*_AT_LEAST, *_POSITIVE, *_NON_NEGATIVE):
            problem = _setting_problem(name, getattr(self, name))
            if problem is not None:
                raise ValueError(f"{name} ({_flag(name)}) {problem}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def train_config(self) -> TrainConfig:
        return TrainConfig(
            epochs=self.epochs, lr=self.lr, amsgrad=self.amsgrad, prior_lr=self.prior_lr, grad_clip=self.grad_clip,
            max_energy_gap=self.max_energy_gap, seed=self.seed, prior_warmup_epochs=self.ebm_warmup_epochs,
        )


ARCHITECTURE_FIELDS = ("dataset", "latent_dim", "private_latent_dim", "guide")
"""Settings a two-stage run takes from the run it starts from (they fix the trained networks)."""

RUN_FILE_PATTERNS = (
    EXPERIMENT_CONFIG_NAME, CHECKPOINT_NAME, CONFIG_NAME, METRICS_NAME, TWO_STAGE_METRICS_NAME, RESULTS_NAME,
    "*.png", ".*.tmp", f"{TENSORBOARD_FOLDER}/*",
)
"""The files :func:`run` writes into ``config.out``: a folder holding any of them holds a run."""

RESUMABLE_FIELDS = (
    "epochs", "two_stage_epochs", "max_energy_gap", "ebm_generation_steps", "device", "tensorboard", "data_root",
    "source_root", "download", "cache_dir", "eval_size", "eval_batch_size", "joint_samples",
    "probe_train_size", "max_source_size", "classifier_epochs", "extra",
)
"""Settings a resume may change (they do not change what the finished epochs trained); each change is
recorded in ``resumes``. A resume that changes any other setting is refused."""


def claim_out_folder(config: ExperimentConfig) -> ExperimentConfig:
    """Make ``config.out`` this run's folder and write ``experiment.json`` there; return ``config``
    with the run's history of resumes.

    See :func:`~pyro_mmebm.run_folder.claim_run_folder`: a folder holding another run is refused
    unless ``config.overwrite``; a resume is checked against the saved run before anything is written.
    """
    written = claim_run_folder(
        config.out, config.to_dict(), config_name=EXPERIMENT_CONFIG_NAME, patterns=RUN_FILE_PATTERNS,
        resume=config.resume, overwrite=config.overwrite, may_change=RESUMABLE_FIELDS,
        ignore=("out", "resume", "overwrite"),
        defaults=ExperimentConfig(dataset=config.dataset, out=config.out, data_root=config.data_root).to_dict(),
    )
    return dataclasses.replace(config, resumes=written[RESUMES_KEY])


def load_experiment_config(directory: str | Path) -> ExperimentConfig:
    """The :class:`ExperimentConfig` saved in a run's directory."""
    path = Path(directory) / EXPERIMENT_CONFIG_NAME
    if not path.is_file():
        raise FileNotFoundError(f"no {EXPERIMENT_CONFIG_NAME} in {directory}: is it the output folder of a run?")
    return ExperimentConfig(**json.loads(path.read_text()))


# --- data sets -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class DatasetSpec:
    """How to build one data set and the networks, likelihoods and classifiers of its modalities.

    :param load: ``(config, train) -> Dataset`` of items ``({modality: tensor}, label)``.
    :param architectures: ``{modality: key of ARCHITECTURES}``.
    :param likelihoods: ``{modality: Likelihood}``.
    :param likelihood_scales: ``{modality: scale of its log-likelihood}`` (MMVAE's balancing).
    :param classifiers: ``{modality: key of CLASSIFIERS}``; empty where digits are not the labels.
    :param write_fake: ``(root, seed) -> None``: a tiny data set in the official layout under ``root``
        (``data_root`` and ``source_root`` of a smoke run are ``root``).
    :param probe: whether labels are shared by the two splits, so that a linear probe means something.
    """

    load: Callable[[ExperimentConfig, bool], Dataset]
    architectures: Mapping[str, str]
    likelihoods: Mapping[str, Likelihood]
    likelihood_scales: Mapping[str, float]
    classifiers: Mapping[str, str]
    write_fake: Callable[[Path, int], None]
    probe: bool = True


IMAGE_LIKELIHOOD = Likelihood("laplace", 0.75)
"""MMVAE's image likelihood: a Laplace with fixed scale 0.75 around the decoded mean."""


def _load_polymnist(config: ExperimentConfig, train: bool) -> Dataset:
    source = None
    if config.source_root is not None:
        source = (config.source_root, str(Path(config.source_root) / "PolyMNIST" / "backgrounds"))
    return PolyMNIST(config.data_root, train=train, generate_from=source, download=config.download)


def _load_mnist_svhn(config: ExperimentConfig, train: bool) -> Dataset:
    # Smoke data has a handful of images per class: pair each once instead of MMVAE's 30 times.
    pairs = 1 if config.smoke else 30
    return MNISTSVHN(
        config.data_root, train=train, download=config.download, pairs_per_example=pairs, cache_dir=config.cache_dir
    )


def _load_cub(config: ExperimentConfig, train: bool) -> Dataset:
    train_set = CUBImageCaption(config.data_root, train=True, download=config.download)
    if train:
        return train_set
    return CUBImageCaption(config.data_root, train=False, vocabulary=train_set.vocabulary, download=config.download)


def _fake_digits(n: int, seed: int, size: int = 28) -> tuple[np.ndarray, np.ndarray]:
    """``n`` uint8 images ``(n, size, size)`` with labels ``0..9`` cycling: a bright bar per digit."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 10
    images = rng.integers(0, 40, (n, size, size), dtype=np.uint8)
    for image, label in zip(images, labels):
        image[2 * label + 4 : 2 * label + 8, 4:-4] = 255
    return images, labels


def _write_idx(path: Path, array: np.ndarray) -> None:
    """An MNIST idx file: magic ``0x0800 | ndim`` byte code 8 (uint8), big-endian sizes, then the data."""
    header = bytes([0, 0, 8, array.ndim]) + b"".join(int(n).to_bytes(4, "big") for n in array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def _write_fake_mnist(root: Path, seed: int) -> None:
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for prefix, n, offset in (("train", 50, 0), ("t10k", 30, 1)):
        images, labels = _fake_digits(n, seed + offset)
        _write_idx(raw / f"{prefix}-images-idx3-ubyte", images)
        _write_idx(raw / f"{prefix}-labels-idx1-ubyte", labels)


def _write_fake_mnist_svhn(root: Path, seed: int) -> None:
    import scipy.io

    _write_fake_mnist(root, seed)
    (root / "SVHN").mkdir(parents=True, exist_ok=True)
    for name, n, offset in (("train_32x32.mat", 50, 2), ("test_32x32.mat", 30, 3)):
        images, labels = _fake_digits(n, seed + offset, size=32)
        # SVHN's .mat layout: X is (32, 32, 3, N), y is (N, 1) with 10 for the digit 0.
        x = np.repeat(images[..., None], 3, axis=-1).transpose(1, 2, 3, 0)
        scipy.io.savemat(root / "SVHN" / name, {"X": x, "y": np.where(labels == 0, 10, labels)[:, None]})


def _write_fake_polymnist(root: Path, seed: int) -> None:
    """The official release layout ``<root>/<split>/m0..m4/<index>.<label>.png``."""
    for split, n, offset in (("train", 40, 0), ("test", 20, 1)):
        for k in range(len(PolyMNIST.modalities)):
            images, labels = _fake_digits(n, seed + 10 * k + offset)
            folder = root / split / f"m{k}"
            folder.mkdir(parents=True, exist_ok=True)
            colour = np.array([(k * 50) % 256, 128, 255 - k * 40], dtype=np.uint8)
            for index, (image, label) in enumerate(zip(images, labels)):
                rgb = np.where(image[..., None] > 128, colour, image[..., None]).astype(np.uint8)
                Image.fromarray(rgb).save(folder / f"{index}.{label}.png")


_FAKE_WORDS = ("this", "bird", "has", "a", "red", "blue", "small", "wing", "beak", "long", "tail", "and")


def _write_fake_cub(root: Path, seed: int) -> None:
    """MMVAE's CUB layout under ``<root>/cub``: captions (10 per image) and ``<split>/<class>/*.jpg``."""
    rng = np.random.default_rng(seed)
    cub = root / "cub"
    for split, captions_name, classes in (("train", TRAIN_CAPTIONS, ("001.A", "002.B")), ("test", TEST_CAPTIONS, ("003.C", "004.D"))):
        captions = []
        for label, name in enumerate(classes):
            folder = cub / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(2):
                image = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
                image[:, :, label % 3] = 255
                Image.fromarray(image).save(folder / f"{i}.jpg")
                captions += [" ".join(rng.choice(_FAKE_WORDS, 6)) + " ." for _ in range(10)]
        (cub / captions_name).write_text("\n".join(captions) + "\n")


DATASETS: dict[str, DatasetSpec] = {
    "mnist_svhn": DatasetSpec(
        load=_load_mnist_svhn,
        architectures={"mnist": "mnist", "svhn": "svhn"},
        likelihoods={"mnist": IMAGE_LIKELIHOOD, "svhn": IMAGE_LIKELIHOOD},
        # MMVAE weighs MNIST's log-likelihood by the ratio of the data sizes, 3·32·32 / (1·28·28).
        likelihood_scales={"mnist": 3 * 32 * 32 / (1 * 28 * 28), "svhn": 1.0},
        classifiers={"mnist": "mnist", "svhn": "svhn"},
        write_fake=_write_fake_mnist_svhn,
    ),
    "polymnist": DatasetSpec(
        load=_load_polymnist,
        architectures={name: "polymnist" for name in PolyMNIST.modalities},
        likelihoods={name: IMAGE_LIKELIHOOD for name in PolyMNIST.modalities},
        likelihood_scales={name: 1.0 for name in PolyMNIST.modalities},
        classifiers={name: "polymnist" for name in PolyMNIST.modalities},
        write_fake=_write_fake_polymnist,
    ),
    "cub": DatasetSpec(
        load=_load_cub,
        architectures={"image": "cub_image", "caption": "cub_caption"},
        likelihoods={"image": IMAGE_LIKELIHOOD, "caption": Likelihood("categorical")},
        # MMVAE's CUB: the image log-likelihood weighted by caption length / image size.
        likelihood_scales={"image": CAPTION_LENGTH / (3 * 64 * 64), "caption": 1.0},
        classifiers={},
        write_fake=_write_fake_cub,
        probe=False,  # train and test hold different bird classes
    ),
}
"""How to build each data set of the paper, by name."""


def write_fake_dataset(dataset: str, root: str | Path, seed: int = 0) -> Path:
    """Write a tiny generated copy of ``dataset`` in its official layout under ``root``; return ``root``."""
    root = Path(root)
    DATASETS[dataset].write_fake(root, seed)
    return root


def smoke_config(config: ExperimentConfig) -> ExperimentConfig:
    """``config`` shrunk to seconds: generated data under ``<out>/smoke_data``, tiny networks and sizes."""
    data = str(Path(config.out) / "smoke_data")
    return dataclasses.replace(
        config,
        data_root=data, source_root=None, cache_dir=str(Path(data) / "cache"), smoke=True,
        latent_dim=min(config.latent_dim, 4), private_latent_dim=min(config.private_latent_dim, 2),
        ebm_hidden=min(config.ebm_hidden, 16), ebm_depth=min(config.ebm_depth, 2),
        langevin_steps=min(config.langevin_steps, 3), num_samples=min(config.num_samples, 2),
        epochs=min(config.epochs, 2), batch_size=min(config.batch_size, 10), epoch_size=None,
        eval_size=10, eval_batch_size=10, joint_samples=10, probe_train_size=20,
        max_source_size=1, classifier_epochs=1, two_stage_epochs=min(config.two_stage_epochs, 1),
    )


def build_datasets(config: ExperimentConfig) -> tuple[Dataset, Dataset]:
    """``(train, test)`` data sets of ``config.dataset`` (writing the fake data first for a smoke run)."""
    spec = DATASETS[config.dataset]
    if config.smoke and not Path(config.data_root).exists():
        write_fake_dataset(config.dataset, config.data_root, config.seed)
    train_set, test_set = spec.load(config, True), spec.load(config, False)
    if config.eval_size > len(test_set):
        raise ValueError(
            f"--eval-size {config.eval_size} exceeds the {len(test_set)} examples of the {config.dataset} test set"
        )
    return train_set, test_set


# --- model, guide and objective ------------------------------------------------------------------

GUIDE_SCALE_ACTIVATIONS = {"moe": "softmax", "poe": "softplus", "mopoe": "softplus"}
"""Encoder scale maps per guide: MMVAE's softmax for the Laplace experts of the mixture; a softplus
for the Gaussian experts of products (an ``exp`` head can overflow in a product of many experts)."""


def build_prior(config: ExperimentConfig) -> nn.Module:
    """``PRIORS[config.prior](latent_dim, ...)``, the EBM settings passed to EBM priors."""
    if config.prior not in PRIORS:
        raise ValueError(f"unknown prior {config.prior!r}; choose one of {sorted(PRIORS)}")
    if not config.prior.startswith("ebm"):
        return PRIORS[config.prior](config.latent_dim)
    ebm = EBMPriorConfig(
        hidden=config.ebm_hidden, depth=config.ebm_depth, regularisation=config.ebm_regularisation,
        spectral_norm=config.ebm_spectral_norm, persistent=config.ebm_persistent,
        generation_steps=config.ebm_generation_steps,
        langevin=LangevinConfig(steps=config.langevin_steps, step_size=config.langevin_step_size),
    )
    return PRIORS[config.prior](config.latent_dim, ebm)


def _network_options(arch: str, dataset: Dataset) -> dict[str, Any]:
    if arch != "cub_caption":
        return {}
    base = dataset.dataset if isinstance(dataset, torch.utils.data.Subset) else dataset
    return {"vocab_size": len(base.vocabulary)}


def build_model_and_guide(config: ExperimentConfig, train_set: Dataset) -> tuple[nn.Module, nn.Module]:
    """The model (``MultimodalVAE``, or ``PrivateLatentVAE`` with private latents) and its guide."""
    spec = DATASETS[config.dataset]
    if config.guide not in GUIDES:
        raise ValueError(f"unknown guide {config.guide!r}; choose one of {sorted(GUIDES)}")
    private = config.private_latent_dim
    if private and config.guide != "moe":
        raise ValueError("private latents are implemented with the mixture-of-experts guide only (--guide moe)")
    width = config.latent_dim + private
    pyro.set_rng_seed(config.seed)
    encoders, decoders = {}, {}
    for name, arch in spec.architectures.items():
        encoder_class, decoder_class = ARCHITECTURES[arch]
        options = _network_options(arch, train_set)
        scale = GUIDE_SCALE_ACTIVATIONS.get(config.guide, "softplus")
        encoders[name] = encoder_class(latent_dim=width, scale_activation=scale, **options)
        decoders[name] = decoder_class(latent_dim=width, **options)
    prior = build_prior(config)
    if private:
        model = PrivateLatentVAE(decoders, spec.likelihoods, prior, private, spec.likelihood_scales)
        return model, PrivateLatentGuide(encoders, config.latent_dim, private)
    model = MultimodalVAE(decoders, spec.likelihoods, prior, spec.likelihood_scales)
    return model, GUIDES[config.guide](encoders, config.latent_dim)


def build_objective(config: ExperimentConfig):
    """``OBJECTIVES[config.objective](K)``; for the product-of-experts guide, MVAE's sub-sampled
    version of it (the joint and every single modality), which teaches each expert alone."""
    if config.objective not in OBJECTIVES:
        raise ValueError(f"unknown objective {config.objective!r}; choose one of {sorted(OBJECTIVES)}")
    objective = OBJECTIVES[config.objective](config.num_samples)
    return SubsampledELBO(objective) if config.guide == "poe" else objective


def train_loader(config: ExperimentConfig, train_set: Dataset) -> Iterable:
    """Shuffled batches; ``epoch_size`` examples per epoch, a fresh random draw each epoch.

    A data set that can hand over all its tensors (``train_set.tensors()``, e.g. PolyMNIST) is
    batched by slicing them (:class:`~pyro_mmebm.data.InMemoryBatches`); any other through a
    ``DataLoader``.
    """
    epoch_size = config.epoch_size if config.epoch_size is not None and config.epoch_size < len(train_set) else None
    if hasattr(train_set, "tensors"):
        modalities, labels = train_set.tensors()
        return InMemoryBatches(modalities, labels, config.batch_size, epoch_size=epoch_size)
    sampler = None if epoch_size is None else RandomSampler(train_set, num_samples=epoch_size)
    return DataLoader(train_set, batch_size=config.batch_size, shuffle=sampler is None, sampler=sampler)


# --- two-stage training --------------------------------------------------------------------------


def _load_first_stage(config: ExperimentConfig, train_set: Dataset, device: torch.device) -> tuple[nn.Module, nn.Module]:
    """The trained model and guide of ``config.two_stage_from``, with a fresh prior of ``config``."""
    first = load_experiment_config(config.two_stage_from)
    model, guide = build_model_and_guide(first, train_set)
    load_checkpoint(config.two_stage_from, {"model": model, "guide": guide}, map_location=device)
    model.prior = build_prior(config)
    return model.to(device), guide.to(device)


def load_run(
    directory: str | Path, device: Optional[torch.device] = None
) -> tuple[ExperimentConfig, nn.Module, nn.Module, Dataset, Dataset]:
    """Rebuild a trained run from its directory: ``(config, model, guide, train_set, test_set)``.

    The model and guide are built from ``experiment.json`` (a two-stage run already names its EBM
    prior there), loaded from the checkpoint, moved to ``device`` (default: the run's) and put in
    eval mode.
    """
    config = load_experiment_config(directory)
    device = device or select_device(config.device)
    train_set, test_set = build_datasets(config)
    model, guide = build_model_and_guide(config, train_set)
    load_checkpoint(directory, {"model": model, "guide": guide}, map_location=device)
    return config, model.to(device).eval(), guide.to(device).eval(), train_set, test_set


# --- evaluation ----------------------------------------------------------------------------------


def load_classifiers(
    config: ExperimentConfig, train_set: Dataset, test_set: Dataset, device: torch.device, progress: bool
) -> tuple[dict[str, nn.Module], dict[str, float]]:
    """``({modality: classifier}, {modality: test accuracy})``, trained once and cached in
    ``<cache_dir>/classifiers/<dataset>``."""
    spec = DATASETS[config.dataset]
    classifiers, accuracies = {}, {}
    for name, arch in spec.classifiers.items():
        classifiers[name], accuracies[name] = load_or_train_classifier(
            name, lambda: train_set, lambda: test_set, Path(config.cache_dir) / "classifiers" / config.dataset,
            architecture=arch, epochs=config.classifier_epochs, device=device, seed=config.seed,
            progress=progress,
        )
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
    pyro.set_rng_seed(config.seed)
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
        results["joint_coherence"] = joint_coherence(
            model, classifiers, config.joint_samples, batch_size=config.eval_batch_size, device=device
        )
        results["aggregate_posterior_coherence"] = aggregate_posterior_coherence(
            model, guide, classifiers, test_loader, device=device
        )
    if isinstance(model.prior, EnergyBasedPrior):
        results["energy_overlap"] = energy_overlap(model, guide, test_loader, out / "energy_histograms.png")
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


@torch.no_grad()
def energy_overlap(model: nn.Module, guide: nn.Module, loader: Iterable, figure_path: Path) -> dict[str, Any]:
    """``f_α`` on posterior draws of ``loader``'s tuples against ``f_α`` on the prior samples that
    generation uses (and on training-length chains, when generation runs longer ones), with the
    histograms saved at ``figure_path``: a prior that generation samples correctly gives overlapping
    histograms, ``E_q[f] − E_{p_α}[f] ≈ 0``."""
    prior = model.prior
    device = prior.loc.device
    posterior = torch.cat([
        sample_mixture(guide.posterior({name: x.to(device) for name, x in batch.items()})) for batch, _ in loader
    ])
    samples = {"posterior q(z|X)": posterior}
    p_alpha = prior()
    generated = f"prior, Langevin K={p_alpha.generation.steps}"
    samples[generated] = p_alpha.sample((len(posterior),))
    if p_alpha.generation != p_alpha.langevin:
        samples[f"prior, Langevin K={p_alpha.langevin.steps}"] = langevin_sample(
            p_alpha.unnormalized_log_prob, p_alpha.base_dist.sample((len(posterior),)), p_alpha.langevin
        )
    plot_energy_histograms(prior.energy, samples, path=figure_path)
    means = {label: float(prior.energy(z).mean()) for label, z in samples.items()}
    return {"f_mean": means, "gap": means["posterior q(z|X)"] - means[generated]}


def summary_row(name: str, results: Mapping[str, Any]) -> dict[str, Any]:
    """One table row: the headline numbers of a run's results."""
    row: dict[str, Any] = {"run": name, "test_loss": results.get("test_loss")}
    if "joint_coherence" in results:
        row["joint"] = results["joint_coherence"]
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


# --- the run -------------------------------------------------------------------------------------


def run(config: ExperimentConfig, *, progress: bool = True) -> dict[str, Any]:
    """Train (or, with ``two_stage_from``, fit the EBM prior of a trained run) and evaluate.

    Writes ``experiment.json``, a checkpoint per epoch, ``results.json`` and PNG grids into
    ``config.out``, prints a one-row table and returns the results. A folder holding another run is
    refused unless ``config.resume`` or ``config.overwrite`` (:func:`claim_out_folder`).

    Launched by ``torchrun`` with several processes, it joins their process group
    (:func:`~pyro_mmebm.distributed.process_group_from_environment`) and trains data-parallel; rank 0
    alone claims the folder, writes files and evaluates, and the other processes return the training
    history only.
    """
    if config.smoke and Path(config.data_root) != Path(config.out) / "smoke_data":
        config = smoke_config(config)
    if config.dataset not in DATASETS:
        raise ValueError(f"unknown dataset {config.dataset!r}; choose one of {sorted(DATASETS)}")
    if config.two_stage_from is not None:
        first = load_experiment_config(config.two_stage_from)
        if first.dataset != config.dataset:
            raise ValueError(
                f"--two-stage-from {config.two_stage_from} is a {first.dataset} run; a {config.dataset} run "
                "cannot start from it"
            )
        config = dataclasses.replace(config, **{name: getattr(first, name) for name in ARCHITECTURE_FIELDS})
        if not config.prior.startswith("ebm"):
            raise ValueError(f"two-stage training fits an EBM prior; got prior {config.prior!r}")
    with process_group_from_environment(config.device) as (group, device_name):
        return _run(config, group, select_device(device_name), progress=progress and group.is_main)


def _run(config: ExperimentConfig, group: ProcessGroup, device: torch.device, *, progress: bool) -> dict[str, Any]:
    out = Path(config.out)
    if not group.is_main:  # rank 0 first writes what is missing (generated or fake data), then the rest read
        group.barrier()
    train_set, test_set = build_datasets(config)
    if group.is_main:
        config = claim_out_folder(config)
        group.barrier()
    config = group.broadcast(config)
    loader = train_loader(config, train_set)
    tensorboard = out / TENSORBOARD_FOLDER if config.tensorboard else None
    if config.two_stage_from is not None:
        model, guide = _load_first_stage(config, train_set, device)
        train_config = dataclasses.replace(config.train_config(), epochs=config.two_stage_epochs)
        history = fit_prior_to_posterior(
            model, guide, loader, train_config, out_dir=out, resume=config.resume, device=device, progress=progress,
            tensorboard=tensorboard,
        )
    else:
        model, guide = build_model_and_guide(config, train_set)
        history = fit(
            model, guide, loader, config.train_config(), elbo=build_objective(config), out_dir=out,
            resume=config.resume, start_from=config.start_from, device=device, progress=progress,
            tensorboard=tensorboard,
        )
    results = {"config": config.to_dict(), "history": history, "train_seconds": sum(r["seconds"] for r in history)}
    if not group.is_main:
        return results
    results.update(evaluate(config, model, guide, train_set, test_set, device, progress))
    save_results_json(results, out / RESULTS_NAME)
    if tensorboard is not None:
        log_evaluation(tensorboard, results, out, step=sum(record.get("steps") or 0 for record in history))
    print(format_table([summary_row(out.name, results)]))
    return results


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


# --- command line --------------------------------------------------------------------------------


def _checked(name: str, kind: type) -> Callable[[str], Any]:
    """An ``argparse`` type: ``kind``, refusing values impossible for the setting ``name`` when parsed."""

    def parse(text: str) -> Any:
        value = kind(text)
        problem = _setting_problem(name, value)
        if problem is not None:
            raise argparse.ArgumentTypeError(problem)
        return value

    parse.__name__ = kind.__name__  # argparse names the type in its "invalid int value" message
    return parse


def add_arguments(parser, *, dataset_defaults: Mapping[str, Any]) -> None:
    """Add the options of :class:`ExperimentConfig` to an ``argparse`` parser, with an example's defaults."""
    defaults = ExperimentConfig(dataset="", out="", data_root="")
    defaults = dataclasses.replace(defaults, **dataset_defaults)

    def option(flag: str, name: str, kind: type, help: str, **kwargs: Any) -> None:
        parser.add_argument(
            flag, dest=name, type=_checked(name, kind), default=getattr(defaults, name), help=help, **kwargs
        )

    option("--data-root", "data_root", str, "folder with the data set's files")
    option("--source-root", "source_root", str, "raw files to generate the data set from when missing")
    parser.add_argument("--download", action="store_true", help="fetch missing data files online")
    option("--cache-dir", "cache_dir", str, "writable cache: classifiers, pairings")
    option("--out", "out", str, "output folder: checkpoints, results, grids")
    parser.add_argument("--prior", default=defaults.prior, choices=sorted(PRIORS))
    option("--latent-dim", "latent_dim", int, "dimension of the shared latent")
    option("--private-latent-dim", "private_latent_dim", int, "private latent per modality (0: none)")
    option("--ebm-hidden", "ebm_hidden", int, "width of the energy network")
    option("--ebm-depth", "ebm_depth", int, "linear layers of the energy network")
    option("--ebm-regularisation", "ebm_regularisation", float, "penalty on the energy's magnitude")
    parser.add_argument("--ebm-spectral-norm", dest="ebm_spectral_norm", action="store_true")
    parser.add_argument("--ebm-persistent", dest="ebm_persistent", action="store_true", help="persistent chains")
    option("--langevin-steps", "langevin_steps", int, "short-run Langevin steps K")
    option("--langevin-step-size", "langevin_step_size", float, "Langevin step size s")
    option("--ebm-generation-steps", "ebm_generation_steps", int, "Langevin steps for generation (default: K)")
    option("--ebm-warmup-epochs", "ebm_warmup_epochs", int, "epochs with the base prior before the EBM tilt")
    parser.add_argument("--guide", default=defaults.guide, choices=sorted(GUIDES))
    parser.add_argument("--objective", default=defaults.objective, choices=sorted(OBJECTIVES))
    option("-K", "num_samples", int, "importance samples per stratum (iwae, dreg)")
    option("--epochs", "epochs", int, "training epochs")
    option("--batch-size", "batch_size", int, "training batch size")
    option("--epoch-size", "epoch_size", int, "training examples per epoch (default: all)")
    option("--lr", "lr", float, "learning rate of encoders and decoders")
    parser.add_argument("--amsgrad", action="store_true", help="AMSGrad for encoders and decoders (as MMVAE)")
    option("--prior-lr", "prior_lr", float, "learning rate of the prior")
    option("--grad-clip", "grad_clip", float, "clip the gradient norm")
    option("--max-energy-gap", "max_energy_gap", float, "stop when |E_q f - E_p f| exceeds this")
    option("--seed", "seed", int, "random seed")
    option("--device", "device", str, "auto (cuda when present), cpu, cuda, cuda:1, ...")
    parser.add_argument(
        "--tensorboard", action="store_true", help="log training and evaluation to OUT/tensorboard (needs tensorboard)"
    )
    option("--eval-size", "eval_size", int, "test examples for coherence and the probe")
    option("--joint-samples", "joint_samples", int, "prior samples for joint coherence")
    option("--max-source-size", "max_source_size", int, "largest source subset for cross coherence")
    option("--classifier-epochs", "classifier_epochs", int, "epochs of the coherence classifiers")
    option("--two-stage-from", "two_stage_from", str, "fit an EBM prior to this trained run's posterior")
    option(
        "--start-from", "start_from", str,
        "start from this checkpoint of a run differing in its prior only (e.g. a Laplace run at the end of the EBM warm-up)",
    )
    option("--two-stage-epochs", "two_stage_epochs", int, "epochs of the two-stage prior fit")
    run_folder = parser.add_mutually_exclusive_group()
    run_folder.add_argument("--resume", action="store_true", help="continue the run in --out")
    run_folder.add_argument("--overwrite", action="store_true", help="delete the run in --out and start afresh")
    parser.add_argument("--smoke", action="store_true", help="a seconds-long run on tiny generated data")


def config_from_args(dataset: str, args) -> ExperimentConfig:
    """An :class:`ExperimentConfig` from parsed :func:`add_arguments` options."""
    names = {f.name for f in dataclasses.fields(ExperimentConfig)}
    return ExperimentConfig(dataset=dataset, **{k: v for k, v in vars(args).items() if k in names})


__all__ = [
    "DATASETS",
    "DatasetSpec",
    "ExperimentConfig",
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
    "run",
    "smoke_config",
    "summary_row",
    "write_fake_dataset",
]
