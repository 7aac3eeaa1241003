"""Test log-likelihoods by importance sampling with the guide, against exact values, for either prior."""

import math

import pytest
import torch

from guides import MixtureOfExpertsGuide
from models import MultimodalVAE
from pyro_mmebm import EnergyBasedPrior, LaplacePrior, Likelihood, NormalPrior
from pyro_mmebm.ebm import annealed_importance_sampling
from pyro_mmebm.evaluation import evaluate_log_likelihood, importance_log_weights, log_likelihood
from tests.test_diagnostics import (
    LATENT_DIM,
    NOISE,
    AffineEncoder,
    gaussian_batch,
    gaussian_guide,
    gaussian_model,
    identity_decoder,
)


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
    loader[1]["b"][0, 0] = float("nan")
    with pytest.raises(ValueError, match="modality 'b' contains NaN"):  # checked as it enters
        evaluate_log_likelihood(laplace_model, guide, loader, 10)


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
