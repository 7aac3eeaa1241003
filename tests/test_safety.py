"""Runs never lose or mix finished work, stop cleanly on Ctrl-C, and refuse bad input early and clearly.

Each test stands for a class of problem: a folder holding a run, a resume with other settings, an
interrupt, an impossible setting, an energy network or Langevin step that breaks sampling, a batch
in the wrong form, a damaged or foreign data file.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from guides import MixtureOfExpertsGuide
from models import MultimodalVAE
from pyro_mmebm import (
    EBMPriorConfig,
    EnergyBasedPrior,
    LangevinConfig,
    LangevinDivergenceError,
    Likelihood,
    TrainConfig,
    fit,
)
from pyro_mmebm.atomic import atomic_save_json
from pyro_mmebm.checkpoint import CHECKPOINT_NAME, CheckpointError, ExistingRunError
from pyro_mmebm.data import DatasetFilesNotFoundError, PolyMNIST
from pyro_mmebm.data._files import load_mnist
from pyro_mmebm.experiment import (
    EXPERIMENT_CONFIG_NAME,
    ExperimentConfig,
    add_arguments,
    build_datasets,
    claim_out_folder,
    load_experiment_config,
    run,
    smoke_config,
    write_fake_dataset,
)
from pyro_mmebm.settings import replace_settings, to_dict, to_flat
from pyro_mmebm.networks import MLPDecoder, MLPEncoder
from pyro_mmebm.run_folder import ResumeMismatchError
from pyro_mmebm.training import evaluate_loss

ROOT = Path(__file__).resolve().parents[1]
TINY_EBM = EBMPriorConfig(hidden=16, depth=2, langevin=LangevinConfig(steps=2))


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` with its bytes."""
    return {str(path.relative_to(folder)): path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file()}


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    """The folder of a finished one-epoch smoke run (Laplace prior, MNIST-SVHN)."""
    out = tmp_path_factory.mktemp("finished") / "run"
    config = ExperimentConfig(dataset="mnist_svhn", out=str(out), data_root="", prior="laplace", smoke=True)
    run(replace_settings(smoke_config(config), epochs=1), progress=False)
    return out


@pytest.fixture
def run_folder(finished_run, tmp_path) -> tuple[ExperimentConfig, Path]:
    """A copy of :func:`finished_run`, its paths moved to the copy, and its configuration."""
    out = tmp_path / "run"
    shutil.copytree(finished_run, out)
    data = out / "smoke_data"
    config = dataclasses.replace(
        load_experiment_config(out), out=str(out), data_root=str(data), cache_dir=str(data / "cache")
    )
    atomic_save_json(to_dict(config), out / EXPERIMENT_CONFIG_NAME)
    return config, out


# --- never lose or mix finished work ---------------------------------------------------------------


def test_new_run_refuses_a_folder_that_holds_a_run(run_folder):
    config, out = run_folder
    before = snapshot(out)
    with pytest.raises(ExistingRunError, match="already holds a run.*--resume.*--overwrite"):
        run(config, progress=False)
    assert snapshot(out) == before


def test_overwrite_deletes_the_old_run_before_the_new_one_starts(run_folder):
    config, out = run_folder
    claimed = claim_out_folder(replace_settings(config, overwrite=True, epochs=2))
    assert sorted(path.name for path in out.iterdir()) == [EXPERIMENT_CONFIG_NAME, "smoke_data"]
    assert load_experiment_config(out).train.epochs == 2 and claimed.resumes == []


@pytest.mark.parametrize(
    "change", [{"latent_dim": 3}, {"prior": "ebm"}, {"batch_size": 7}, {"epoch_size": 5}],
    ids=["latent-size", "prior", "batch-size", "epoch-size"],
)
def test_refused_resume_leaves_the_folder_exactly_as_it_was(run_folder, change):
    config, out = run_folder
    before = snapshot(out)
    (name,) = change
    with pytest.raises(ResumeMismatchError, match=f"cannot resume.*{name}"):
        run(dataclasses.replace(config, resume=True, **change), progress=False)
    assert snapshot(out) == before


def test_resume_with_a_damaged_checkpoint_leaves_the_folder_as_it_was(run_folder):
    config, out = run_folder
    checkpoint = out / CHECKPOINT_NAME
    data = bytearray(checkpoint.read_bytes())
    data[len(data) // 2] ^= 0xFF
    checkpoint.write_bytes(bytes(data))
    before = snapshot(out)
    with pytest.raises(CheckpointError):
        run(replace_settings(config, resume=True, epochs=2), progress=False)
    assert snapshot(out) == before


def test_resume_records_the_settings_it_changes_in_the_run_history(run_folder):
    config, out = run_folder
    claimed = claim_out_folder(replace_settings(config, resume=True, epochs=3, eval_size=5))
    expected = [{"after_epoch": 1, "changed": {"epochs": {"from": 1, "to": 3}, "eval_size": {"from": 10, "to": 5}}}]
    assert claimed.resumes == expected
    saved = load_experiment_config(out)
    assert saved.resumes == expected and saved.train.epochs == 3


def test_a_resume_without_start_from_keeps_where_the_run_started(run_folder):
    """A run forked from another's checkpoint resumes from its own without naming that checkpoint
    again (bench/polymnist_protocol.py resumes its forks so); naming another is refused."""
    config, out = run_folder
    saved = json.loads((out / EXPERIMENT_CONFIG_NAME).read_text())
    saved["start_from"] = "../laplace/checkpoint_epoch2.pt"
    (out / EXPERIMENT_CONFIG_NAME).write_text(json.dumps(saved))
    claimed = claim_out_folder(replace_settings(config, resume=True, start_from=None))
    assert claimed.start_from == "../laplace/checkpoint_epoch2.pt" and claimed.resumes == []
    assert load_experiment_config(out).start_from == "../laplace/checkpoint_epoch2.pt"
    with pytest.raises(ResumeMismatchError, match="start_from"):
        claim_out_folder(replace_settings(config, resume=True, start_from="elsewhere.pt"))


def test_resume_may_change_how_generation_samples_the_prior(run_folder):
    """Generation's sampler does not change what the finished epochs trained."""
    config, out = run_folder
    changed = dict(ebm_generation_metropolis=True, ebm_generation_steps=900, ebm_generation_step_size=0.2)
    (record,) = claim_out_folder(replace_settings(config, resume=True, **changed)).resumes
    assert record["changed"] == {
        "ebm_generation_metropolis": {"from": None, "to": True},
        "ebm_generation_steps": {"from": config.ebm.generation_steps, "to": 900},
        "ebm_generation_step_size": {"from": config.ebm.generation_step_size, "to": 0.2},
    }


def test_resume_of_a_run_saved_before_a_setting_existed_takes_its_default(run_folder):
    config, out = run_folder
    saved = json.loads((out / EXPERIMENT_CONFIG_NAME).read_text())
    del saved["ebm"]["spectral_norm"]  # as if written by a version without the setting
    (out / EXPERIMENT_CONFIG_NAME).write_text(json.dumps(saved))
    assert claim_out_folder(dataclasses.replace(config, resume=True)).resumes == []
    with pytest.raises(ResumeMismatchError, match="ebm_spectral_norm False -> True"):
        claim_out_folder(replace_settings(config, resume=True, ebm_spectral_norm=True))


def test_a_run_saved_flat_by_an_earlier_version_loads_and_resumes(run_folder):
    config, out = run_folder
    flat = {**to_flat(config), "extra": {}}  # the layout of experiment.json before the settings were composed
    for added_since in ("ebm_activation", "betas", "prior_betas"):
        del flat[added_since]
    (out / EXPERIMENT_CONFIG_NAME).write_text(json.dumps(flat))
    assert load_experiment_config(out) == config
    assert claim_out_folder(dataclasses.replace(config, resume=True)).resumes == []
    assert "ebm" in json.loads((out / EXPERIMENT_CONFIG_NAME).read_text())  # written back composed
    (out / EXPERIMENT_CONFIG_NAME).write_text(json.dumps(flat))
    with pytest.raises(ResumeMismatchError, match="langevin_step_size 0.3 -> 0.4"):
        claim_out_folder(replace_settings(config, resume=True, langevin_step_size=0.4))


def test_two_stage_training_from_a_run_of_another_dataset_is_refused(run_folder, tmp_path):
    _, first = run_folder  # a MNIST-SVHN run
    config = ExperimentConfig(dataset="polymnist", out=str(tmp_path / "second"), data_root="", smoke=True)
    with pytest.raises(ValueError, match="is a mnist_svhn run; a polymnist run cannot start from it"):
        run(dataclasses.replace(config, two_stage_from=str(first)), progress=False)
    assert not (tmp_path / "second" / EXPERIMENT_CONFIG_NAME).exists()


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_interrupted_run_says_what_is_saved_and_how_to_resume(tmp_path, signum):
    out = tmp_path / "run"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    args = ["--smoke", "--epochs", "2", "--prior", "laplace", "--out", str(out)]
    process = subprocess.Popen(
        [sys.executable, str(ROOT / "examples" / "polymnist.py"), *args], cwd=tmp_path, env=env,
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    try:
        deadline = time.monotonic() + 120
        while not (out / CHECKPOINT_NAME).exists():
            assert process.poll() is None, "the run ended before writing a checkpoint"
            assert time.monotonic() < deadline, "no checkpoint within 120 s"
            time.sleep(0.02)
        process.send_signal(signum)
        _, stderr = process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode == 128 + signum, stderr
    assert "Traceback" not in stderr
    (message,) = [line for line in stderr.splitlines() if line.startswith("interrupted")]
    assert f"is saved in {out}" in message and "--resume" in message


def test_example_refusing_its_out_folder_says_why_in_one_line(tmp_path):
    out = tmp_path / "run"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    command = [sys.executable, str(ROOT / "examples" / "polymnist.py"), "--smoke", "--epochs", "1", "--prior",
               "laplace", "--out", str(out)]
    first = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr
    second = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert second.returncode == 2 and "Traceback" not in second.stderr
    (message,) = [line for line in second.stderr.splitlines() if line.startswith("error:")]
    assert "--resume" in message and "--overwrite" in message


# --- impossible settings -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "argv",
    [
        ["--epochs", "0"], ["--epochs", "-2"], ["--epoch-size", "0"], ["--eval-size", "0"], ["--batch-size", "0"],
        ["--langevin-steps", "-1"], ["--langevin-step-size", "-0.1"], ["--langevin-step-size", "nan"],
        ["--lr", "0"], ["-K", "0"], ["--ebm-regularisation", "-1"],
    ],
    ids=lambda argv: " ".join(argv),
)
def test_impossible_settings_are_refused_when_parsed(argv, capsys):
    parser = argparse.ArgumentParser()
    add_arguments(parser, dataset_defaults={})
    with pytest.raises(SystemExit):
        parser.parse_args(argv)
    assert f"argument {argv[0]}: must be" in capsys.readouterr().err


def test_impossible_settings_are_refused_by_the_configuration():
    config = ExperimentConfig(dataset="mnist_svhn", out="runs/x", data_root="data")
    with pytest.raises(ValueError, match=r"epochs \(--epochs\) must be at least 1, got 0"):
        replace_settings(config, epochs=0)
    with pytest.raises(ValueError, match=r"epochs \(--epochs\) must be at least 1, got 0"):
        TrainConfig(epochs=0)
    with pytest.raises(ValueError, match=r"langevin_step_size \(--langevin-step-size\) must be a positive"):
        replace_settings(config, langevin_step_size=-1.0)
    with pytest.raises(ValueError, match=r"langevin_step_size \(--langevin-step-size\) must be a positive"):
        LangevinConfig(step_size=-1.0)
    with pytest.raises(ValueError, match=r"prior \(--prior\) must be one of .*, got 'cauchy'"):
        ExperimentConfig(dataset="mnist_svhn", out="runs/x", data_root="data", prior="cauchy")
    with pytest.raises(ValueError, match="private latents .* mixture-of-experts guide only"):
        replace_settings(config, guide="poe", private_latent_dim=2)


def test_eval_size_larger_than_the_test_set_is_refused_before_training(run_folder):
    config, _ = run_folder
    with pytest.raises(ValueError, match="--eval-size 100000 exceeds the .* examples of the mnist_svhn test set"):
        build_datasets(dataclasses.replace(config, eval_size=100_000))


# --- the energy network and the Langevin sampler -----------------------------------------------


class BrokenEnergy(nn.Module):
    """An energy network returning ``inf`` everywhere, or one value per latent in the wrong shape."""

    def __init__(self, fault: str) -> None:
        super().__init__()
        self.fault = fault
        self.weight = nn.Parameter(torch.ones(2))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        f = z @ self.weight
        return f + float("inf") if self.fault == "inf" else f.unsqueeze(-1)


def tiny_model(prior: nn.Module, shape: tuple[int, ...] = (6,)):
    decoders = {k: MLPDecoder(2, shape, hidden=(16,), output="identity") for k in "ab"}
    model = MultimodalVAE(decoders, {k: Likelihood("normal", 0.1) for k in "ab"}, prior)
    guide = MixtureOfExpertsGuide({k: MLPEncoder(shape, 2, hidden=(16,)) for k in "ab"}, 2)
    return model, guide


def tiny_batches(shape: tuple[int, ...] = (6,), n: int = 32) -> list[dict[str, torch.Tensor]]:
    return [{k: torch.rand(n, *shape) for k in "ab"}]


@pytest.mark.parametrize("fault", ["inf", "shape"])
def test_broken_energy_network_is_named_in_sampling_and_in_training(fault):
    prior = EnergyBasedPrior(2, EBMPriorConfig(hidden=16, depth=2, langevin=LangevinConfig(steps=3)))
    prior.energy = BrokenEnergy(fault)
    problem = "returned inf or NaN" if fault == "inf" else "must return one value per latent"
    message = f"energy network f_α \\(BrokenEnergy\\) {problem}"
    with pytest.raises(ValueError, match=message):
        prior().sample((10,))
    model, guide = tiny_model(prior)
    with pytest.raises(ValueError, match=message):
        fit(model, guide, tiny_batches(), TrainConfig(epochs=1), progress=False)


def test_langevin_step_far_too_large_for_the_laplace_base_is_refused():
    # Finite chains, |z| in the hundreds:
    sampler = dict(langevin=LangevinConfig(steps=20, step_size=20.0), generation_steps=None, generation_step_size=None)
    prior = EnergyBasedPrior(2, EBMPriorConfig(hidden=16, depth=2, estimator="ml", **sampler))
    with pytest.raises(LangevinDivergenceError, match="base scales from the base's centre.*step size 20.0"):
        prior().sample((100,))
    model, guide = tiny_model(prior)
    with pytest.raises(LangevinDivergenceError, match="step size 20.0"):
        fit(model, guide, tiny_batches(), TrainConfig(epochs=1), progress=False)


# --- batches -------------------------------------------------------------------------------------


def test_batch_of_python_lists_is_refused_naming_the_modality():
    model, guide = tiny_model(EnergyBasedPrior(2, TINY_EBM))
    batch = {k: v.tolist() for k, v in tiny_batches()[0].items()}
    with pytest.raises(TypeError, match="modality 'a' is a list, not a tensor"):
        fit(model, guide, [batch], TrainConfig(epochs=1), progress=False)


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda b: b.update(b=b["b"][:-1]), "different batch sizes"),
        (lambda b: b["a"].__setitem__((0, 0), float("nan")), "modality 'a' contains NaN"),
        (lambda b: b["b"].__setitem__((3, 1), float("inf")), "modality 'b' contains NaN or infinite"),
        (lambda b: b.update(a=torch.tensor(0.5)), "modality 'a' is a scalar"),
        (lambda b: b.update(a=b["a"][:0], b=b["b"][:0]), "batch is empty"),
        (lambda b: b.clear(), "batch holds no modality"),
    ],
)
def test_bad_batch_is_refused_once_where_it_enters(mutate, message):
    model, guide = tiny_model(EnergyBasedPrior(2, TINY_EBM))
    batches = tiny_batches()
    mutate(batches[0])
    with pytest.raises(ValueError, match=message):
        fit(model, guide, batches, TrainConfig(epochs=1), progress=False)
    with pytest.raises(ValueError, match=message):
        evaluate_loss(model, guide, batches)


def test_float64_batches_are_converted_to_the_default_dtype():
    model, guide = tiny_model(EnergyBasedPrior(2, TINY_EBM))
    batches = [{k: v.double() for k, v in batch.items()} for batch in tiny_batches()]
    history = fit(model, guide, batches, TrainConfig(epochs=1), progress=False)
    assert np.isfinite(history[0]["loss"])
    assert np.isfinite(evaluate_loss(model, guide, batches))


def test_float_images_in_0_255_are_refused():
    model, guide = tiny_model(EnergyBasedPrior(2, TINY_EBM), shape=(1, 4, 4))
    batches = [{k: (v * 255).round() for k, v in batch.items()} for batch in tiny_batches((1, 4, 4))]
    with pytest.raises(ValueError, match="modality 'a' holds images with values up to 25.*divide them by 255"):
        fit(model, guide, batches, TrainConfig(epochs=1), progress=False)
    with pytest.raises(ValueError, match="divide them by 255"):
        evaluate_loss(model, guide, batches)


# --- data files ----------------------------------------------------------------------------------


def write_polymnist_arrays(root: Path, labels: np.ndarray) -> tuple[Path, Path]:
    root.mkdir(parents=True, exist_ok=True)
    images, label_file = root / "train_images.npy", root / "train_labels.npy"
    np.save(images, np.zeros((len(labels), 5, 28, 28, 3), dtype=np.uint8))
    np.save(label_file, labels.astype(np.int64))
    return images, label_file


def test_truncated_npy_file_is_named(tmp_path):
    images, _ = write_polymnist_arrays(tmp_path, np.arange(4) % 10)
    images.write_bytes(images.read_bytes()[:1000])
    with pytest.raises(ValueError, match=f"{images} is truncated"):
        PolyMNIST(tmp_path, train=True)


def test_labels_outside_the_classes_are_found_when_the_dataset_is_opened(tmp_path):
    _, labels = write_polymnist_arrays(tmp_path, np.array([0, 3, 12, 9]))
    with pytest.raises(ValueError, match=f"{labels} holds labels outside 0..9 .*e.g. 12"):
        PolyMNIST(tmp_path, train=True)


def test_missing_polymnist_names_the_files_and_the_options(tmp_path):
    with pytest.raises(DatasetFilesNotFoundError, match="missing .*train_images.npy.*--download.*--source-root"):
        PolyMNIST(tmp_path, train=True)


def test_truncated_or_foreign_mnist_file_is_not_reported_as_a_failed_download(tmp_path):
    write_fake_dataset("mnist_svhn", tmp_path)
    images = tmp_path / "MNIST" / "raw" / "train-images-idx3-ubyte"
    complete = images.read_bytes()
    images.write_bytes(complete[:5000])
    with pytest.raises(ValueError, match="could not be read .*truncated or corrupt") as error:
        load_mnist(tmp_path, train=True)
    assert not isinstance(error.value, DatasetFilesNotFoundError) and "download failed" not in str(error.value)
    images.write_bytes(complete)
    labels = tmp_path / "MNIST" / "raw" / "t10k-labels-idx1-ubyte"
    data = bytearray(labels.read_bytes())
    data[-1] = 12  # the last label
    labels.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="t10k-labels-idx1-ubyte holds labels outside 0..9"):
        load_mnist(tmp_path, train=False)
