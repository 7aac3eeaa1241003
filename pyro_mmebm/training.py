"""Training a model and guide jointly: decoders β, encoders φ and the EBM prior α in one optimiser step.

The loss is a Pyro ELBO used in the ``ELBOModule`` style: ``Trace_ELBO()(model, guide)`` is an
``nn.Module`` whose call returns the differentiable negative ELBO, so one ``torch.optim.Adam`` with two
parameter groups updates everything, the prior's energy network with its own learning rate and betas
(an EBM typically wants a much smaller rate than the VAE).
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional

import pyro
import torch
from pyro.infer import ELBO, Trace_ELBO
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from pyro_mmebm.atomic import atomic_save_json
from pyro_mmebm.batch import prepare_batch, split_batch
from pyro_mmebm.checkpoint import resume_state, save_checkpoint, start_from_other_prior
from pyro_mmebm.ebm import EnergyBasedPrior
from pyro_mmebm.distributed import ProcessGroup, seed_epoch, set_epoch, shard_loader
from pyro_mmebm.tensorboard import TensorBoardLog


@dataclass
class TrainConfig:
    """Optimisation settings, saved as JSON with every checkpoint.

    :param epochs: passes over the training data.
    :param lr, betas: Adam for the encoders and decoders.
    :param amsgrad: AMSGrad's variant of Adam for them (MMVAE's optimiser).
    :param prior_lr, prior_betas: Adam for the EBM prior's energy network ``f_α``.
    :param grad_clip: clip the global gradient norm to this value (``None``: no clipping).
    :param prior_warmup_epochs: train with the prior's base ``p0`` for these first epochs before the
        EBM's tilt is switched on (for priors with a ``tilted`` switch, e.g.
        :class:`~pyro_mmebm.priors.EnergyBasedPrior`): the encoders learn the data before ``f_α``
        starts to pull them.
    :param max_energy_gap: stop with :class:`~pyro_mmebm.monitoring.EBMDivergenceError` when
        ``|E_q[f] − E_p[f]|`` exceeds it.
    :param seed: seeds Pyro, torch, numpy and Python's ``random``.
    """

    epochs: int = 10
    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.999)
    amsgrad: bool = False
    prior_lr: float = 1e-4
    prior_betas: tuple[float, float] = (0.5, 0.999)
    grad_clip: Optional[float] = None
    prior_warmup_epochs: int = 0
    max_energy_gap: float = 1e3
    seed: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def make_optimizer(model: nn.Module, guide: nn.Module, config: TrainConfig) -> torch.optim.Adam:
    """Adam with one parameter group for the prior's energy network ``α`` and one for everything else.

    Other learnable prior parameters (e.g. a Laplace prior's scale) train with the VAE, as in MMVAE.
    """
    energy = getattr(getattr(model, "prior", None), "energy", None)
    prior_params = list(energy.parameters()) if isinstance(energy, nn.Module) else []
    prior_ids = {id(p) for p in prior_params}
    vae_params = [p for p in list(model.parameters()) + list(guide.parameters()) if id(p) not in prior_ids]
    groups = [{"params": vae_params, "lr": config.lr, "betas": config.betas, "amsgrad": config.amsgrad, "name": "vae"}]
    if prior_params:
        groups.append(
            {"params": prior_params, "lr": config.prior_lr, "betas": config.prior_betas, "name": "prior"}
        )
    return torch.optim.Adam(groups)


def _to_device(batch: Mapping[str, Tensor], device: torch.device) -> dict[str, Tensor]:
    """The batch on ``device``, checked and converted once (:func:`~pyro_mmebm.batch.prepare_batch`)."""
    return prepare_batch(batch, device)


def _num_draws(guide: nn.Module) -> dict[str, int]:
    return {"num_draws": guide.num_draws} if hasattr(guide, "num_draws") else {}


def _check_finite(value: float, step: int) -> float:
    if not math.isfinite(value):
        raise FloatingPointError(f"training loss became {value} at step {step}")
    return value


@torch.no_grad()
def evaluate_loss(
    model: nn.Module,
    guide: nn.Module,
    loader: Iterable,
    *,
    elbo: Optional[ELBO] = None,
    device: Optional[torch.device] = None,
) -> float:
    """The mean negative ELBO per example over ``loader`` (no gradients, no Langevin negatives)."""
    loss_fn = (elbo or Trace_ELBO(max_plate_nesting=2))(model, guide)
    device = device or next(model.parameters()).device
    total, count = 0.0, 0
    for item in loader:
        batch, _ = split_batch(item)
        batch = _to_device(batch, device)
        total += float(loss_fn(batch, **_num_draws(guide)))
        count += next(iter(batch.values())).shape[0]
    return total / max(count, 1)


def end_epoch(
    record: dict[str, Any],
    history: list[dict[str, Any]],
    modules: Mapping[str, nn.Module],
    optimizer: torch.optim.Optimizer,
    config: Mapping[str, Any],
    *,
    out_dir: Optional[Path],
    metrics_name: str,
    progress: bool,
) -> None:
    """Append ``record`` to ``history``, print it, and with ``out_dir`` write an atomic checkpoint
    and ``history`` as ``out_dir/metrics_name``."""
    history.append(record)
    if progress:
        tqdm.write("  ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in record.items()))
    if out_dir is not None:
        save_checkpoint(out_dir, modules, optimizer, epoch=record["epoch"], history=history, config=config)
        atomic_save_json(history, out_dir / metrics_name)


def _learning_rates(optimizer: torch.optim.Optimizer) -> dict[str, float]:
    return {f"lr/{group.get('name', i)}": group["lr"] for i, group in enumerate(optimizer.param_groups)}


def fit(
    model: nn.Module,
    guide: nn.Module,
    train_loader: Iterable,
    config: TrainConfig,
    *,
    elbo: Optional[ELBO] = None,
    val_loader: Optional[Iterable] = None,
    out_dir: Optional[str | Path] = None,
    resume: bool = False,
    start_from: Optional[str | Path] = None,
    device: Optional[torch.device] = None,
    progress: bool = True,
    tensorboard: Optional[str | Path] = None,
) -> list[dict[str, Any]]:
    """Train ``model`` and ``guide`` for ``config.epochs`` epochs; return per-epoch metrics.

    Each epoch records the mean loss per example, the mean energy gap ``E_q[f] − E_p[f]`` (for an EBM
    prior), the validation loss and the wall time. With ``out_dir``, every epoch ends with an atomic
    checkpoint (``checkpoint.pt``, ``config.json``, ``metrics.json``); with ``resume=True`` training
    continues from the checkpoint there, optimiser and random state included, so an interrupted run
    loses at most the epoch in progress; without it, an ``out_dir`` holding a checkpoint is refused
    (:class:`~pyro_mmebm.checkpoint.ExistingRunError`). ``start_from`` (a checkpoint of a run that
    differs in its prior only, e.g. a Laplace run's epoch at the end of an EBM warm-up) starts a run
    that has no checkpoint of its own there (:func:`~pyro_mmebm.checkpoint.start_from_other_prior`).
    Batches are checked and converted once, as they enter (:func:`~pyro_mmebm.batch.prepare_batch`).
    With ``tensorboard`` (a folder), losses, energies, learning rates and step times are logged there
    as well (:class:`~pyro_mmebm.tensorboard.TensorBoardLog`).

    **Several processes.** Inside a joined ``torch.distributed`` group (e.g. launched by ``torchrun``,
    see :mod:`pyro_mmebm.distributed`) the same call trains data-parallel: the ELBO module is wrapped
    in ``DistributedDataParallel``, ``train_loader`` is sharded by rank, each process draws its own
    Langevin negatives, the loss, the energy gap (and so the divergence stop) and the metrics are
    reduced over all processes, and rank 0 alone writes checkpoints, TensorBoard events and progress.
    A checkpoint resumes on any number of processes.
    """
    device = device or next(model.parameters()).device
    model.to(device)
    guide.to(device)
    group = ProcessGroup.current()
    progress = progress and group.is_main
    pyro.set_rng_seed(config.seed)
    optimizer = make_optimizer(model, guide, config)
    loss_fn = (elbo or Trace_ELBO(max_plate_nesting=2))(model, guide)
    out_dir = Path(out_dir) if out_dir is not None else None
    history, start_epoch = resume_state(
        out_dir, {"model": model, "guide": guide}, optimizer, resume=resume, map_location=device
    )
    if start_from is not None and not history:
        history, start_epoch = start_from_other_prior(start_from, model, guide, optimizer, map_location=device)
    train_loader = shard_loader(train_loader, group, config.seed)
    if group.is_distributed:
        # The energy network is unused during a warm-up with the base prior. Buffers (batch norm
        # statistics, persistent chains) start as rank 0's, then stay each process's own.
        loss_fn = DistributedDataParallel(
            loss_fn, device_ids=[device] if device.type == "cuda" else None,
            find_unused_parameters=start_epoch < config.prior_warmup_epochs, forward_sync_buffers=False,
        )
    prior = getattr(model, "prior", None)
    monitor = getattr(prior, "monitor", None)
    step_size = prior.config.langevin.step_size if isinstance(prior, EnergyBasedPrior) else None
    params = [p for param_group in optimizer.param_groups for p in param_group["params"]]
    step = sum(record.get("steps", 0) for record in history)
    log = TensorBoardLog(tensorboard, purge_step=step + 1) if tensorboard is not None and group.is_main else None
    for epoch in range(start_epoch, config.epochs):
        model.train()
        guide.train()
        if hasattr(prior, "tilted"):
            prior.tilted = epoch >= config.prior_warmup_epochs
        seed_epoch(group, config.seed, epoch)
        set_epoch(train_loader, epoch)
        started = time.perf_counter()
        loss_sum, count, gaps, energies = 0.0, 0, [], []
        bar = tqdm(train_loader, desc=f"epoch {epoch + 1}/{config.epochs}", disable=not progress, leave=False)
        for item in bar:
            step_started = time.perf_counter()
            batch, _ = split_batch(item)
            batch = _to_device(batch, device)
            optimizer.zero_grad(set_to_none=True)
            loss = loss_fn(batch, **_num_draws(guide))
            # The loss is a sum over examples and DDP averages gradients: scaled by the number of
            # processes, a step's gradient is that of the concatenated batch of all processes.
            (loss * group.world_size if group.is_distributed else loss).backward()
            if config.grad_clip is not None:
                nn.utils.clip_grad_norm_(params, config.grad_clip)
            optimizer.step()
            step += 1
            ebm_active = monitor is not None and monitor.gap is not None
            local = [loss.detach(), next(iter(batch.values())).shape[0]]
            if ebm_active:
                local += [monitor.positive_mean, monitor.negative_mean]
            reduced = group.sum(local, device)
            loss_sum += _check_finite(reduced[0], step)
            count += int(reduced[1])
            postfix = {"loss": f"{loss_sum / count:.1f}"}
            scalars = {"train/loss": reduced[0] / reduced[1]}
            if ebm_active:
                positive, negative = reduced[2] / group.world_size, reduced[3] / group.world_size
                if group.is_distributed:  # every process checks the same gap, so all stop together
                    monitor.record(torch.tensor(positive), torch.tensor(negative))
                monitor.check(config.max_energy_gap, step, step_size)
                gaps.append(monitor.gap)
                energies.append((positive, negative))
                postfix["gap"] = f"{monitor.gap:.3g}"
                scalars.update({"ebm/energy_gap": monitor.gap, "ebm/f_positive": positive, "ebm/f_negative": negative})
            bar.set_postfix(postfix)
            if log is not None:
                scalars.update(_learning_rates(optimizer))
                scalars["time/step_seconds"] = time.perf_counter() - step_started
                log.scalars(scalars, step)
        record: dict[str, Any] = {
            "epoch": epoch,
            "steps": len(bar) if hasattr(bar, "__len__") else None,
            "loss": loss_sum / max(count, 1),
            "seconds": time.perf_counter() - started,
        }
        if gaps:
            record["energy_gap"] = sum(gaps) / len(gaps)
            record["energy_gap_last"] = gaps[-1]
            record["f_positive"] = sum(p for p, _ in energies) / len(energies)
            record["f_negative"] = sum(n for _, n in energies) / len(energies)
        if val_loader is not None and group.is_main:
            model.eval()
            guide.eval()
            record["val_loss"] = evaluate_loss(model, guide, val_loader, elbo=elbo, device=device)
        record = group.broadcast(record)
        if log is not None:
            log.scalars({f"epoch/{k}": v for k, v in record.items() if k not in ("epoch", "steps")}, step)
            log.flush()
        end_epoch(
            record, history, {"model": model, "guide": guide}, optimizer, config.to_dict(),
            out_dir=out_dir if group.is_main else None, metrics_name="metrics.json", progress=progress,
        )
    if log is not None:
        log.close()
    if hasattr(prior, "tilted"):
        prior.tilted = True
    return history
