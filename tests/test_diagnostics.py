"""Prior and posterior diagnostics: InferenceData layout, mixing flags, reference samplers, figures."""

import dataclasses
import math

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from torch import nn

from guides import GUIDES, MixtureOfExpertsGuide, PrivateLatentGuide
from models import MultimodalVAE, PrivateLatentVAE
from pyro_mmebm import (
    EBMPriorConfig,
    EnergyBasedPrior,
    LangevinConfig,
    Likelihood,
    NormalPrior,
    TiltedLaplace,
    langevin_run,
)
from pyro_mmebm.contracts import ExpertGuide
from pyro_mmebm.diagnostics import (
    compare_marginals,
    expert_agreement,
    expert_spread,
    langevin_inference_data,
    langevin_sweep,
    mixing_summary,
    nuts_reference,
    pairwise_kl,
    pairwise_wasserstein,
    plot_energy_histograms,
    plot_transitions,
    pooled_draws,
    posterior_inference_data,
    prior_chains,
    psis_khat,
)
from pyro_mmebm.ebm import annealed_importance_sampling
from pyro_mmebm.evaluation import evaluate_log_likelihood
from pyro_mmebm.networks import MLPDecoder, MLPEncoder

LATENT_DIM = 4


def standard_normal(z):
    return -0.5 * z.pow(2).sum(-1)


def two_modes(z):
    # Equal mixture of N(±3·1, 0.5² I): a barrier of about 36 nats between the modes in 2-D.
    centre = torch.full_like(z, 3.0)
    return torch.logaddexp(-2 * (z - centre).pow(2).sum(-1), -2 * (z + centre).pow(2).sum(-1))


def linear_tilt(a):
    """Laplace(0, 1) tilted by f(z) = a·z, and the same distribution as an AsymmetricLaplace."""
    prior = TiltedLaplace(lambda z: z @ a, torch.zeros(len(a)), torch.ones(len(a)))
    # Right scale 1/(1 − a), left scale 1/(1 + a): so scale = (1 − a²)^(−1/2) and
    # asymmetry = √((1 − a)/(1 + a)).
    exact = dist.AsymmetricLaplace(torch.zeros(len(a)), (1 - a**2).rsqrt(), ((1 - a) / (1 + a)).sqrt())
    return prior, exact


# ------------------------------------------------------------------------------------------------
# Prior: Langevin chains as InferenceData


def test_langevin_inference_data_groups_dims_and_shapes():
    run = langevin_run(standard_normal, torch.randn(3, 2), LangevinConfig(steps=30, step_size=0.5), record=True)
    idata = langevin_inference_data(run, warmup=10, thin=3, save_warmup=True)
    assert set(idata.groups()) == {"posterior", "sample_stats", "warmup_posterior", "warmup_sample_stats"}
    z = idata.posterior["z"]
    assert z.dims == ("chain", "draw", "z_dim") and z.shape == (3, 7, 2)
    np.testing.assert_array_equal(idata.posterior["draw"], np.arange(10, 31, 3))  # draw = Langevin step
    np.testing.assert_allclose(z.values, run.states[10::3].transpose(0, 1).numpy())
    assert set(idata.sample_stats.data_vars) == {"lp", "grad_norm", "step_size"}  # no "energy": HMC's name
    for name in ("lp", "grad_norm", "step_size"):
        assert idata.sample_stats[name].dims == ("chain", "draw") and idata.sample_stats[name].shape == (3, 7)
    np.testing.assert_allclose(idata.sample_stats["lp"].values, run.log_density[10::3].T.numpy())
    assert (idata.sample_stats["step_size"] == 0.5).all()
    assert idata.warmup_posterior["z"].shape == (3, 4, 2)  # steps 0, 3, 6, 9
    assert "warmup_posterior" not in langevin_inference_data(run, warmup=10).groups()
    with pytest.raises(ValueError, match="record=True"):
        langevin_inference_data(langevin_run(standard_normal, torch.randn(3, 2), LangevinConfig(5, 0.5)))
    with pytest.raises(ValueError, match="warmup"):
        langevin_inference_data(run, warmup=31)


def test_prior_chains_start_from_the_base_and_use_the_priors_generation_sampler():
    settings = EBMPriorConfig(hidden=8, depth=2, generation_steps=7, generation_step_size=0.2)
    prior = EnergyBasedPrior(LATENT_DIM, settings)()
    run = prior_chains(prior, num_chains=5)
    assert run.states.shape == (8, 5, LATENT_DIM) and run.step_size == 0.2
    unbounded = dataclasses.replace(settings, generation_steps=None, generation_step_size=None, ceiling_margin=math.inf)
    untuned = prior_chains(EnergyBasedPrior(LATENT_DIM, unbounded)(), num_chains=2)
    assert untuned.states.shape[0] == LangevinConfig().steps + 1  # unbounded: the training sampler
    idata = langevin_inference_data(run)
    assert idata.posterior["z"].shape == (5, 8, LATENT_DIM)


def test_rhat_near_one_for_a_well_mixing_target():
    # Unadjusted Langevin on N(0, I) with s = 1 is an AR(1) chain with coefficient 1 − s²/2 = 0.5:
    # about 900/3 = 300 effective draws per chain after warm-up, so R-hat is 1 to within ~0.005.
    init = 3 * torch.randn(4, 2)  # over-dispersed starts
    run = langevin_run(standard_normal, init, LangevinConfig(steps=1000, step_size=1.0), record=True)
    table = mixing_summary(langevin_inference_data(run, warmup=100))
    assert list(table.index) == ["z[0]", "z[1]"]
    assert (table["r_hat"] < 1.01).all() and (table["mixing"] == "ok").all()
    assert (table["ess_bulk"] > 400).all()


def test_rhat_flags_chains_stuck_in_different_modes():
    # Two chains in each mode with s = 0.05: the barrier is never crossed, so the between-chain
    # variance (modes 6√2 apart) dwarfs the within-chain variance (0.5² per coordinate).
    init = torch.tensor([[3.0, 3.0], [3.0, 3.0], [-3.0, -3.0], [-3.0, -3.0]])
    run = langevin_run(two_modes, init, LangevinConfig(steps=400, step_size=0.05), record=True)
    table = mixing_summary(langevin_inference_data(run, warmup=100))
    assert (table["r_hat"] > 1.5).all() and (table["mixing"] == "poor").all()


# ------------------------------------------------------------------------------------------------
# Prior: NUTS reference and the short-run sweep


def test_nuts_reference_matches_the_exact_tilted_laplace():
    prior, exact = linear_tilt(torch.tensor([0.6, -0.4]))
    idata = nuts_reference(prior, 150, num_chains=2, warmup_steps=100, max_tree_depth=5)
    assert idata.posterior["z"].shape == (2, 150, 2)
    assert set(idata.sample_stats.data_vars) == {"lp", "diverging"}
    reference = exact.sample((5000,))
    table = compare_marginals(pooled_draws(idata), reference)
    assert list(table.columns) == ["ks", "ks_pvalue", "energy_distance"] and len(table) == 2
    # 0.1% critical value of the two-sample KS statistic, with the NUTS draws counted by their ESS.
    ess = mixing_summary(idata)["ess_bulk"].to_numpy()
    assert (table["ks"].to_numpy() < 1.95 * np.sqrt(1 / ess + 1 / len(reference))).all()


def test_langevin_sweep_reports_agreement_and_divergence():
    prior, exact = linear_tilt(torch.tensor([0.6, -0.4]))
    reference = exact.sample((4000,))
    table = langevin_sweep(prior, reference, num_steps=[0, 300], step_sizes=[0.5], num_samples=2000)
    assert list(table.index) == [(0, 0.5), (300, 0.5)] and not table["diverged"].any()
    # K = 0 is p0 itself, far from the tilt (the means differ by 1.9 in z_0); after Langevin time
    # K s²/2 = 37.5 the KS distance is down to the two-sample noise (99.9%: 1.95 √(1/2000 + 1/4000)).
    assert table.loc[(0, 0.5), "ks_mean"] > 0.2
    assert table.loc[(300, 0.5), "ks_max"] < 1.95 * math.sqrt(1 / 2000 + 1 / 4000)
    stiff = TiltedLaplace(lambda z: -50 * z.pow(2).sum(-1), torch.zeros(2), torch.ones(2))
    diverged = langevin_sweep(stiff, reference, num_steps=[100], step_sizes=[1.0], num_samples=10)
    assert diverged["diverged"].all() and diverged["ks_mean"].isna().all()


# ------------------------------------------------------------------------------------------------
# Figures


def tiny_model(prior):
    decoders = {
        "image": MLPDecoder(LATENT_DIM, (1, 4, 4), hidden=(8,)),
        "text": MLPDecoder(LATENT_DIM, (3, 5), hidden=(8,), output="identity"),
        "vector": MLPDecoder(LATENT_DIM, (6,), hidden=(8,), output="identity"),
    }
    likelihoods = {
        "image": Likelihood("bernoulli"), "text": Likelihood("categorical"), "vector": Likelihood("normal")
    }
    return MultimodalVAE(decoders, likelihoods, prior)


def test_transition_figure_decodes_every_modality(tmp_path):
    prior = EnergyBasedPrior(LATENT_DIM, EBMPriorConfig(hidden=8, depth=2, generation_steps=10))
    model = tiny_model(prior)
    run = prior_chains(prior(), num_chains=3)
    sentences = []

    def decode_text(tokens):
        sentences.append(tokens)
        return " ".join("abcde"[int(t)] for t in tokens)

    path = tmp_path / "transitions.png"
    figure = plot_transitions(model, run.states, [0, 5, 10], decode_text=decode_text, path=path)
    assert path.stat().st_size > 0
    assert len(figure.axes) == 3 * 3 * 3  # modalities x chains x steps
    assert len(sentences) == 9 and all(t.shape == (3,) for t in sentences)
    with pytest.raises(ValueError, match="steps"):
        plot_transitions(model, run.states, [0, 11])


def test_energy_histograms_figure(tmp_path):
    prior = EnergyBasedPrior(LATENT_DIM, EBMPriorConfig(hidden=8, depth=2))
    path = tmp_path / "energy.png"
    figure = plot_energy_histograms(
        prior.energy,
        {"prior": torch.randn(100, LATENT_DIM), "posterior": torch.randn(2, 50, LATENT_DIM)},
        path=path,
    )
    assert path.stat().st_size > 0
    assert [t.get_text().split(" (")[0] for t in figure.axes[0].get_legend().get_texts()] == ["prior", "posterior"]


# ------------------------------------------------------------------------------------------------
# Posterior: a linear-Gaussian model whose posterior is known


class AffineEncoder(nn.Module):
    """``x ↦ (gain · x + shift, scale)``: an expert of fixed form."""

    def __init__(self, gain: float, scale: float, shift: float = 0.0) -> None:
        super().__init__()
        self.gain, self.scale, self.shift = gain, scale, shift

    def forward(self, x):
        return self.gain * x + self.shift, torch.full_like(x, self.scale)


NOISE = 0.5  # x_a = x_b = z + NOISE ε with z ~ N(0, I): posterior precision 1 + 2/NOISE² = 9
POST_PRECISION = 1 + 2 / NOISE**2
POST_GAIN = (2 / NOISE**2) / POST_PRECISION


def identity_decoder():
    decoder = MLPDecoder(LATENT_DIM, (LATENT_DIM,), hidden=(), output="identity")
    with torch.no_grad():
        decoder.net[1].weight.copy_(torch.eye(LATENT_DIM))
        decoder.net[1].bias.zero_()
    return decoder


def gaussian_model():
    decoders = {"a": identity_decoder(), "b": identity_decoder()}
    likelihoods = {"a": Likelihood("normal", NOISE), "b": Likelihood("normal", NOISE)}
    return MultimodalVAE(decoders, likelihoods, NormalPrior(LATENT_DIM))


def gaussian_guide(scale_factor, shift_b=0.0):
    sd = scale_factor / math.sqrt(POST_PRECISION)
    encoders = {"a": AffineEncoder(POST_GAIN, sd), "b": AffineEncoder(POST_GAIN, sd, shift_b)}
    return MixtureOfExpertsGuide(encoders, LATENT_DIM, family="normal")


def gaussian_batch(size=3):
    x = torch.randn(size, LATENT_DIM)
    return {"a": x, "b": x.clone()}


def test_posterior_inference_data_layout_and_mixture_draws():
    guide = gaussian_guide(1.0, shift_b=2.0)
    batch = gaussian_batch()
    idata = posterior_inference_data(guide, batch, num_draws=2000, num_chains=2)
    z = idata.posterior["z"]
    assert z.dims == ("chain", "draw", "example", "z_dim") and z.shape == (2, 2000, 3, LATENT_DIM)
    mean = idata.constant_data["expert_mean"]
    assert mean.dims == ("modality", "example", "z_dim") and list(mean["modality"].values) == ["a", "b"]
    assert idata.constant_data["expert_sd"].shape == (2, 3, LATENT_DIM)
    # Draws of the uniform mixture: mean = average expert mean; sd of the mean estimate <= 1.5/√4000.
    np.testing.assert_allclose(z.mean(("chain", "draw")), mean.mean("modality"), atol=5 * 1.5 / math.sqrt(4000))
    assert mixing_summary(idata)["r_hat"].max() < 1.01  # independent draws


def test_expert_spread_and_agreement():
    guide = gaussian_guide(1.0, shift_b=0.5)
    batch = gaussian_batch()
    sd = 1 / math.sqrt(POST_PRECISION)
    spread = expert_spread(guide, batch)
    assert list(spread.index) == ["a", "b"]
    np.testing.assert_allclose(spread.to_numpy(), sd, rtol=1e-6)
    agreement = expert_agreement(guide, batch)
    assert len(agreement) == 3 and set(agreement["modality_a"]) == {"a"} and set(agreement["modality_b"]) == {"b"}
    # Equal-scale Normals shifted by 0.5 in each of 4 dimensions: KL each way is Σ Δμ² / (2 sd²).
    np.testing.assert_allclose(agreement["symmetric_kl"], LATENT_DIM * 0.25 / sd**2, rtol=1e-5)
    np.testing.assert_allclose(agreement["wasserstein"], math.sqrt(LATENT_DIM * 0.25), rtol=1e-5)
    assert (pairwise_kl(guide.experts(batch)).diagonal(dim1=0, dim2=1) == 0).all()


def test_pairwise_divergences_without_closed_form_use_monte_carlo():
    loc = torch.tensor([[0.0, 1.0], [1.0, -1.0]], dtype=torch.float64).unsqueeze(-1).expand(2, 2, 3)
    scale = torch.tensor([1.0, 1.5], dtype=torch.float64).view(2, 1, 1).expand(2, 2, 3)
    normal = dist.Normal(loc, scale).to_event(1)
    # A Normal to within 1e-6 with no closed-form KL (float64: StudentT's normaliser cancels badly in float32).
    student = dist.StudentT(torch.tensor(1e6, dtype=torch.float64), loc, scale).to_event(1)
    exact = pairwise_kl(normal)
    estimate = pairwise_kl(student, num_samples=50000)
    # Each summed log ratio has sd below 4 here, so 0.1 is over 5 Monte Carlo standard errors.
    torch.testing.assert_close(estimate, exact, atol=0.1, rtol=0)
    torch.testing.assert_close(pairwise_wasserstein(student), pairwise_wasserstein(normal), rtol=1e-5, atol=0)


def test_psis_khat_separates_wide_and_narrow_guides():
    model, batch = gaussian_model(), gaussian_batch()
    # A guide wider than the posterior has bounded weights (k̂ < 0.5); one a quarter as wide in 4
    # dimensions has heavy-tailed weights (k̂ > 0.7; about 1.1 here), as in Yao et al. (2018).
    wide = psis_khat(model, gaussian_guide(1.5), batch)
    narrow = psis_khat(model, gaussian_guide(0.25), batch)
    assert wide.shape == narrow.shape == (3,)
    assert (wide < 0.5).all() and (narrow > 0.7).all()


# ------------------------------------------------------------------------------------------------
# Every guide


PRIVATE_DIM = 2
TINY_SHAPES = {"a": (4,), "b": (3,)}


def tiny_model_and_guide(guide_name):
    """A tiny EBM-prior model with the guide ``guide_name`` (a key of ``GUIDES``, or ``"private"``)."""
    torch.manual_seed(0)
    prior = EnergyBasedPrior(LATENT_DIM, EBMPriorConfig(hidden=8, depth=2, langevin=LangevinConfig(steps=5)))
    likelihoods = {name: Likelihood("normal") for name in TINY_SHAPES}
    width = LATENT_DIM + (PRIVATE_DIM if guide_name == "private" else 0)
    decoders = {name: MLPDecoder(width, shape, hidden=(8,), output="identity") for name, shape in TINY_SHAPES.items()}
    encoders = {name: MLPEncoder(shape, width, hidden=(8,)) for name, shape in TINY_SHAPES.items()}
    if guide_name == "private":
        return (
            PrivateLatentVAE(decoders, likelihoods, prior, PRIVATE_DIM),
            PrivateLatentGuide(encoders, LATENT_DIM, PRIVATE_DIM),
        )
    return MultimodalVAE(decoders, likelihoods, prior), GUIDES[guide_name](encoders, LATENT_DIM)


@pytest.mark.parametrize("guide_name", sorted(GUIDES) + ["private"])
def test_every_guide_runs_the_diagnostics_of_examples_diagnose(guide_name):
    model, guide = tiny_model_and_guide(guide_name)
    assert isinstance(guide, ExpertGuide)
    batch = {name: torch.randn(3, *shape) for name, shape in TINY_SHAPES.items()}
    idata = posterior_inference_data(guide, batch, num_draws=40, num_chains=2)
    assert idata.posterior["z"].shape == (2, 40, 3, LATENT_DIM)
    assert list(idata.constant_data["expert_sd"]["modality"].values) == ["a", "b"]
    assert list(expert_spread(guide, batch).index) == ["a", "b"]
    agreement = expert_agreement(guide, batch, num_samples=10)
    assert len(agreement) == 3 and np.isfinite(agreement["symmetric_kl"]).all()
    khat = psis_khat(model, guide, batch, num_particles=200)
    assert khat.shape == (3,) and not np.isnan(khat).any()
    ais = annealed_importance_sampling(model.prior(), num_chains=10, num_temperatures=5)
    estimate = evaluate_log_likelihood(model, guide, [batch], 4, ais=ais)
    assert estimate.per_example.shape == (3,) and math.isfinite(estimate.mean)
    figure = plot_transitions(model, prior_chains(model.prior(), num_chains=2).states, [0, 5])
    assert len(figure.axes) == 2 * 2 * 2  # modalities x chains x steps


class PosteriorOnlyGuide(nn.Module):
    """A guide with a posterior but no per-modality experts."""

    modalities = ["a", "b"]
    num_draws = 1

    def posterior(self, batch):
        return dist.Normal(torch.zeros(3, LATENT_DIM), 1.0).to_event(1)

    def forward(self, batch, *, num_draws=None):
        with pyro.plate("draws", 1, dim=-2), pyro.plate("data", 3, dim=-1):
            return pyro.sample("z", self.posterior(batch))


def test_a_guide_without_experts_is_refused_by_the_expert_diagnostics_and_served_by_the_others():
    guide, batch = PosteriorOnlyGuide(), {name: torch.randn(3, *shape) for name, shape in TINY_SHAPES.items()}
    for diagnostic in (posterior_inference_data, expert_spread, expert_agreement):
        with pytest.raises(ValueError, match=f"{diagnostic.__name__} compares .* PosteriorOnlyGuide has no experts"):
            diagnostic(guide, batch)
    model, _ = tiny_model_and_guide("moe")
    assert psis_khat(model, guide, batch, num_particles=200).shape == (3,)

