"""Test log-likelihoods by importance sampling with the guide, against exact values, for either prior."""

import math

import pytest
import torch

from torch import nn

from guides import MixtureOfExpertsGuide, PrivateLatentGuide, ProductOfExpertsGuide
from models import MultimodalVAE, PrivateLatentVAE
from pyro_mmebm import EBMPriorConfig, EnergyBasedPrior, LaplacePrior, Likelihood, NormalPrior
from pyro_mmebm.ebm import annealed_importance_sampling
from pyro_mmebm.evaluation import evaluate_log_likelihood, importance_log_weights, log_likelihood
from pyro_mmebm.networks import MLPDecoder
from tests.test_diagnostics import (
    LATENT_DIM,
    NOISE,
    POST_GAIN,
    POST_PRECISION,
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
    ebm = EnergyBasedPrior(LATENT_DIM, EBMPriorConfig(hidden=4, depth=2, ceiling_margin=math.inf))  # f exactly 1.5
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


def test_log_likelihood_with_the_exact_product_of_experts_posterior_is_exact():
    # As a function of z, each modality's likelihood is N(z; x, NOISE²): experts N(x, NOISE²) times the
    # prior expert N(0, 1) are the exact posterior, so every weight is p(X).
    experts = {name: AffineEncoder(1.0, NOISE) for name in ("a", "b")}
    guide = ProductOfExpertsGuide(experts, LATENT_DIM)
    batch = gaussian_batch()
    assert guide.posterior(batch).mean.allclose(POST_GAIN * batch["a"])
    assert guide.posterior(batch).stddev.allclose(torch.full_like(batch["a"], POST_PRECISION**-0.5))
    estimate = log_likelihood(gaussian_model(), guide, batch, 5)
    torch.testing.assert_close(estimate, exact_gaussian_log_likelihood(batch["a"]), atol=1e-4, rtol=0)
    assert importance_log_weights(gaussian_model(), guide, batch, 5).shape == (5, 3)


class WithPriorPrivateLatents(nn.Module):
    """An expert of ``z`` that also gives ``q(w | x) = Laplace(0, 1)``, the private latents' prior."""

    def __init__(self, shared: nn.Module, private_dim: int) -> None:
        super().__init__()
        self.shared, self.private_dim = shared, private_dim

    def forward(self, x):
        loc, scale = self.shared(x)
        return (torch.cat([loc, loc.new_zeros(len(x), self.private_dim)], -1),
                torch.cat([scale, scale.new_ones(len(x), self.private_dim)], -1))


def ignoring_private_latents(private_dim):
    decoder = MLPDecoder(LATENT_DIM + private_dim, (LATENT_DIM,), hidden=(), output="identity")
    with torch.no_grad():
        decoder.net[1].weight.copy_(torch.cat([torch.eye(LATENT_DIM), torch.zeros(LATENT_DIM, private_dim)], 1))
        decoder.net[1].bias.zero_()
    return decoder


def test_private_latents_drawn_from_their_prior_and_ignored_leave_the_weights_unchanged():
    # p(w) / q(w | x) = 1 for every draw of w, and the decoders ignore w: the weights of z are those of
    # the same model without private latents, draw for draw.
    likelihoods = {"a": Likelihood("normal", NOISE), "b": Likelihood("normal", NOISE)}
    plain_experts = {"a": AffineEncoder(POST_GAIN, 0.4), "b": AffineEncoder(POST_GAIN, 0.4, 0.3)}
    plain = MultimodalVAE({"a": identity_decoder(), "b": identity_decoder()}, likelihoods, NormalPrior(LATENT_DIM))
    private = PrivateLatentVAE(
        {name: ignoring_private_latents(2) for name in ("a", "b")}, likelihoods, NormalPrior(LATENT_DIM), 2
    )
    private_guide = PrivateLatentGuide(
        {name: WithPriorPrivateLatents(expert, 2) for name, expert in plain_experts.items()}, LATENT_DIM, 2
    )
    batch = gaussian_batch()
    torch.manual_seed(2)
    expected = importance_log_weights(plain, MixtureOfExpertsGuide(plain_experts, LATENT_DIM), batch, 4)
    torch.manual_seed(2)
    torch.testing.assert_close(importance_log_weights(private, private_guide, batch, 4), expected)

