"""Every example runs end to end on tiny generated data, and an interrupted run resumes exactly.

As in Pyro's ``tests/test_examples.py``, each script of ``examples/`` is run as a subprocess with its
tiny setting (``--smoke``), and a script not listed here fails the test, so that none is forgotten.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from pyro_mmebm.checkpoint import CHECKPOINT_NAME, load_checkpoint
from pyro_mmebm.experiment import (
    EXPERIMENT_CONFIG_NAME,
    RESULTS_NAME,
    ExperimentConfig,
    build_datasets,
    build_model_and_guide,
    load_experiment_config,
    load_run,
    run,
    smoke_config,
)
from pyro_mmebm.settings import replace_settings

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES_DIR = ROOT / "examples"

EXAMPLES = {
    "mnist_svhn.py": ["--smoke", "--epochs", "1"],
    "polymnist.py": ["--smoke", "--epochs", "1", "--prior", "laplace"],
    "cub.py": ["--smoke", "--epochs", "1"],
    "diagnose.py": ["--smoke"],
}
"""Arguments of each example's smoke run. The ``--out`` folder is added for those that take one."""

WRITES_RESULTS = {"mnist_svhn.py", "polymnist.py", "cub.py"}
SLOW = {"diagnose.py"}
"""Examples whose smoke run takes most of a minute (NUTS, AIS): run with ``-m slow``."""


def test_every_example_is_listed():
    found = {path.name for path in EXAMPLES_DIR.glob("*.py")}
    assert found == set(EXAMPLES), f"examples not listed in EXAMPLES (add them with a smoke setting): {found ^ set(EXAMPLES)}"


def _run_example(name: str, args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    return subprocess.run(
        [sys.executable, str(EXAMPLES_DIR / name), *args], cwd=cwd, env=env, capture_output=True, text=True,
        timeout=300,
    )


@pytest.mark.parametrize(
    "name", [pytest.param(name, marks=pytest.mark.slow) if name in SLOW else name for name in sorted(EXAMPLES)]
)
def test_example_smoke(name, tmp_path):
    args = list(EXAMPLES[name])
    out = tmp_path / "run"
    if name in WRITES_RESULTS:
        args += ["--out", str(out)]
    result = _run_example(name, args, tmp_path)
    assert result.returncode == 0, f"{name} failed:\n{result.stderr[-3000:]}"
    if name in WRITES_RESULTS:
        results = json.loads((out / RESULTS_NAME).read_text())
        assert len(results["history"]) == 1 and results["test_loss"] == results["test_loss"]  # not NaN
        assert (out / "joint_samples.png").is_file() and (out / CHECKPOINT_NAME).is_file()
        assert load_experiment_config(out).smoke


def _smoke(tmp_path: Path, name: str, **changes) -> ExperimentConfig:
    config = ExperimentConfig(dataset="mnist_svhn", out=str(tmp_path / name), data_root="", prior="ebm", smoke=True)
    return replace_settings(smoke_config(config), **changes)


def _final_state(out: str) -> dict[str, torch.Tensor]:
    return torch.load(Path(out) / CHECKPOINT_NAME, weights_only=False)["modules"]


def test_resume_continues_exactly(tmp_path):
    straight = run(_smoke(tmp_path, "straight", epochs=2), progress=False)
    first = _smoke(tmp_path, "resumed", epochs=1)
    run(first, progress=False)
    resumed = run(replace_settings(first, epochs=2, resume=True), progress=False)

    for module, state in _final_state(first.out).items():
        reference = _final_state(straight["config"]["out"])[module]
        assert state.keys() == reference.keys()
        for key in state:
            assert torch.equal(state[key], reference[key]), f"{module}.{key} differs after resuming"
    assert [r["loss"] for r in resumed["history"]] == [r["loss"] for r in straight["history"]]
    watched = ("f_positive", "f_noise", "log_normaliser")  # the default estimator's watch (NCE)
    assert [[r[k] for k in watched] for r in resumed["history"]] == [[r[k] for k in watched] for r in straight["history"]]
    for metric in ("test_loss", "joint_coherence", "joint_digits"):
        assert resumed[metric] == straight[metric]
    digits = straight["joint_digits"]
    assert sum(digits["coherent"]) == round(straight["joint_coherence"] * straight["config"]["joint_samples"])
    assert resumed["cross_coherence"].to_dict() == straight["cross_coherence"].to_dict()


def test_ebm_run_starts_from_the_laplace_run_at_the_end_of_its_warmup(tmp_path):
    laplace = _smoke(tmp_path, "laplace", epochs=1, prior="laplace")
    run(laplace, progress=False)
    ebm = _smoke(tmp_path, "ebm", epochs=2, ebm_warmup_epochs=1, start_from=str(Path(laplace.out) / CHECKPOINT_NAME))
    results = run(ebm, progress=False)
    laplace_history = json.loads((Path(laplace.out) / "metrics.json").read_text())
    assert results["history"][0]["loss"] == laplace_history[0]["loss"]  # the warm-up epoch, taken over
    assert "energy_gap" not in results["history"][0] and "log_normaliser" in results["history"][1]


def test_a_warmup_as_long_as_the_run_is_refused_before_anything_is_written(tmp_path):
    config = _smoke(tmp_path, "all_warmup", epochs=2, ebm_warmup_epochs=2)
    with pytest.raises(ValueError, match="--ebm-warmup-epochs 2 leaves none of the 2 epochs to train the EBM prior"):
        run(config, progress=False)
    assert not Path(config.out).exists()
    assert smoke_config(replace_settings(config, ebm_warmup_epochs=5)).train.prior_warmup_epochs == 1


def test_checkpoint_of_killed_run_loads_and_resumes(tmp_path):
    config = _smoke(tmp_path, "killed", epochs=2)
    out = Path(config.out)
    args = ["--smoke", "--epochs", "2", "--prior", "ebm", "--out", str(out)]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    process = subprocess.Popen(
        [sys.executable, str(EXAMPLES_DIR / "mnist_svhn.py"), *args], cwd=tmp_path, env=env,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 120
        while not (out / CHECKPOINT_NAME).exists():
            assert process.poll() is None, "the run ended before writing a checkpoint"
            assert time.monotonic() < deadline, "no checkpoint within 120 s"
            time.sleep(0.05)
        process.send_signal(signal.SIGKILL)
    finally:
        process.wait()

    saved = load_experiment_config(out)
    model, guide = build_model_and_guide(saved, build_datasets(saved)[0])
    state = load_checkpoint(out, {"model": model, "guide": guide})
    assert state["epoch"] in (0, 1) and len(state["history"]) == state["epoch"] + 1
    assert (out / EXPERIMENT_CONFIG_NAME).is_file()

    results = run(dataclasses.replace(saved, resume=True), progress=False)
    assert [r["epoch"] for r in results["history"]] == [0, 1]


@pytest.mark.parametrize(
    "changes",
    [
        {"guide": "poe"},
        {"guide": "mopoe", "objective": "iwae", "num_samples": 2},
        {"objective": "dreg", "num_samples": 2, "private_latent_dim": 2},
    ],
    ids=["poe", "mopoe-iwae", "private-dreg"],
)
def test_guides_objectives_and_private_latents_run(tmp_path, changes):
    results = run(_smoke(tmp_path, "variant", epochs=1, **changes), progress=False)
    assert results["config"]["guide"]["name"] == changes.get("guide", "moe")
    assert 0.0 <= results["cross_coherence"].mean <= 1.0 and results["test_loss"] == results["test_loss"]


@pytest.mark.parametrize("estimator, nce_noise", [("ml", "base"), ("nce", "base"), ("nce", "base+gaussian")])
def test_load_run_rebuilds_a_two_stage_run(tmp_path, estimator, nce_noise):
    first = run(_smoke(tmp_path, "first", prior="laplace", epochs=1), progress=False)
    second = run(
        _smoke(tmp_path, "second", two_stage_from=first["config"]["out"], ebm_estimator=estimator,
               ebm_nce_noise=nce_noise),
        progress=False,
    )
    config, model, guide, _, test_set = load_run(second["config"]["out"], torch.device("cpu"))
    assert config.prior == "ebm" and config.two_stage_from == first["config"]["out"]
    trained = torch.load(Path(config.out) / CHECKPOINT_NAME, weights_only=False)["modules"]["model"]
    assert all(torch.equal(value, trained[key]) for key, value in model.state_dict().items())
    first_stage = torch.load(Path(first["config"]["out"]) / CHECKPOINT_NAME, weights_only=False)["modules"]["model"]
    decoder_keys = [key for key in first_stage if key.startswith("decoders.")]
    assert decoder_keys and all(torch.equal(trained[key], first_stage[key]) for key in decoder_keys)
    assert len(second["history"]) == 1 and "prior_loss" in second["history"][0]
    assert config.ebm.estimator == estimator and config.ebm.nce_noise == nce_noise
    # the fitted noise's moments are part of the prior's state: moved by training, saved, loaded
    assert (model.prior.noise is not None) == (nce_noise == "base+gaussian")
    if model.prior.noise is not None:
        assert model.prior.noise.mean.abs().sum() > 0 and "prior.noise.mean" in trained
    # each estimator's watch: the energy gap where Langevin negatives are drawn (maximum likelihood),
    # the classifier with noise-contrastive estimation
    assert ("energy_gap" in second["history"][0]) == (estimator == "ml")
    assert ("nce_loss" in second["history"][0]) == (estimator == "nce")
    if estimator == "nce":
        assert 0.0 <= second["history"][0]["nce_accuracy"] <= 1.0
    # and the histograms of f set generation's samples beside the noise's draws that NCE classified
    assert ("NCE's noise" in second["energy_overlap"]["f_mean"]) == (estimator == "nce")
    # and whether the learned prior is normalisable, as measured by tail_growth
    tails = second["tail_growth"]
    assert tails["excess_slope"] == pytest.approx(tails["f_slope"] - tails["base_decay"], abs=1e-5)
    assert tails["normalisable"] == (tails["excess_slope"] < 0)
