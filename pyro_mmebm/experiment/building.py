"""Building a run's model, guide, prior and objective from its configuration and its data set's
registry entry (:data:`~pyro_mmebm.experiment.datasets.DATASETS`)."""

from __future__ import annotations

from typing import Any, Optional

import pyro
import torch
from pyro.infer import ELBO
from torch import nn
from torch.utils.data import Dataset

from models import MultimodalVAE, PrivateLatentVAE
from pyro_mmebm.experiment.config import ExperimentConfig
from pyro_mmebm.experiment.datasets import DATASETS
from pyro_mmebm.networks import ARCHITECTURES
from pyro_mmebm.objectives import OBJECTIVES, SubsampledELBO
from pyro_mmebm.priors import EBM_PRIORS, PRIORS


def build_prior(config: ExperimentConfig) -> nn.Module:
    """``PRIORS[config.prior](latent_dim)``, an EBM prior with the settings ``config.ebm``."""
    if config.prior in EBM_PRIORS:
        return PRIORS[config.prior](config.latent_dim, config.ebm)
    return PRIORS[config.prior](config.latent_dim)


def _network_options(arch: str, dataset: Optional[Dataset]) -> dict[str, Any]:
    if arch != "cub_caption":
        return {}
    base = dataset.dataset if isinstance(dataset, torch.utils.data.Subset) else dataset
    return {"vocab_size": len(base.vocabulary)}


def build_model_and_guide(config: ExperimentConfig, train_set: Optional[Dataset]) -> tuple[nn.Module, nn.Module]:
    """The model (:class:`~models.MultimodalVAE`, or :class:`~models.PrivateLatentVAE` with private
    latents) and its guide, with the networks of the data set's modalities (CUB's caption networks
    take their vocabulary from ``train_set``), seeded with ``config.train.seed``."""
    spec = DATASETS[config.dataset]
    width = config.latent_dim + config.guide.private_latent_dim
    pyro.set_rng_seed(config.train.seed)
    encoders, decoders = {}, {}
    for name, arch in spec.architectures.items():
        encoder_class, decoder_class = ARCHITECTURES[arch]
        options = _network_options(arch, train_set)
        encoders[name] = encoder_class(latent_dim=width, scale_activation=config.guide.encoder_scale, **options)
        decoders[name] = decoder_class(latent_dim=width, **options)
    prior = build_prior(config)
    private = config.guide.private_latent_dim
    if private:
        model = PrivateLatentVAE(decoders, spec.likelihoods, prior, private, spec.likelihood_scales)
    else:
        model = MultimodalVAE(decoders, spec.likelihoods, prior, spec.likelihood_scales)
    return model, config.guide.build(encoders, config.latent_dim)


def build_objective(config: ExperimentConfig) -> ELBO:
    """``OBJECTIVES[config.objective](K)``; for the product-of-experts guide, MVAE's sub-sampled
    version of it (the joint and every single modality), which teaches each expert alone."""
    objective = OBJECTIVES[config.objective](config.num_samples)
    return SubsampledELBO(objective) if config.guide.name == "poe" else objective


__all__ = ["build_model_and_guide", "build_objective", "build_prior"]
