"""Training: decoders β, encoders φ and the EBM prior α jointly in one optimiser step (:func:`fit`).

The loss is a Pyro ELBO used in the ``ELBOModule`` style: ``Trace_ELBO()(model, guide)`` is an
``nn.Module`` whose call returns the differentiable negative ELBO, so one ``torch.optim.Adam`` with two
parameter groups updates everything, the prior's energy network with its own learning rate and betas
(an EBM typically wants a much smaller rate than the VAE). Its epoch loop (:func:`train_epochs`) is
also that of the two-stage fit (:func:`pyro_mmebm.two_stage.fit_prior_to_posterior`): data parallel
under ``torch.distributed``, a checkpoint every epoch, TensorBoard logging, and the prior's own work
(the EBM's warm-up and energy-gap watch) as :class:`~pyro_mmebm.contracts.TrainingHook` s.
"""

from __future__ import annotations

import functools
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Optional, Sequence

import pyro
import torch
from pyro.infer import ELBO, Trace_ELBO
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from pyro_mmebm.atomic import atomic_save_json
from pyro_mmebm.batch import prepare_batch, split_batch
from pyro_mmebm.checkpoint import resume_state, save_checkpoint, start_from_other_prior
from pyro_mmebm.contracts import MultimodalModel, TrainingHook
from pyro_mmebm.distributed import ProcessGroup, seed_epoch, set_epoch, shard_loader
from pyro_mmebm.ebm.hooks import prior_hooks
from pyro_mmebm.ebm.prior import EnergyBasedPrior
from pyro_mmebm.settings import at_least, check_settings, positive, positive_or_infinite, setting, to_dict
from pyro_mmebm.speed import PRECISIONS, compile_networks, use_channels_last, use_mixed_precision
from pyro_mmebm.tensorboard import TensorBoardLog

METRICS_NAME = "metrics.json"


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings, saved as JSON with every checkpoint.

    :param epochs: passes over the training data.
    :param lr, betas: Adam for the encoders and decoders.
    :param amsgrad: AMSGrad's variant of Adam for them (MMVAE's optimiser).
    :param prior_lr, prior_betas: Adam for the EBM prior's energy network ``f_α``.
    :param grad_clip: clip the global gradient norm to this value (``None``: no clipping).
    :param prior_warmup_epochs: train with the EBM prior's base ``p0`` for these first epochs before
        its tilt is switched on: the encoders learn the data before ``f_α`` starts to pull them.
    :param max_energy_gap: stop with :class:`~pyro_mmebm.ebm.EBMDivergenceError` when
        ``|E_q[f] − E_p[f]|`` exceeds it.
    :param seed: seeds Pyro, torch, numpy and Python's ``random``.
    :param channels_last, precision, compile: how the networks (encoders and decoders) run, the loss
        unchanged up to rounding (:mod:`pyro_mmebm.speed`): convolution weights in ``channels_last``
        order; ``"bf16"``: their layers under bfloat16 autocast (for GPUs; the likelihoods, the
        posterior and the EBM stay in float32); ``torch.compile``.
    """

    epochs: int = setting(10, "training epochs", check=at_least(1))
    lr: float = setting(1e-3, "learning rate of encoders and decoders", check=positive)
    betas: tuple[float, float] = setting((0.9, 0.999), "Adam's betas for encoders and decoders")
    amsgrad: bool = setting(False, "AMSGrad for encoders and decoders (as MMVAE)")
    prior_lr: float = setting(1e-3, "learning rate of the prior", check=positive)
    prior_betas: tuple[float, float] = setting((0.5, 0.999), "Adam's betas for the prior")
    grad_clip: Optional[float] = setting(None, "clip the gradient norm", check=positive)
    prior_warmup_epochs: int = setting(
        0, "epochs with the base prior before the EBM tilt", check=at_least(0), name="ebm_warmup_epochs"
    )
    max_energy_gap: float = setting(1e3, "stop when |E_q f - E_p f| exceeds this", check=positive_or_infinite)
    seed: int = setting(0, "random seed")
    channels_last: bool = setting(False, "convolution weights of the networks in channels_last order")
    precision: str = setting("fp32", "the networks' arithmetic (bf16: autocast, for GPUs)", choices=PRECISIONS)
    compile: bool = setting(False, "torch.compile the networks (compilation at the first step)")

    def __post_init__(self) -> None:
        check_settings(self)


def make_optimizer(model: MultimodalModel, guide: nn.Module, config: TrainConfig) -> torch.optim.Adam:
    """Adam with one parameter group for the EBM prior's energy network ``α`` and one for everything else.

    Other learnable prior parameters (e.g. a Laplace prior's scale) train with the VAE, as in MMVAE.
    """
    prior_params = list(model.prior.energy.parameters()) if isinstance(model.prior, EnergyBasedPrior) else []
    prior_ids = {id(p) for p in prior_params}
    vae_params = [p for p in list(model.parameters()) + list(guide.parameters()) if id(p) not in prior_ids]
    groups = [{"params": vae_params, "lr": config.lr, "betas": config.betas, "amsgrad": config.amsgrad, "name": "vae"}]
    if prior_params:
        groups.append(
            {"params": prior_params, "lr": config.prior_lr, "betas": config.prior_betas, "name": "prior"}
        )
    return torch.optim.Adam(groups)


def _num_draws(guide: nn.Module) -> dict[str, int]:
    return {"num_draws": guide.num_draws} if hasattr(guide, "num_draws") else {}


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
        batch = prepare_batch(batch, device)
        total += float(loss_fn(batch, **_num_draws(guide)))
        count += next(iter(batch.values())).shape[0]
    return total / max(count, 1)


def _end_epoch(
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


def data_parallel(loss: nn.Module, device: torch.device, *, find_unused_parameters: bool = False) -> nn.Module:
    """``loss`` in ``DistributedDataParallel`` inside a joined process group; ``loss`` itself otherwise.

    Buffers (batch norm statistics, persistent chains) start as rank 0's, then stay each process's own.
    """
    if not ProcessGroup.current().is_distributed:
        return loss
    return DistributedDataParallel(
        loss, device_ids=[device] if device.type == "cuda" else None,
        find_unused_parameters=find_unused_parameters, forward_sync_buffers=False,
    )


def _reduce_step(
    loss_name: str,
    loss: Tensor,
    batch: Mapping[str, Tensor],
    hooks: Sequence[TrainingHook],
    group: ProcessGroup,
    device: torch.device,
    step: int,
) -> tuple[float, int, dict[str, float]]:
    """A step's loss and number of examples summed over all processes, and its hooks' scalars, from
    one ``all_reduce`` of them with the hooks' values (which the hooks get back averaged).

    :raises FloatingPointError: when the loss is not finite.
    """
    hook_values = [hook.step_values() for hook in hooks]
    local = [loss.detach(), next(iter(batch.values())).shape[0], *(v for values in hook_values for v in values)]
    total, examples, *sums = group.sum(local, device)
    if not math.isfinite(total):
        raise FloatingPointError(f"training {loss_name.replace('_', ' ')} became {total} at step {step}")
    means, scalars = [value / group.world_size for value in sums], {}
    for hook, values in zip(hooks, hook_values):
        scalars.update(hook.end_step(means[: len(values)], step))
        means = means[len(values):]
    return total, int(examples), scalars


def train_epochs(
    loss_fn: Callable[[dict[str, Tensor]], Tensor],
    loader: Iterable,
    model: nn.Module,
    guide: nn.Module,
    optimizer: torch.optim.Optimizer,
    config: TrainConfig,
    *,
    trained: Sequence[nn.Module],
    history: list[dict[str, Any]],
    start_epoch: int,
    hooks: Sequence[TrainingHook],
    loss_name: str,
    metrics_name: str,
    validate: Optional[Callable[[], float]],
    out_dir: Optional[Path],
    device: torch.device,
    progress: bool,
    tensorboard: Optional[str | Path],
) -> list[dict[str, Any]]:
    """The epoch loop of :func:`fit` and of the two-stage fit, from ``start_epoch`` to ``config.epochs``;
    returns ``history`` with a record per epoch appended.

    Every step descends ``loss_fn(batch)``, a loss summed over the batch's examples (scaled by the
    number of processes, as DDP averages gradients; wrap the loss in :func:`data_parallel`), and
    reduces the loss, the number of examples and the hooks' values over all processes in one
    ``all_reduce``. Every epoch puts ``trained`` in train mode, shards ``loader`` (inside a process
    group) and records ``loss_name`` (the mean per example), the hooks' entries, ``validate()``
    (rank 0) as ``val_loss``, the steps and the seconds; rank 0 writes a checkpoint of ``model`` and
    ``guide`` (and ``optimizer``) and the history as ``metrics_name`` into ``out_dir``, and
    TensorBoard events into ``tensorboard``.
    """
    group = ProcessGroup.current()
    progress = progress and group.is_main
    loader = shard_loader(loader, group, config.seed)
    params = [p for param_group in optimizer.param_groups for p in param_group["params"]]
    step = sum(record.get("steps") or 0 for record in history)
    log = TensorBoardLog(tensorboard, purge_step=step + 1) if tensorboard is not None and group.is_main else None
    for epoch in range(start_epoch, config.epochs):
        for module in trained:
            module.train()
        for hook in hooks:
            hook.start_epoch(epoch)
        seed_epoch(group, config.seed, epoch)
        set_epoch(loader, epoch)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        started = time.perf_counter()
        loss_sum, count, steps = 0.0, 0, 0
        bar = tqdm(loader, desc=f"epoch {epoch + 1}/{config.epochs}", disable=not progress, leave=False)
        for item in bar:
            step_started = time.perf_counter()
            batch, _ = split_batch(item)
            batch = prepare_batch(batch, device)
            optimizer.zero_grad(set_to_none=True)
            loss = loss_fn(batch)
            # The loss is a sum over examples and DDP averages gradients: scaled by the number of
            # processes, a step's gradient is that of the concatenated batch of all processes.
            (loss * group.world_size if group.is_distributed else loss).backward()
            if config.grad_clip is not None:
                nn.utils.clip_grad_norm_(params, config.grad_clip)
            optimizer.step()
            step += 1
            steps += 1
            total, examples, watched = _reduce_step(loss_name, loss, batch, hooks, group, device, step)
            loss_sum += total
            count += examples
            shown = {tag.split("/")[-1]: f"{value:.3g}" for tag, value in watched.items()}
            bar.set_postfix({loss_name: f"{loss_sum / count:.1f}", **shown})
            if log is not None:
                scalars = {f"train/{loss_name}": total / examples, **watched, **_learning_rates(optimizer)}
                log.scalars({**scalars, "time/step_seconds": time.perf_counter() - step_started}, step)
        mean_loss, seconds = loss_sum / max(count, 1), time.perf_counter() - started
        record: dict[str, Any] = {"epoch": epoch, "steps": steps, loss_name: mean_loss, "seconds": seconds}
        if device.type == "cuda":
            record["peak_memory_gb"] = torch.cuda.max_memory_allocated(device) / 1e9
        for hook in hooks:
            record.update(hook.end_epoch())
        if validate is not None and group.is_main:
            record["val_loss"] = validate()
        record = group.broadcast(record)
        if log is not None:
            log.scalars({f"epoch/{k}": v for k, v in record.items() if k not in ("epoch", "steps")}, step)
            log.flush()
        _end_epoch(
            record, history, {"model": model, "guide": guide}, optimizer, to_dict(config),
            out_dir=out_dir if group.is_main else None, metrics_name=metrics_name, progress=progress,
        )
    if log is not None:
        log.close()
    for hook in hooks:
        hook.end_training()
    return history


def fit(
    model: MultimodalModel,
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
    hooks: Sequence[TrainingHook] = (),
) -> list[dict[str, Any]]:
    """Train ``model`` and ``guide`` for ``config.epochs`` epochs; return per-epoch metrics.

    Each epoch records the mean loss per example, for an EBM prior the energy gap ``E_q[f] − E_p[f]``
    (its mean ``energy_gap``, its last value ``energy_gap_last``) and the means of ``f`` on posterior
    samples and negatives (``f_positive``, ``f_negative``), the validation loss and the wall time. The
    EBM prior trains with its base for ``config.prior_warmup_epochs`` epochs first, and training stops
    with :class:`~pyro_mmebm.ebm.EBMDivergenceError` when the gap exceeds ``config.max_energy_gap``
    (:func:`~pyro_mmebm.ebm.hooks.prior_hooks`); further ``hooks`` run after the prior's.

    With ``out_dir``, every epoch ends with an atomic checkpoint (``checkpoint.pt``, ``config.json``,
    ``metrics.json``); with ``resume=True`` training continues from the checkpoint there, optimiser and
    random state included, so an interrupted run loses at most the epoch in progress; without it, an
    ``out_dir`` holding a checkpoint is refused (:class:`~pyro_mmebm.checkpoint.ExistingRunError`).
    ``start_from`` (a checkpoint of a run that differs in its prior only, e.g. a Laplace run's epoch at
    the end of an EBM warm-up) starts a run that has no checkpoint of its own there
    (:func:`~pyro_mmebm.checkpoint.start_from_other_prior`). Batches are checked and converted once, as
    they enter (:func:`~pyro_mmebm.batch.prepare_batch`). With ``tensorboard`` (a folder), losses,
    energies, learning rates and step times are logged there as well
    (:class:`~pyro_mmebm.tensorboard.TensorBoardLog`).

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
    if config.channels_last:
        use_channels_last(model, guide)
    use_mixed_precision(model, guide, precision=config.precision)
    if config.compile:
        compile_networks(model, guide)
    pyro.set_rng_seed(config.seed)
    optimizer = make_optimizer(model, guide, config)
    elbo_module = (elbo or Trace_ELBO(max_plate_nesting=2))(model, guide)
    out_dir = Path(out_dir) if out_dir is not None else None
    history, start_epoch = resume_state(
        out_dir, {"model": model, "guide": guide}, optimizer, resume=resume, map_location=device
    )
    if start_from is not None and not history:
        history, start_epoch = start_from_other_prior(start_from, model, guide, optimizer, map_location=device)
    # The energy network is unused during a warm-up with the base prior.
    loss = data_parallel(elbo_module, device, find_unused_parameters=start_epoch < config.prior_warmup_epochs)

    def validate() -> float:
        model.eval()
        guide.eval()
        return evaluate_loss(model, guide, val_loader, elbo=elbo, device=device)

    return train_epochs(
        functools.partial(loss, **_num_draws(guide)), train_loader, model, guide, optimizer, config,
        trained=(model, guide), history=history, start_epoch=start_epoch,
        hooks=[*prior_hooks(model.prior, config), *hooks], loss_name="loss", metrics_name=METRICS_NAME,
        validate=validate if val_loader is not None else None, out_dir=out_dir, device=device,
        progress=progress, tensorboard=tensorboard,
    )


__all__ = ["METRICS_NAME", "TrainConfig", "evaluate_loss", "fit", "make_optimizer", "train_epochs"]
