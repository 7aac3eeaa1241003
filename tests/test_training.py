"""Training: the EBM prior learns a multimodal latent; divergence is caught; checkpoints resume exactly."""

import math

import pytest
import torch

from guides import MixtureOfExpertsGuide
from models import MultimodalVAE
from pyro_mmebm import (
    EBMDivergenceError,
    EBMPriorConfig,
    EnergyBasedPrior,
    LangevinConfig,
    LaplacePrior,
    Likelihood,
    TrainConfig,
    fit,
)
from pyro_mmebm.checkpoint import CheckpointError, load_checkpoint
from pyro_mmebm.ebm import LangevinDivergenceError, NoiseContrastWatch, TailWatch, tail_growth
from pyro_mmebm.ebm.hooks import GENERATION_GAP_STEPS
from pyro_mmebm.networks import MLPDecoder, MLPEncoder

SMALL_EBM = EBMPriorConfig(hidden=16, depth=2, langevin=LangevinConfig(steps=3))

CENTRES = torch.tensor([[2.5, 2.5], [-2.5, 2.5], [-2.5, -2.5], [2.5, -2.5]])


def clustered_pairs(n: int, seed: int):
    """Two 8-d modalities, nonlinear views of a shared 2-d latent drawn from four separated clusters."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 4, (n,), generator=g)
    u = CENTRES[labels] + 0.3 * torch.randn(n, 2, generator=g)
    views = torch.Generator().manual_seed(123)
    wa, wb = torch.randn(2, 8, generator=views), torch.randn(2, 8, generator=views)
    a = torch.tanh(0.6 * u @ wa) + 0.05 * torch.randn(n, 8, generator=g)
    b = torch.sin(0.4 * u @ wb) + 0.05 * torch.randn(n, 8, generator=g)
    return {"a": a, "b": b}, labels


def nearest_cluster_classifier(x, labels):
    """Label by the nearest cluster mean, or -1 when farther than 99% of that cluster's training data."""
    means = torch.stack([x[labels == c].mean(0) for c in range(4)])
    radius = (x - means[labels]).norm(dim=-1).quantile(0.99)

    def classify(y):
        distance = torch.cdist(y, means)
        return torch.where(distance.min(-1).values < radius, distance.argmin(-1), -1)

    return classify


def batches(data, labels, size=128):
    n = labels.shape[0]
    return [({k: v[i : i + size] for k, v in data.items()}, labels[i : i + size]) for i in range(0, n, size)]


def build(prior, d=2):
    decoders = {k: MLPDecoder(d, (8,), hidden=(64,), output="identity") for k in "ab"}
    model = MultimodalVAE(decoders, {k: Likelihood("normal", 0.1) for k in "ab"}, prior)
    guide = MixtureOfExpertsGuide({k: MLPEncoder((8,), d, hidden=(64,)) for k in "ab"}, d)
    return model, guide


def joint_coherence(model, classifiers, n=2000):
    torch.manual_seed(1)
    _, x = model.generate(n)
    la, lb = classifiers["a"](x["a"]), classifiers["b"](x["b"])
    return ((la == lb) & (la >= 0)).float().mean().item()


ML_RECIPE = dict(estimator="ml", encoder_gradient=0.0, generation_steps=None, generation_step_size=None)
"""Maximum likelihood as measured on PolyMNIST: no encoder gradient, generation by the training sampler."""


@pytest.mark.parametrize("estimator", ["nce", "ml"])
def test_ebm_prior_generates_coherent_pairs_more_often_than_laplace_prior(estimator):
    data, labels = clustered_pairs(4096, seed=0)
    classifiers = {k: nearest_cluster_classifier(data[k], labels) for k in data}
    loader = batches(data, labels)
    config = TrainConfig(epochs=8, lr=2e-3, prior_lr=1e-3)
    coherence, history = {}, []
    for name in ("laplace", "ebm"):
        torch.manual_seed(0)
        recipe = {} if estimator == "nce" else ML_RECIPE  # "nce": the default recipe
        ebm = EBMPriorConfig(hidden=64, depth=3, langevin=LangevinConfig(steps=20), **recipe)
        prior = EnergyBasedPrior(2, ebm) if name == "ebm" else LaplacePrior(2)
        model, guide = build(prior)
        history = fit(model, guide, loader, config, progress=False)
        coherence[name] = joint_coherence(model, classifiers)
    # Measured over seeds: Laplace 0.09-0.14 (its mass between clusters decodes off the data), EBM ~0.6
    # (the default, NCE: 0.63 and 0.69 on seeds 0 and 1). With 2000 samples the binomial SE is ~0.011,
    # so a 0.25 margin is far outside sampling noise.
    assert coherence["ebm"] > coherence["laplace"] + 0.25, coherence
    if estimator == "ml":  # the energy gap stays bounded (measured ~1)
        gaps = [record["energy_gap_last"] for record in history]
        assert all(abs(gap) < 10 for gap in gaps), gaps
    else:  # f_α tells posterior draws from noise, and exp(f_α) p0 stays normalised: log Z(α) near 0
        # (last epoch measured: accuracy 0.89 and 0.91, log Z -0.31 and -0.44 on seeds 0 and 1)
        last = history[-1]
        assert last["nce_accuracy"] > 0.75 and abs(last["log_normaliser"]) < 1.0, last


def test_divergent_energy_gap_stops_training_with_clear_error():
    data, labels = clustered_pairs(256, seed=0)
    ebm = EBMPriorConfig(hidden=16, depth=2, estimator="ml", langevin=LangevinConfig(steps=2))
    model, guide = build(EnergyBasedPrior(2, ebm))
    with pytest.raises(EBMDivergenceError, match="step 1.*step size 0.3"):
        fit(model, guide, batches(data, labels), TrainConfig(epochs=1, max_energy_gap=1e-9), progress=False)


def test_noise_contrastive_training_watches_the_classifier_and_stops_when_it_is_not_finite():
    """Joint training by NCE logs the classifier's loss, accuracy and log Z(α), not an energy gap; a
    non-finite value stops it with a clear error."""
    data, labels = clustered_pairs(256, seed=0)
    torch.manual_seed(0)
    model, guide = build(EnergyBasedPrior(2, EBMPriorConfig(hidden=16, depth=2, estimator="nce")))
    (record,) = fit(model, guide, batches(data, labels), TrainConfig(epochs=1), progress=False)
    assert "energy_gap" not in record
    assert 0.0 <= record["nce_accuracy"] <= 1.0 and 0.0 < record["nce_loss"] and record["f_noise"] == record["f_noise"]
    watch = NoiseContrastWatch(model.prior)
    with pytest.raises(EBMDivergenceError, match="step 7: the noise-contrastive watch.*'nce_loss': nan"):
        watch.end_step([0.5, -0.5, float("nan"), 0.5, 0.0], 7)


def test_noise_contrastive_training_measures_generations_gap_each_epoch_without_touching_its_randomness(monkeypatch):
    """At each epoch's end the watch runs generation's chains from a fixed seed: the gap between f on
    the last posterior draws and on those samples is recorded, and training's own random draws (so
    its losses) are those of a run without it. Chains that leave the base are recorded, not fatal."""
    data, labels = clustered_pairs(256, seed=0)

    def train():
        torch.manual_seed(0)
        config = EBMPriorConfig(hidden=16, depth=2, generation_steps=20)
        model, guide = build(EnergyBasedPrior(2, config))
        return model, fit(model, guide, batches(data, labels), TrainConfig(epochs=2), progress=False)

    model, history = train()
    for record in history:  # epochs of fewer than GENERATION_GAP_STEPS steps: the gap uses all of them
        assert record["steps"] < GENERATION_GAP_STEPS and math.isfinite(record["f_generated"])
        assert record["generation_gap"] == pytest.approx(record["f_positive"] - record["f_generated"], rel=1e-6)
    watch = NoiseContrastWatch(model.prior, generation_samples=300)
    first, again = watch.generation_gap(1.0), watch.generation_gap(1.0)
    assert first == again  # a fixed seed: the same chains every call
    torch.manual_seed(1)
    samples = model.prior().sample((300,))
    with torch.no_grad():
        assert first["f_generated"] != pytest.approx(float(model.prior.energy(samples).mean()), abs=1e-6)
    monkeypatch.setattr(NoiseContrastWatch, "generation_gap", lambda self, f_positive: {})
    _, without = train()
    assert [r["loss"] for r in without] == [r["loss"] for r in history]
    monkeypatch.undo()

    def leave_the_base(*args, **kwargs):
        raise LangevinDivergenceError("chains ended 60 base scales out")

    monkeypatch.setattr(type(model.prior()), "sample", leave_the_base)
    assert watch.generation_gap(1.0) == {"generation_diverged": 1.0}


def test_each_tilted_epoch_records_whether_the_prior_is_normalisable_without_touching_training(monkeypatch):
    """``tail_excess`` (``tail_growth``'s excess slope) in every epoch's record once the prior is tilted,
    none in the warm-up; the losses are those of a run without the watch (its own random stream)."""
    data, labels = clustered_pairs(256, seed=0)

    def train():
        torch.manual_seed(0)
        model, guide = build(EnergyBasedPrior(2, EBMPriorConfig(hidden=16, depth=2, generation_steps=5)))
        config = TrainConfig(epochs=3, prior_warmup_epochs=1)
        return model, fit(model, guide, batches(data, labels), config, progress=False)

    model, history = train()
    assert "tail_excess" not in history[0]
    assert all(math.isfinite(record["tail_excess"]) for record in history[1:])
    assert history[-1]["tail_excess"] == tail_growth(model.prior()).excess
    model.prior.tilted = False
    assert TailWatch(model.prior).end_epoch() == {}
    monkeypatch.setattr(TailWatch, "end_epoch", lambda self: {})
    _, without = train()
    assert "tail_excess" not in without[-1]
    assert [r["loss"] for r in without] == [r["loss"] for r in history]


def test_prior_gets_its_own_learning_rate_and_betas():
    from pyro_mmebm.training import make_optimizer

    model, guide = build(EnergyBasedPrior(2, EBMPriorConfig(hidden=16, depth=2)))
    config = TrainConfig(lr=1e-3, amsgrad=True, prior_lr=1e-5, prior_betas=(0.1, 0.9))
    optimizer = make_optimizer(model, guide, config)
    vae, prior = optimizer.param_groups
    assert prior["lr"] == 1e-5 and prior["betas"] == (0.1, 0.9) and vae["lr"] == 1e-3
    assert vae["amsgrad"] and not prior["amsgrad"]
    assert {id(p) for p in prior["params"]} == {id(p) for p in model.prior.energy.parameters()}
    n_all = len(list(model.parameters())) + len(list(guide.parameters()))
    assert len(vae["params"]) + len(prior["params"]) == n_all


def _train(tmp_path, epochs, resume):
    data, labels = clustered_pairs(512, seed=0)
    torch.manual_seed(0)
    model, guide = build(EnergyBasedPrior(2, SMALL_EBM))
    history = fit(
        model, guide, batches(data, labels), TrainConfig(epochs=epochs, seed=5), out_dir=tmp_path,
        resume=resume, progress=False,
    )
    return model, guide, history


def test_interrupted_training_resumes_exactly(tmp_path):
    straight_model, _, straight = _train(tmp_path / "straight", 2, resume=False)
    _train(tmp_path / "interrupted", 1, resume=False)
    resumed_model, _, resumed = _train(tmp_path / "interrupted", 2, resume=True)
    assert [r["loss"] for r in resumed] == [r["loss"] for r in straight]
    for p, q in zip(straight_model.parameters(), resumed_model.parameters()):
        assert torch.equal(p, q)
    assert (tmp_path / "interrupted" / "config.json").exists()
    assert (tmp_path / "interrupted" / "metrics.json").exists()


def test_wrong_or_corrupt_checkpoint_gives_clear_error(tmp_path):
    _train(tmp_path, 1, resume=False)
    other_model, other_guide = build(EnergyBasedPrior(2, EBMPriorConfig(hidden=32, depth=2)))  # different width
    with pytest.raises(CheckpointError, match="does not match the model"):
        load_checkpoint(tmp_path, {"model": other_model, "guide": other_guide})
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        load_checkpoint(tmp_path / "bad.pt", {"model": other_model, "guide": other_guide})
    with pytest.raises(CheckpointError, match="no checkpoint"):
        load_checkpoint(tmp_path / "missing", {"model": other_model})


def test_warmup_trains_with_the_base_prior_then_switches_the_tilt_on():
    data, labels = clustered_pairs(256, seed=0)
    ebm = EBMPriorConfig(hidden=16, depth=2, estimator="ml", langevin=LangevinConfig(steps=2))
    model, guide = build(EnergyBasedPrior(2, ebm))
    initial = [p.clone() for p in model.prior.energy.parameters()]
    history = fit(model, guide, batches(data, labels), TrainConfig(epochs=1, prior_warmup_epochs=1), progress=False)
    assert "energy_gap" not in history[0]  # no negatives were drawn during the warm-up
    assert all(torch.equal(p, q) for p, q in zip(initial, model.prior.energy.parameters()))
    assert model.prior.tilted  # generation after training uses the EBM
    history = fit(model, guide, batches(data, labels), TrainConfig(epochs=2, prior_warmup_epochs=1), progress=False)
    assert "energy_gap" not in history[0] and "energy_gap" in history[1]
    assert {"f_positive", "f_negative"} <= set(history[1])
    assert not all(torch.equal(p, q) for p, q in zip(initial, model.prior.energy.parameters()))


def test_generation_runs_its_own_langevin_steps_and_step_size(monkeypatch):
    from pyro_mmebm.ebm import tilted_laplace

    config = EBMPriorConfig(
        hidden=16, depth=2, estimator="ml", generation_steps=11, generation_step_size=0.05, langevin=LangevinConfig(3)
    )
    prior = EnergyBasedPrior(2, config)
    samplers = []
    real = tilted_laplace.langevin_run
    monkeypatch.setattr(
        tilted_laplace, "langevin_run",
        lambda f, init, langevin, **options: samplers.append(langevin) or real(f, init, langevin, **options),
    )
    prior().sample((5,))
    prior().log_prob(torch.zeros(4, 2, requires_grad=True))
    # generation, then the training negatives (the default step size 0.3)
    assert samplers == [LangevinConfig(11, 0.05), LangevinConfig(3, 0.3)]


def _warm_up_then_ebm(tmp_path, name, epochs, start_from=None, laplace=False):
    data, labels = clustered_pairs(256, seed=0)
    torch.manual_seed(0)
    decoders = {k: MLPDecoder(2, (8,), hidden=(64,), output="identity") for k in "ab"}
    encoders = {k: MLPEncoder((8,), 2, hidden=(64,)) for k in "ab"}
    torch.manual_seed(1)  # the prior's own weights, the same whatever came before
    prior = LaplacePrior(2) if laplace else EnergyBasedPrior(2, SMALL_EBM)
    model = MultimodalVAE(decoders, {k: Likelihood("normal", 0.1) for k in "ab"}, prior)
    guide = MixtureOfExpertsGuide(encoders, 2)
    config = TrainConfig(epochs=epochs, prior_warmup_epochs=1, seed=3)
    history = fit(model, guide, batches(data, labels), config, out_dir=tmp_path / name, start_from=start_from, progress=False)
    return model, history


def test_an_ebm_run_started_from_the_laplace_run_at_the_end_of_its_warmup_is_the_same_run(tmp_path):
    straight, straight_history = _warm_up_then_ebm(tmp_path, "ebm", 2)
    _warm_up_then_ebm(tmp_path, "laplace", 1, laplace=True)
    forked, forked_history = _warm_up_then_ebm(tmp_path, "fork", 2, start_from=tmp_path / "laplace")
    assert [r["loss"] for r in forked_history] == [r["loss"] for r in straight_history]
    for (name, p), q in zip(straight.named_parameters(), forked.parameters()):
        assert torch.equal(p, q), name


def test_starting_from_a_run_with_other_networks_is_refused(tmp_path):
    from pyro_mmebm.checkpoint import CheckpointError

    _warm_up_then_ebm(tmp_path, "laplace", 1, laplace=True)
    data, labels = clustered_pairs(64, seed=0)
    model, guide = build(EnergyBasedPrior(3, EBMPriorConfig(hidden=16, depth=2)), d=3)
    with pytest.raises(CheckpointError, match="differs from this one outside the prior"):
        fit(model, guide, batches(data, labels), TrainConfig(epochs=1), start_from=tmp_path / "laplace", progress=False)
