"""Settings: every command-line option reaches the object that uses it, the options of earlier versions
keep their names, and a run's configuration reads back from JSON, nested or in the earlier flat layout."""

from __future__ import annotations

import argparse
import importlib.util
import json
from pathlib import Path

import pytest
import torch

from guides import MixtureOfProductsOfExpertsGuide, PrivateLatentGuide
from pyro_mmebm import LangevinConfig
from pyro_mmebm.ebm import tilted_laplace
from pyro_mmebm.ebm.langevin import LangevinRun
from pyro_mmebm.experiment import (
    ADDED_SETTINGS,
    ExperimentConfig,
    add_arguments,
    build_model_and_guide,
    config_from_args,
    read_experiment_config,
)
from pyro_mmebm.settings import from_flat, replace_settings, to_dict, to_flat

EXAMPLES_DIR = Path(__file__).resolve().parents[1] / "examples"


def example(name: str):
    """The module of ``examples/<name>.py``."""
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES_DIR / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def parse(*argv: str, dataset: str = "polymnist") -> ExperimentConfig:
    """The configuration an example's command line gives, small networks unless ``argv`` says otherwise."""
    parser = argparse.ArgumentParser()
    add_arguments(parser, dataset_defaults={"out": "unused", "data_root": "unused", "latent_dim": 4, "ebm_hidden": 8})
    return config_from_args(dataset, parser.parse_args(argv))


BUILDERS = {
    "runner": lambda config: build_model_and_guide(config, train_set=None),
    "example": lambda config: example(config.dataset).model_and_guide(config),
}


@pytest.mark.parametrize("builder", sorted(BUILDERS))
def test_the_langevin_options_reach_the_sampler_inside_the_built_prior(builder, monkeypatch):
    config = parse(
        "--ebm-estimator", "ml", "--langevin-step-size", "0.37", "--langevin-steps", "7",
        "--ebm-generation-steps", "9", "--ebm-generation-step-size", "0.2", "--ebm-generation-metropolis",
    )
    model, _ = BUILDERS[builder](config)
    chains = []

    def record(f, init, langevin, **options):
        chains.append(langevin)
        return LangevinRun(samples=init, step_size=langevin.step_size)

    monkeypatch.setattr(tilted_laplace, "langevin_run", record)
    model.prior().sample((3,))  # generation
    model.prior().log_prob(torch.zeros(5, 4, requires_grad=True))  # training negatives
    assert chains == [
        LangevinConfig(steps=9, step_size=0.2, metropolis=True),
        LangevinConfig(steps=7, step_size=0.37),
    ]


@pytest.mark.parametrize("builder", sorted(BUILDERS))
def test_the_guide_options_reach_the_built_guide_and_its_encoders(builder):
    model, guide = BUILDERS[builder](parse("--guide", "mopoe"))
    assert isinstance(guide, MixtureOfProductsOfExpertsGuide)
    assert {encoder.scale_activation for encoder in guide.encoders.values()} == {"softplus"}
    model, guide = BUILDERS[builder](parse("--private-latent-dim", "3"))
    assert isinstance(guide, PrivateLatentGuide) and guide.private_dim == 3 and model.private_dim == 3
    assert {encoder.latent_dim for encoder in guide.encoders.values()} == {4 + 3}
    assert {encoder.scale_activation for encoder in guide.encoders.values()} == {"softmax"}


@pytest.mark.parametrize("dataset", ["mnist_svhn", "polymnist"])
@pytest.mark.parametrize(
    "argv", [[], ["--prior", "laplace", "--guide", "poe"], ["--private-latent-dim", "2"], ["--prior", "ebm_normal"]]
)
def test_an_example_builds_what_the_runner_rebuilds_from_its_folder(dataset, argv):
    # load_run and two-stage runs rebuild an example's run from the data set's registry: weight for weight.
    config = parse(*argv, dataset=dataset)
    model, guide = example(dataset).model_and_guide(config)
    expected_model, expected_guide = build_model_and_guide(config, train_set=None)
    for built, expected in ((model, expected_model), (guide, expected_guide)):
        assert type(built) is type(expected)
        state, expected_state = built.state_dict(), expected.state_dict()
        assert state.keys() == expected_state.keys()
        assert all(torch.equal(state[key], expected_state[key]) for key in state)
    assert type(model.prior) is type(expected_model.prior)
    assert model.likelihood_scales == expected_model.likelihood_scales
    assert model.likelihoods == expected_model.likelihoods


EARLIER_COMMAND = (
    "--data-root d --source-root s --download --cache-dir c --out o --prior ebm_normal --latent-dim 32 "
    "--private-latent-dim 3 --ebm-hidden 400 --ebm-depth 6 --ebm-regularisation 0.2 --ebm-spectral-norm "
    "--ebm-persistent --langevin-steps 60 --langevin-step-size 0.4 --ebm-generation-steps 200 "
    "--ebm-warmup-epochs 2 --objective iwae -K 5 --epochs 8 --batch-size 32 --epoch-size 3200 --lr 0.002 "
    "--amsgrad --prior-lr 2e-5 --grad-clip 5 --max-energy-gap 100 --seed 3 --device cpu --tensorboard "
    "--eval-size 2000 --joint-samples 2000 --max-source-size 2 --classifier-epochs 3 --two-stage-from r "
    "--start-from r/checkpoint.pt --two-stage-epochs 3 --resume --smoke"
)
"""Every option of the examples before the settings were composed (but ``--guide`` and ``--overwrite``)."""

EARLIER_SETTINGS = dict(
    data_root="d", source_root="s", download=True, cache_dir="c", out="o", prior="ebm_normal", latent_dim=32,
    private_latent_dim=3, ebm_hidden=400, ebm_depth=6, ebm_regularisation=0.2, ebm_spectral_norm=True,
    ebm_persistent=True, langevin_steps=60, langevin_step_size=0.4, ebm_generation_steps=200,
    ebm_warmup_epochs=2, objective="iwae", num_samples=5, epochs=8, batch_size=32, epoch_size=3200, lr=0.002,
    amsgrad=True, prior_lr=2e-5, grad_clip=5.0, max_energy_gap=100.0, seed=3, device="cpu", tensorboard=True,
    eval_size=2000, joint_samples=2000, max_source_size=2, classifier_epochs=3, two_stage_from="r",
    start_from="r/checkpoint.pt", two_stage_epochs=3, resume=True, smoke=True,
)
"""What each of them sets, by the setting's flat name (the name the option had as a field before)."""


def test_every_earlier_option_keeps_its_name_and_meaning():
    # --ebm-persistent is for maximum likelihood, the default estimator then
    settings = to_flat(parse(*EARLIER_COMMAND.split(), "--ebm-estimator", "ml"))
    assert {name: settings[name] for name in EARLIER_SETTINGS} == EARLIER_SETTINGS
    assert parse("--guide", "poe").guide.name == "poe" and parse("--overwrite").overwrite


def test_help_shows_the_defaults(capsys):
    parser = argparse.ArgumentParser()
    add_arguments(parser, dataset_defaults={"out": "runs/x", "data_root": "data", "latent_dim": 32})
    with pytest.raises(SystemExit):
        parser.parse_args(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    for shown in ("--langevin-step-size LANGEVIN_STEP_SIZE Langevin step size s (default: 0.3)",
                  "dimension of the shared latent (default: 32)", "--ebm-warmup-epochs"):
        assert shown in text


def test_a_configuration_reads_back_from_json_nested_or_flat():
    config = replace_settings(
        parse(), langevin_step_size=0.4, ebm_warmup_epochs=2, guide="mopoe", prior_betas=(0.1, 0.9)
    )
    assert read_experiment_config(json.loads(json.dumps(to_dict(config)))) == config
    flat = json.loads(json.dumps({**to_flat(config), "extra": {}}))  # an experiment.json of an earlier version
    assert read_experiment_config(flat) == config
    defaults = from_flat(ExperimentConfig, {"dataset": "cub", "out": "o", "data_root": "d"})
    assert defaults.ebm.langevin == LangevinConfig()
    with pytest.raises(ValueError, match="unknown settings of ExperimentConfig: \\['langevin_stepsize'\\]"):
        replace_settings(config, langevin_stepsize=0.4)


@pytest.mark.parametrize("layout", ["nested", "flat"])
def test_a_run_saved_before_a_setting_existed_reads_back_as_it_ran(layout):
    """An experiment.json written before the estimator, the NCE noise, the encoder gradient, the
    generation sampler and the warm-up were settings is a maximum-likelihood run with the full encoder
    gradient, generation by the training sampler from p0 and no warm-up, whatever the defaults are now."""
    current = parse()
    assert current.ebm.estimator == "nce" and current.ebm.generation != current.ebm.langevin  # the defaults differ
    saved = to_dict(current) if layout == "nested" else to_flat(current)
    saved = json.loads(json.dumps(saved))
    if layout == "nested":
        for name in ("estimator", "nce_noise", "encoder_gradient", "generation_steps", "generation_step_size",
                     "generation_start"):
            del saved["ebm"][name]
        del saved["train"]["prior_warmup_epochs"]
    else:
        for name in ADDED_SETTINGS:
            del saved[name]
    old = read_experiment_config(saved)
    assert old.ebm.estimator == "ml" and old.ebm.contrast_noise is None and old.ebm.encoder_gradient == 1.0
    assert old.ebm.generation == old.ebm.langevin and old.ebm.generation_start == "base"
    assert old.train.prior_warmup_epochs == 0
    assert old.ebm.hidden == current.ebm.hidden  # a setting it has keeps its value
    nce_before_the_mixture = {name: value for name, value in to_flat(current).items() if name != "ebm_nce_noise"}
    assert read_experiment_config(json.loads(json.dumps(nce_before_the_mixture))).ebm.contrast_noise == "base"
