"""TensorBoard logging: what fit writes, per step and per epoch, equals what it records; resumes continue."""

from __future__ import annotations

import builtins

import pytest
import torch

pytest.importorskip("tensorboard")
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402

from pyro_mmebm import TrainConfig, fit  # noqa: E402
from pyro_mmebm.tensorboard import TensorBoardLog  # noqa: E402
from tests.test_distributed import build, data  # noqa: E402


def events(folder) -> EventAccumulator:
    accumulator = EventAccumulator(str(folder))
    accumulator.Reload()
    return accumulator


def test_fit_logs_losses_energies_learning_rates_and_step_times(tmp_path):
    model, guide = build()
    history = fit(model, guide, data(), TrainConfig(epochs=2, seed=1), tensorboard=tmp_path / "tb", progress=False)
    logged = events(tmp_path / "tb")
    steps = sum(record["steps"] for record in history)
    for tag in ("train/loss", "ebm/energy_gap", "ebm/f_positive", "ebm/f_negative", "lr/vae", "lr/prior",
                "time/step_seconds"):
        assert [event.step for event in logged.Scalars(tag)] == list(range(1, steps + 1)), tag
    assert [event.value for event in logged.Scalars("lr/prior")] == pytest.approx([TrainConfig().prior_lr] * steps)
    epoch_losses = [event.value for event in logged.Scalars("epoch/loss")]
    assert epoch_losses == pytest.approx([record["loss"] for record in history], rel=1e-6)  # float32 events
    per_step = torch.tensor([event.value for event in logged.Scalars("train/loss")])
    first_epoch = per_step[: history[0]["steps"]].mean().item()  # equal batches: the epoch's mean
    assert first_epoch == pytest.approx(history[0]["loss"], rel=1e-5)
    gaps = [event.value for event in logged.Scalars("epoch/energy_gap")]
    assert gaps == pytest.approx([record["energy_gap"] for record in history], rel=1e-5, abs=1e-6)


def test_a_resumed_run_continues_its_curves(tmp_path):
    model, guide = build()
    fit(model, guide, data(), TrainConfig(epochs=1), out_dir=tmp_path, tensorboard=tmp_path / "tb", progress=False)
    model, guide = build()
    history = fit(model, guide, data(), TrainConfig(epochs=2), out_dir=tmp_path, resume=True,
                  tensorboard=tmp_path / "tb", progress=False)
    steps = [event.step for event in events(tmp_path / "tb").Scalars("train/loss")]
    assert steps == list(range(1, sum(record["steps"] for record in history) + 1))
    assert len(history) == 2


def test_missing_tensorboard_is_named(monkeypatch, tmp_path):
    real_import = builtins.__import__

    def without_tensorboard(name, *args, **kwargs):
        if name.startswith("torch.utils.tensorboard") or name.startswith("tensorboard"):
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", without_tensorboard)
    with pytest.raises(ImportError, match="pip install tensorboard"):
        TensorBoardLog(tmp_path)
