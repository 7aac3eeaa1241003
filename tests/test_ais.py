"""log Z of the EBM prior by annealed importance sampling, and test log-likelihoods, against exact values.

Tolerance for AIS: the estimate must lie within 4 of its own (delta-method) standard errors of the
exact log Z, and that standard error must itself be small, so the check has teeth. For a correct
sampler |error| / se is about standard normal (the Jensen bias, about se²/2, is negligible at these
sizes), so 4 se fails a correct sampler with probability ~6e-5; the seeds are fixed anyway.
"""

import math

import pytest
import torch

from guides import MixtureOfExpertsGuide
from models import MultimodalVAE
from pyro_mmebm import EnergyBasedPrior, EnergyMLP, LaplacePrior, Likelihood, NormalPrior, TiltedLaplace
from pyro_mmebm.marginal_likelihood import (
    annealed_importance_sampling,
    evaluate_log_likelihood,
    importance_log_weights,
    log_likelihood,
    sigmoid_schedule,
)
from tests.reference import grid_2d, laplace_log_density, log_normaliser
from tests.test_diagnostics import (
    LATENT_DIM,
    NOISE,
    AffineEncoder,
    gaussian_batch,
    gaussian_guide,
    gaussian_model,
    identity_decoder,
)

NUM_SE = 4


def test_sigmoid_schedule_increases_from_zero_to_one():
    t = sigmoid_schedule(50)
    assert t.shape == (51,) and t[0] == 0 and t[-1] == 1 and (t.diff() > 0).all()
    # Denser at the ends than in the middle.
    assert t.diff()[0] < t.diff()[25] > t.diff()[-1]


def test_ais_log_z_of_a_linear_tilt_is_exact():
    # exp(a·z) Laplace(z; 0, 1) integrates to Π_j 1/(1 − a_j²) for |a_j| < 1 (an AsymmetricLaplace).
    a = torch.tensor([0.5, -0.3, 0.7])
    prior = TiltedLaplace(lambda z: z @ a, torch.zeros(3), torch.ones(3))
    exact = -torch.log1p(-(a**2)).sum().item()
    result = annealed_importance_sampling(prior, num_chains=2000, num_temperatures=500, step_size=1.0)
    assert result.standard_error < 0.03
    assert abs(result.log_normalizer - exact) < NUM_SE * result.standard_error
    assert 0.5 < result.acceptance_rate < 0.95
    assert result.log_weights.shape == (2000,) and result.samples.shape == (2000, 3)
    assert 1000 < result.effective_sample_size <= 2000


def test_ais_log_z_of_a_nonlinear_tilt_matches_quadrature():
    torch.manual_seed(3)
    net = EnergyMLP(2, 16, 3, "tanh").double()
    with torch.no_grad():
        for p in net.parameters():
            p.mul_(3.0)  # a tilt of a few nats: f ranges over about [−2, 2] on the grid
    points, cell = grid_2d()
    with torch.no_grad():
        # Rectangle rule on [−10, 10]², h = 0.025 (0 is a node, so the kink of p0 costs O(h²)); f is
        # bounded, so the truncated tails hold about e^(−10) of the mass: error well below 1e-3.
        exact = log_normaliser(lambda z: net(z) + laplace_log_density(z), points, cell).item()
    prior = TiltedLaplace(lambda z: net(z.double()).float(), torch.zeros(2), torch.ones(2))
    result = annealed_importance_sampling(prior, num_chains=2000, num_temperatures=300, step_size=1.0)
    assert result.standard_error < 0.01
    assert abs(result.log_normalizer - exact) < NUM_SE * result.standard_error


def test_ais_of_a_constant_tilt_has_equal_weights():
    prior = TiltedLaplace(lambda z: 0 * z.sum(-1) + 1.5, torch.zeros(2), torch.ones(2))
    result = annealed_importance_sampling(prior, num_chains=10, num_temperatures=5)
    assert result.log_normalizer == pytest.approx(1.5, abs=1e-9)
    assert result.standard_error == pytest.approx(0, abs=1e-9)


def test_ais_rejects_bad_settings():
    prior = TiltedLaplace(lambda z: z.sum(-1), torch.zeros(2), torch.ones(2))
    with pytest.raises(ValueError, match="temperatures"):
        annealed_importance_sampling(prior, temperatures=torch.tensor([0.0, 0.7, 0.5, 1.0]))
    with pytest.raises(ValueError, match="batch shape"):
        annealed_importance_sampling(prior.expand((3,)))


def exact_gaussian_log_likelihood(x):
    # x_a = x_b = x with x_m = z + NOISE ε_m, z ~ N(0, 1): per dimension,
    # (x_a, x_b) ~ N(0, [[1 + σ², 1], [1, 1 + σ²]]).
    cov = torch.tensor([[1 + NOISE**2, 1.0], [1.0, 1 + NOISE**2]])
    pairs = torch.stack([x, x], -1)
    return torch.distributions.MultivariateNormal(torch.zeros(2), cov).log_prob(pairs).sum(-1)


def test_log_likelihood_is_exact_with_the_exact_posterior_as_proposal():
    model, guide, batch = gaussian_model(), gaussian_guide(1.0), gaussian_batch()
    # Every weight equals p(X), so the estimate is exact up to rounding.
    torch.testing.assert_close(log_likelihood(model, guide, batch, 5), exact_gaussian_log_likelihood(batch["a"]),
                               atol=1e-4, rtol=0)
    assert importance_log_weights(model, guide, batch, 5).shape == (2 * 5, 3)


def test_log_likelihood_with_a_wider_proposal_converges():
    model, guide, batch = gaussian_model(), gaussian_guide(1.3), gaussian_batch()
    estimate = log_likelihood(model, guide, batch, 2000)
    # Bounded weights with relative sd about 0.5 here: the error of log p̂ is about 0.5/√4000 ≈ 0.01.
    torch.testing.assert_close(estimate, exact_gaussian_log_likelihood(batch["a"]), atol=0.05, rtol=0)


def laplace_and_constant_ebm_models():
    """Two models identical but for the prior: Laplace, and an EBM whose f ≡ 1.5 (so log Z = 1.5)."""
    ebm = EnergyBasedPrior(LATENT_DIM, hidden_dim=4, depth=2)
    with torch.no_grad():
        for p in ebm.energy.parameters():
            p.zero_()
        ebm.energy.net[-1].bias.fill_(1.5)
    decoders = {"a": identity_decoder(), "b": identity_decoder()}
    likelihoods = {"a": Likelihood("normal", NOISE), "b": Likelihood("normal", NOISE)}
    laplace = MultimodalVAE(decoders, likelihoods, LaplacePrior(LATENT_DIM))
    return laplace, MultimodalVAE(decoders, likelihoods, ebm)


def test_ebm_and_laplace_priors_on_the_same_footing():
    laplace_model, ebm_model = laplace_and_constant_ebm_models()
    guide = gaussian_guide(1.0)
    loader = [gaussian_batch(4), gaussian_batch(2)]
    ais = annealed_importance_sampling(ebm_model.prior(), num_chains=10, num_temperatures=5)
    torch.manual_seed(0)
    ebm = evaluate_log_likelihood(ebm_model, guide, loader, 10, ais=ais)
    torch.manual_seed(0)
    laplace = evaluate_log_likelihood(laplace_model, guide, loader, 10)
    assert ebm.per_example.shape == (6,) and ebm.log_normalizer == pytest.approx(1.5)
    torch.testing.assert_close(ebm.per_example, laplace.per_example)
    assert laplace.log_normalizer == laplace.log_normalizer_se == 0
    assert math.isfinite(ebm.mean) and ebm.standard_error > 0
    with pytest.raises(ValueError, match="log Z"):
        evaluate_log_likelihood(ebm_model, guide, loader, 10)
    with pytest.raises(ValueError, match="normalised"):
        evaluate_log_likelihood(laplace_model, guide, loader, 10, ais=ais)


def test_importance_log_weights_use_unscaled_likelihoods():
    decoders = {"a": identity_decoder(), "b": identity_decoder()}
    likelihoods = {"a": Likelihood("normal", NOISE), "b": Likelihood("normal", NOISE)}
    plain = MultimodalVAE(decoders, likelihoods, NormalPrior(LATENT_DIM))
    scaled = MultimodalVAE(decoders, likelihoods, NormalPrior(LATENT_DIM), likelihood_scales={"a": 3.0})
    encoders = {"a": AffineEncoder(0.5, 0.5), "b": AffineEncoder(0.5, 0.5)}
    guide = MixtureOfExpertsGuide(encoders, LATENT_DIM, "normal")
    batch = gaussian_batch()
    torch.manual_seed(1)
    expected = importance_log_weights(plain, guide, batch, 3)
    torch.manual_seed(1)
    torch.testing.assert_close(importance_log_weights(scaled, guide, batch, 3), expected)
