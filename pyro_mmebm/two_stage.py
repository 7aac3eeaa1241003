"""The second stage of two-stage training, as the paper does on CUB [1]: the encoders and decoders of a
trained run are frozen and its EBM prior alone is fitted to the aggregate posterior
``q(z) = E_data[q(z | X)]`` on guide samples, by the prior's estimator (maximum likelihood with
Langevin negatives, or noise-contrastive estimation against ``p0``), in :func:`~pyro_mmebm.fit`'s
epoch loop.

The guide is frozen, so ``q(z | X)`` of a training example is the same at every epoch:
:class:`PosteriorTable` computes it once for the whole training set (one pass of the encoders,
instead of one per epoch), and the fit draws ``z`` from the stored parameters.

[1] Yuan et al. (2024) "Learning Multimodal Latent Generative Models with Energy-Based Prior".
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Optional

import pyro
import torch
from pyro.distributions import Independent, TorchDistribution
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from pyro_mmebm.batch import prepare_batch, split_batch
from pyro_mmebm.checkpoint import resume_state
from pyro_mmebm.contracts import Guide, MultimodalModel
from pyro_mmebm.data import InMemoryBatches
from pyro_mmebm.distributions import LOCATION_SCALE_FAMILIES, StratifiedMixtureOfExperts
from pyro_mmebm.ebm.hooks import TailWatch, prior_watch
from pyro_mmebm.training import TrainConfig, data_parallel, train_epochs

TWO_STAGE_METRICS_NAME = "two_stage_metrics.json"

Posterior = Callable[[Mapping[str, Tensor]], TorchDistribution]
"""``batch ↦ q(z | X)`` of the batch's examples."""


@dataclass(frozen=True)
class PosteriorTable:
    """``q(z | X)`` of every example of a data set under a frozen guide, stored as its parameters.

    For a guide whose posterior is a location-scale family (``Independent(Laplace or Normal)``,
    batch ``(B,)``) or a :class:`~pyro_mmebm.distributions.StratifiedMixtureOfExperts` of one (batch
    ``(K, B)``: every guide of :mod:`guides`), :meth:`of` runs the guide once over the data set and
    keeps ``loc`` and ``scale`` example-first, ``(N, K, d)`` or ``(N, d)``. :meth:`loader` deals
    shuffled batches of those rows as :class:`~pyro_mmebm.data.InMemoryBatches` does for data, and
    :meth:`posterior` rebuilds the same distribution from a batch of them, so a draw from it is the draw
    the guide's own posterior would give.
    """

    family: type[TorchDistribution]
    stratified: bool
    loc: Tensor
    scale: Tensor

    @classmethod
    def of(
        cls, guide: Guide, data: Dataset, *, batch_size: int, device: torch.device, progress: bool = False
    ) -> "PosteriorTable":
        """The table of ``guide.posterior`` over ``data`` (in its order), computed on ``device``.
        Freezes ``guide`` (:func:`freeze`: eval mode, no gradients): the table holds only while the
        guide stays as it is.

        :raises TypeError: naming it, for a posterior that is not a location-scale family or a
            stratified mixture of one.
        """
        freeze(guide)
        parts = []
        with torch.no_grad():
            loader = DataLoader(data, batch_size=batch_size)
            for item in tqdm(loader, desc="posterior of every training example", disable=not progress, leave=False):
                batch, _ = split_batch(item)
                parts.append(cls._parameters(guide.posterior(prepare_batch(batch, device))))
        if not parts:
            raise ValueError("cannot fit a prior to the posterior of an empty data set")
        family, stratified, _, _ = parts[0]
        return cls(family, stratified, torch.cat([p[2] for p in parts]), torch.cat([p[3] for p in parts]))

    @staticmethod
    def _parameters(posterior: TorchDistribution) -> tuple[type[TorchDistribution], bool, Tensor, Tensor]:
        """``(family, stratified, loc, scale)`` of one batch's posterior, ``loc`` and ``scale`` example-first."""
        stratified = isinstance(posterior, StratifiedMixtureOfExperts)
        experts = posterior.experts if stratified else posterior
        base = experts.base_dist if isinstance(experts, Independent) else None
        if type(base) not in LOCATION_SCALE_FAMILIES.values() or experts.reinterpreted_batch_ndims != 1:
            raise TypeError(
                "a two-stage fit stores q(z | X) as a location-scale family (Independent(Laplace or "
                f"Normal), event (d,)) or a stratified mixture of one; the guide's posterior is {posterior!r}"
            )
        if stratified:
            return type(base), True, base.loc.movedim(1, 0), base.scale.movedim(1, 0)
        return type(base), False, base.loc, base.scale

    def loader(self, batch_size: int, *, epoch_size: Optional[int] = None) -> InMemoryBatches:
        """Shuffled batches ``{"loc", "scale"}`` of the table's rows, a fresh order every epoch."""
        return InMemoryBatches({"loc": self.loc, "scale": self.scale}, None, batch_size, epoch_size=epoch_size)

    def posterior(self, batch: Mapping[str, Tensor]) -> TorchDistribution:
        """``q(z | X)`` of a batch of :meth:`loader`: batch ``(K, B)`` (stratified) or ``(B,)``."""
        loc, scale = batch["loc"], batch["scale"]
        if self.stratified:
            loc, scale = loc.movedim(0, 1), scale.movedim(0, 1)
        experts = self.family(loc, scale).to_event(1)
        return StratifiedMixtureOfExperts(experts) if self.stratified else experts


class PriorNegativeLogLikelihood(nn.Module):
    """``−Σ log p_α(z)`` over posterior draws ``z ~ q(z | X)`` of a batch (no gradient to the guide), as
    a module (so that ``DistributedDataParallel`` can wrap it).

    :param posterior: ``batch ↦ q(z | X)``: a guide's ``posterior`` (batches of data) or a
        :meth:`PosteriorTable.posterior` (batches of its rows).
    """

    def __init__(self, prior: nn.Module, posterior: Posterior) -> None:
        super().__init__()
        self.prior = prior
        self.posterior = posterior

    def forward(self, batch: Mapping[str, Tensor]) -> Tensor:
        with torch.no_grad():
            z = self.posterior(batch).sample()
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
    posterior: Optional[Posterior] = None,
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

    ``loader`` gives batches of data, whose ``z`` the guide draws at every step, or, with
    ``posterior=table.posterior``, batches of a :class:`PosteriorTable`'s ``table.loader(...)``, which
    draw the same ``z`` without running the encoders again (what :func:`pyro_mmebm.experiment.run` does).
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
        data_parallel(PriorNegativeLogLikelihood(model.prior, posterior or guide.posterior), device), loader, model,
        guide, optimizer,
        config, trained=(model.prior,), history=history, start_epoch=start_epoch,
        hooks=[prior_watch(model.prior, config.max_energy_gap), TailWatch(model.prior)], loss_name="prior_loss",
        metrics_name=TWO_STAGE_METRICS_NAME, validate=None, out_dir=out_dir, device=device, progress=progress,
        tensorboard=tensorboard,
    )


__all__ = [
    "TWO_STAGE_METRICS_NAME", "Posterior", "PosteriorTable", "PriorNegativeLogLikelihood", "fit_prior_to_posterior",
    "freeze",
]
