"""Data-parallel training with ``torch.distributed``: two CPU processes (``gloo``) spawned by the test.

Exactness: a step of two processes must move the parameters exactly as one process that sums the
gradients of both shards, each computed with that rank's random stream (so the reparameterised
posterior draws and the EBM's Langevin negatives are the same ones): the gradient of the loss of the
concatenated batch, the loss being a sum over examples. The EBM prior is included, so the prior's
gradient is checked to be averaged with the rest.
"""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
from pathlib import Path

import pyro
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from guides import MixtureOfExpertsGuide
from models import MultimodalVAE
from pyro_mmebm import EBMPriorConfig, EnergyBasedPrior, LangevinConfig, Likelihood, TrainConfig, fit
from pyro_mmebm import training
from pyro_mmebm.checkpoint import read_checkpoint
from pyro_mmebm.data import InMemoryBatches
from pyro_mmebm.distributed import ProcessGroup, rank_seed, shard_loader
from pyro_mmebm.networks import MLPDecoder, MLPEncoder
from pyro_mmebm.training import make_optimizer
from tests.reference import energy_output_biases

LATENT, FEATURES, EXAMPLES, BATCH = 2, 6, 16, 8
TIMEOUT = 120


def data() -> InMemoryBatches:
    g = torch.Generator().manual_seed(7)
    modalities = {name: torch.randn(EXAMPLES, FEATURES, generator=g) for name in "ab"}
    return InMemoryBatches(modalities, torch.arange(EXAMPLES) % 4, BATCH)


def build() -> tuple[MultimodalVAE, MixtureOfExpertsGuide]:
    pyro.set_rng_seed(3)
    # maximum likelihood: its Langevin negatives are drawn per process, and the energy gap averaged over them
    ebm = EBMPriorConfig(hidden=8, depth=2, estimator="ml", langevin=LangevinConfig(steps=3, step_size=0.3))
    prior = EnergyBasedPrior(LATENT, ebm)
    decoders = {k: MLPDecoder(LATENT, (FEATURES,), hidden=(16,), output="identity") for k in "ab"}
    model = MultimodalVAE(decoders, {k: Likelihood("normal", 0.5) for k in "ab"}, prior)
    guide = MixtureOfExpertsGuide({k: MLPEncoder((FEATURES,), LATENT, hidden=(16,)) for k in "ab"}, LATENT)
    return model, guide


def parameters(model, guide) -> dict[str, torch.Tensor]:
    return {f"{owner}.{name}": p.detach().clone() for owner, module in (("model", model), ("guide", guide))
            for name, p in module.named_parameters()}


def _worker(rank: int, world_size: int, init_file: str, out: str, epochs: int, resume: bool, warmup: int) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    try:
        saved = training.save_checkpoint

        def save_and_mark(directory, *args, **kwargs):
            (Path(directory) / f"written_by_rank{rank}").touch()
            return saved(directory, *args, **kwargs)

        training.save_checkpoint = save_and_mark
        model, guide = build()
        history = fit(model, guide, data(), TrainConfig(epochs=epochs, seed=5, prior_warmup_epochs=warmup), out_dir=out, resume=resume,
                      progress=False)
        torch.save(parameters(model, guide), Path(out) / f"parameters_rank{rank}.pt")
        (Path(out) / f"history_rank{rank}.json").write_text(json.dumps(history))
    finally:
        dist.destroy_process_group()


def launch(
    tmp_path: Path, out: Path, *, world_size: int = 2, epochs: int = 1, resume: bool = False, warmup: int = 0
) -> None:
    out.mkdir(parents=True, exist_ok=True)
    init_file = tmp_path / f"init_{socket.gethostname()}_{len(list(tmp_path.glob('init_*')))}"
    mp.start_processes(_worker, args=(world_size, str(init_file), str(out), epochs, resume, warmup), nprocs=world_size,
                       join=True, start_method="spawn")


def test_a_two_process_step_equals_one_process_on_the_concatenated_batch(tmp_path):
    launch(tmp_path, tmp_path / "ddp", epochs=1)
    ddp = torch.load(tmp_path / "ddp" / "parameters_rank0.pt")
    assert all(torch.equal(ddp[k], v) for k, v in torch.load(tmp_path / "ddp" / "parameters_rank1.pt").items())

    # One process: the gradients of both shards' losses, each drawn with that rank's random stream.
    model, guide = build()
    before = parameters(model, guide)
    config = TrainConfig(epochs=1, seed=5)
    optimizer = make_optimizer(model, guide, config)
    loss_fn = pyro.infer.Trace_ELBO(max_plate_nesting=2)(model, guide)
    for rank in range(2):
        pyro.set_rng_seed(config.seed if rank == 0 else rank_seed(config.seed, rank, 0))
        shard = data().sharded(rank, 2, config.seed)
        shard.set_epoch(0)
        (batch, _), = list(shard)
        loss_fn(batch, num_draws=guide.num_draws).backward()
    untrained = energy_output_biases(model)  # f_α's constant offset: no gradient without a penalty
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.prior.energy.parameters() if id(p) not in untrained)
    optimizer.step()
    reference = parameters(model, guide)
    offsets = {f"model.{name}" for name, p in model.named_parameters() if id(p) in untrained}
    for name, value in reference.items():
        assert name in offsets or not torch.equal(value, before[name]), name
        # float32 sums in another order: a few ulps of the Adam step (lr 1e-3) at most.
        torch.testing.assert_close(ddp[name], value, rtol=1e-5, atol=1e-6, msg=name)
    assert (tmp_path / "ddp" / "written_by_rank0").exists()
    assert not (tmp_path / "ddp" / "written_by_rank1").exists()


def test_two_process_runs_are_reproducible_and_resume_exactly(tmp_path):
    # An epoch of warm-up with the base prior (the energy network unused), then the EBM.
    launch(tmp_path, tmp_path / "straight", epochs=2, warmup=1)
    launch(tmp_path, tmp_path / "resumed", epochs=1, warmup=1)
    launch(tmp_path, tmp_path / "resumed", epochs=2, resume=True, warmup=1)
    straight = torch.load(tmp_path / "straight" / "parameters_rank0.pt")
    resumed = torch.load(tmp_path / "resumed" / "parameters_rank0.pt")
    for name, value in straight.items():
        assert torch.equal(resumed[name], value), name
    histories = {run: json.loads((tmp_path / run / "history_rank1.json").read_text()) for run in ("straight", "resumed")}
    assert [record["epoch"] for record in histories["resumed"]] == [0, 1]
    assert [r["loss"] for r in histories["resumed"]] == [r["loss"] for r in histories["straight"]]
    assert "energy_gap" not in histories["resumed"][0]
    assert histories["resumed"][1]["energy_gap"] == histories["straight"][1]["energy_gap"]


def test_a_two_process_checkpoint_resumes_in_one_process(tmp_path):
    out = tmp_path / "run"
    launch(tmp_path, out, epochs=1)
    after_two = read_checkpoint(out)
    assert after_two["epoch"] == 0 and after_two["history"][0]["steps"] == EXAMPLES // (2 * BATCH)
    model, guide = build()
    history = fit(model, guide, data(), TrainConfig(epochs=2, seed=5), out_dir=out, resume=True, progress=False)
    assert [record["epoch"] for record in history] == [0, 1]
    assert history[1]["steps"] == EXAMPLES // BATCH  # one process: the whole epoch
    moved = parameters(model, guide)
    saved = torch.load(out / "parameters_rank0.pt")
    assert any(not torch.equal(moved[name], value) for name, value in saved.items())
    assert read_checkpoint(out)["epoch"] == 1


def test_shards_of_an_epoch_are_disjoint_equal_in_length_and_change_with_the_epoch():
    loader = InMemoryBatches({"a": torch.arange(10).float()[:, None]}, None, 3)
    shards = [loader.sharded(rank, 3, seed=1) for rank in range(3)]
    seen = []
    for shard in shards:
        shard.set_epoch(0)
        seen.append(torch.cat([batch["a"][:, 0] for batch, _ in shard]))
    assert [len(s) for s in seen] == [4, 4, 4]  # 10 examples padded to 12
    assert set(torch.cat(seen).long().tolist()) == set(range(10))
    shards[0].set_epoch(1)
    assert not torch.equal(torch.cat([batch["a"][:, 0] for batch, _ in shards[0]]), seen[0])
    assert len(shards[0]) == 2


def test_a_loader_that_cannot_be_sharded_is_refused():
    with pytest.raises(TypeError, match="cannot shard a list"):
        shard_loader([{"a": torch.zeros(2, 1)}], ProcessGroup(rank=0, world_size=2), seed=0)


def test_an_example_runs_unchanged_under_torchrun(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    root = Path(__file__).resolve().parents[1]
    out = tmp_path / "run"
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
               str(_free_port()), str(root / "examples" / "mnist_svhn.py"), "--smoke", "--epochs", "1",
               "--device", "cpu", "--tensorboard", "--out", str(out)]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(root))
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=TIMEOUT)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("| run | test_loss") == 1  # rank 0 alone evaluates and reports
    results = json.loads((out / "results.json").read_text())
    single_process_steps = math.ceil(50 / 10)  # the smoke set: 50 pairs, batches of 10
    assert results["history"][0]["steps"] == math.ceil(single_process_steps / 2)
    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    assert {"train/loss", "ebm/log_normaliser", "eval/cross"} <= set(events.Tags()["scalars"])  # the default, NCE
    assert "samples/joint_samples" in events.Tags()["images"]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]
