"""The second stage of two-stage training, as the paper does on CUB [1]: the encoders and decoders of a
trained run are frozen and its EBM prior alone is fitted to the aggregate posterior
``q(z) = E_data[q(z | X)]`` on guide samples, by the prior's estimator (maximum likelihood with
Langevin negatives, or noise-contrastive estimation against ``p0``), in :func:`~pyro_mmebm.fit`'s
epoch loop.

[1] Yuan et al. (2024) "Learning Multimodal Latent Generative Models with Energy-Based Prior".
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable, Mapping, Optional

import pyro
import torch
from torch import Tensor, nn

from pyro_mmebm.checkpoint import resume_state
from pyro_mmebm.contracts import MultimodalModel
from pyro_mmebm.ebm.hooks import prior_watch
from pyro_mmebm.training import TrainConfig, data_parallel, train_epochs

TWO_STAGE_METRICS_NAME = "two_stage_metrics.json"


class PriorNegativeLogLikelihood(nn.Module):
    """``−Σ log p_α(z)`` over posterior draws ``z ~ q(z | X)`` of a batch (no gradient to the guide), as
    a module (so that ``DistributedDataParallel`` can wrap it)."""

    def __init__(self, prior: nn.Module, guide: nn.Module) -> None:
        super().__init__()
        self.prior = prior
        self.guide = guide

    def forward(self, batch: Mapping[str, Tensor]) -> Tensor:
        with torch.no_grad():
            z = self.guide.posterior(batch).sample()
        return -self.prior().log_prob(z).sum()


def freeze(*modules: nn.Module) -> None:
    """Stop training ``modules``: no gradients, and eval mode (batch norm statistics fixed)."""
    for module in modules:
        module.requires_grad_(False)
        module.eval()


def fit_prior_to_posterior(
    model: MultimodalModel,
    guide: nn.Module,
    loader: Iterable,
    config: TrainConfig,
    *,
    out_dir: Optional[str | Path] = None,
    resume: bool = False,
    device: Optional[torch.device] = None,
    progress: bool = True,
    tensorboard: Optional[str | Path] = None,
) -> list[dict[str, Any]]:
    r"""Fit ``model.prior`` (an :class:`~pyro_mmebm.ebm.EnergyBasedPrior`) to the aggregate posterior;
    return per-epoch metrics (``prior_loss``, the mean ``−log p_α(z) − log Z(α)`` per example, and with
    maximum likelihood the energy gap as :func:`~pyro_mmebm.fit` records it).

    Encoders and decoders stay fixed: only ``model.prior``'s parameters train, with Adam at
    ``config.prior_lr``. Each step draws ``z ~ q(z | X)`` (no gradient to the guide) and descends
    ``−Σ TiltedLaplace.log_prob(z)``, whose α-gradient is, with the prior's default estimator, the
    maximum-likelihood gradient ``−(E_q[∇_α f_α(z)] − E_{p_α}[∇_α f_α(z⁻)])`` per draw, the expectation
    under the prior on short-run Langevin negatives; with ``estimator="nce"``, the gradient of the
    logistic loss of ``f_α`` classifying the draws against draws of ``p0``. The epoch loop is :func:`~pyro_mmebm.fit`'s: checkpoints (metrics as
    ``two_stage_metrics.json``), ``resume``, the energy-gap watch, TensorBoard and data parallelism
    work as there, and the prior is watched as there (:func:`~pyro_mmebm.ebm.hooks.prior_watch`).
    """
    device = device or next(model.parameters()).device
    model.to(device)
    guide.to(device)
    freeze(model, guide)
    model.prior.requires_grad_(True)
    pyro.set_rng_seed(config.seed)
    optimizer = torch.optim.Adam(model.prior.parameters(), lr=config.prior_lr, betas=config.prior_betas)
    out_dir = Path(out_dir) if out_dir is not None else None
    history, start_epoch = resume_state(
        out_dir, {"model": model, "guide": guide}, optimizer, resume=resume, map_location=device
    )
    return train_epochs(
        data_parallel(PriorNegativeLogLikelihood(model.prior, guide), device), loader, model, guide, optimizer,
        config, trained=(model.prior,), history=history, start_epoch=start_epoch,
        hooks=[prior_watch(model.prior, config.max_energy_gap)], loss_name="prior_loss",
        metrics_name=TWO_STAGE_METRICS_NAME, validate=None, out_dir=out_dir, device=device, progress=progress,
        tensorboard=tensorboard,
    )


__all__ = ["TWO_STAGE_METRICS_NAME", "PriorNegativeLogLikelihood", "fit_prior_to_posterior", "freeze"]
