"""Checkpoints: safe to open (no code runs), verified (a damaged file is refused), durable, complete.

Complete means that a run killed after an epoch and resumed from its checkpoint by a fresh process
trains exactly the weights of an uninterrupted run, persistent Langevin chains included.
"""

import os
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from guides import MixtureOfExpertsGuide
from models import MultimodalVAE
from pyro_mmebm import EBMPriorConfig, EnergyBasedPrior, LangevinConfig, Likelihood, TrainConfig, fit
from pyro_mmebm.atomic import atomic_directory
from pyro_mmebm.checkpoint import (
    CHECKPOINT_NAME,
    CheckpointError,
    ExistingRunError,
    load_checkpoint,
    save_checkpoint,
    upgrade_checkpoint,
)
from pyro_mmebm.networks import MLPDecoder, MLPEncoder


def tiny_data(n: int = 96, seed: int = 0) -> list[tuple[dict[str, torch.Tensor], torch.Tensor]]:
    """Batches of 32 of two 6-d modalities, noisy views of a 2-d latent."""
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(n, 2, generator=g)
    a = torch.tanh(u @ torch.randn(2, 6, generator=g))
    b = torch.sin(u @ torch.randn(2, 6, generator=g))
    labels = torch.zeros(n, dtype=torch.long)
    return [({"a": a[i : i + 32], "b": b[i : i + 32]}, labels[i : i + 32]) for i in range(0, n, 32)]


def tiny_model(persistent: bool = False):
    torch.manual_seed(0)
    prior = EnergyBasedPrior(
        2, EBMPriorConfig(hidden=16, depth=2, estimator="ml", persistent=persistent, langevin=LangevinConfig(steps=3))
    )
    decoders = {k: MLPDecoder(2, (6,), hidden=(16,), output="identity") for k in "ab"}
    model = MultimodalVAE(decoders, {k: Likelihood("normal", 0.1) for k in "ab"}, prior)
    guide = MixtureOfExpertsGuide({k: MLPEncoder((6,), 2, hidden=(16,)) for k in "ab"}, 2)
    return model, guide


def train(out: Path, epochs: int, *, persistent: bool = False, resume: bool = False):
    model, guide = tiny_model(persistent)
    fit(model, guide, tiny_data(), TrainConfig(epochs=epochs, seed=3), out_dir=out, resume=resume, progress=False)
    return model


def saved_run(tmp_path: Path) -> tuple[Path, torch.nn.Module]:
    out = tmp_path / "run"
    return out, train(out, 1)


def test_checkpoint_is_plain_data_that_the_safe_loader_reads(tmp_path):
    out, _ = saved_run(tmp_path)
    payload = torch.load(out / CHECKPOINT_NAME, weights_only=True)  # no objects: no code can run
    assert payload["format"] == "pyro_mmebm.checkpoint/2" and len(payload["sha256"]) == 64
    assert payload["epoch"] == 0 and payload["config"]["seed"] == 3


def test_random_states_of_torch_python_and_numpy_are_restored(tmp_path):
    model, _ = tiny_model()
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    save_checkpoint(tmp_path, {"model": model}, None, epoch=0, history=[])
    expected = (random.random(), np.random.rand(), torch.rand(1))
    load_checkpoint(tmp_path, {"model": model}, restore_rng=True)
    assert (random.random(), np.random.rand(), torch.rand(1)) == expected


def test_history_that_is_not_plain_data_is_refused_when_saving(tmp_path):
    model, _ = tiny_model()
    with pytest.raises(TypeError, match=r"\['history'\]\[0\]\['loss'\] is a numpy.float64"):
        save_checkpoint(tmp_path, {"model": model}, None, epoch=0, history=[{"loss": np.float64(1.0)}])
    assert not (tmp_path / CHECKPOINT_NAME).exists()


class CreatesAFile:
    """Pickled, this object calls ``open(path, "w")`` when it is unpickled: a crafted checkpoint."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return open, (str(self.path), "w")


def test_crafted_checkpoint_is_refused_and_runs_nothing(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    marker = tmp_path / "created_by_the_checkpoint"
    torch.save({"format": "pyro_mmebm.checkpoint/2", "modules": CreatesAFile(marker)}, out / CHECKPOINT_NAME)
    model, guide = tiny_model()
    with pytest.raises(CheckpointError, match="refused.*nothing in it was run"):
        load_checkpoint(out, {"model": model, "guide": guide})
    with pytest.raises(CheckpointError, match="refused"):  # the same through --resume
        fit(model, guide, tiny_data(), TrainConfig(epochs=2), out_dir=out, resume=True, progress=False)
    assert not marker.exists()


def test_checkpoint_with_bytes_overwritten_inside_a_tensor_is_refused(tmp_path):
    out, model = saved_run(tmp_path)
    weight = model.decoders["a"].net[0][0].weight.detach().numpy().tobytes()  # 16 x 2 floats
    path = out / CHECKPOINT_NAME
    data = bytearray(path.read_bytes())
    offset = data.find(weight)
    assert offset > 0, "the weight's bytes are stored as they are"
    data[offset + 40 : offset + 48] = bytes(8)  # zero two of its floats
    path.write_bytes(bytes(data))
    fresh, guide = tiny_model()
    with pytest.raises(CheckpointError, match="damaged.*SHA-256"):
        load_checkpoint(out, {"model": fresh, "guide": guide})


def test_checkpoint_of_the_earlier_format_is_refused_and_can_be_upgraded(tmp_path):
    model, guide = tiny_model()
    legacy = {  # what format 1 stored: Python's and numpy's random states as their own objects
        "format": "pyro_mmebm.checkpoint/1",
        "modules": {"model": model.state_dict(), "guide": guide.state_dict()},
        "optimizer": None, "epoch": 4, "history": [{"epoch": 4, "loss": 1.0}], "config": {"epochs": 5},
        "rng": {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state()},
    }
    torch.save(legacy, tmp_path / CHECKPOINT_NAME)
    fresh, fresh_guide = tiny_model()
    with pytest.raises(CheckpointError, match="earlier format pyro_mmebm.checkpoint/1.*upgrade_checkpoint"):
        load_checkpoint(tmp_path, {"model": fresh, "guide": fresh_guide})
    upgrade_checkpoint(tmp_path)
    state = load_checkpoint(tmp_path, {"model": fresh, "guide": fresh_guide}, restore_rng=True)
    assert state["epoch"] == 4 and random.getstate() == legacy["rng"]["python"]
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), fresh.parameters()))


def test_checkpoint_is_flushed_to_disk_before_it_replaces_the_previous_one(tmp_path, monkeypatch):
    events = []
    fsync, replace = os.fsync, os.replace

    def recording_fsync(descriptor):
        events.append(("fsync", os.readlink(f"/proc/self/fd/{descriptor}")))
        fsync(descriptor)

    def recording_replace(source, target):
        events.append(("replace", str(source), str(target)))
        replace(source, target)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    monkeypatch.setattr(os, "replace", recording_replace)
    model, _ = tiny_model()
    save_checkpoint(tmp_path, {"model": model}, None, epoch=0, history=[])
    replaced = [i for i, event in enumerate(events) if event[0] == "replace" and event[2].endswith(CHECKPOINT_NAME)]
    assert len(replaced) == 1, events
    tmp = os.path.realpath(events[replaced[0]][1])
    assert ("fsync", tmp) in events[: replaced[0]], events


def test_a_folder_written_atomically_appears_whole_or_not_at_all(tmp_path):
    with pytest.raises(RuntimeError, match="interrupted"):
        with atomic_directory(tmp_path / "images") as tmp:
            (tmp / "0.png").write_text("half")
            raise RuntimeError("interrupted")
    assert list(tmp_path.iterdir()) == []
    with atomic_directory(tmp_path / "images") as tmp:
        (tmp / "0.png").write_text("whole")
    assert [p.name for p in tmp_path.iterdir()] == ["images"] and (tmp_path / "images" / "0.png").read_text() == "whole"


@pytest.mark.parametrize("persistent", [False, True], ids=["default-chains", "persistent-chains"])
def test_killed_and_resumed_training_gives_the_weights_of_an_uninterrupted_one(tmp_path, persistent):
    straight = train(tmp_path / "straight", 3, persistent=persistent)
    train(tmp_path / "interrupted", 1, persistent=persistent)  # killed after its first epoch
    resumed = train(tmp_path / "interrupted", 3, persistent=persistent, resume=True)  # a fresh process
    for (name, p), q in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(p, q), f"{name} differs after resuming"
    if persistent:
        assert resumed.prior.persistent_chains.states is not None


def test_training_into_a_folder_with_a_checkpoint_needs_resume(tmp_path):
    out, _ = saved_run(tmp_path)
    before = (out / CHECKPOINT_NAME).read_bytes()
    with pytest.raises(ExistingRunError, match=r"resume=True \(--resume\).*--overwrite"):
        train(out, 1)
    assert (out / CHECKPOINT_NAME).read_bytes() == before
