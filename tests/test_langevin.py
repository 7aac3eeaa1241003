"""Short-run Langevin against quadrature references, and its failure modes."""

import math

import pytest
import torch
from scipy import stats

from pyro_mmebm.distributions.families import LOCATION_SCALE_FAMILIES, score
from pyro_mmebm.ebm.energy import EnergyMLP
from pyro_mmebm.ebm.langevin import (
    LangevinConfig,
    LangevinDivergenceError,
    PersistentChains,
    langevin_run,
    langevin_sample,
)
from tests.reference import grid_1d, grid_2d, laplace_log_density, weights

NUM_CHAINS = 10000
# Langevin time K s^2 / 2 = 22.5: enough to mix both targets below (measured against quadrature).
NUM_STEPS, STEP_SIZE = 2000, 0.15


def bimodal_1d(z):
    # Modes near -1.4 and +1.7 with a barrier at 0: clearly bimodal (77% of the mass right of 0).
    x = z[..., 0]
    return 1.5 * x**2 - 0.25 * x**4 + 0.5 * x + laplace_log_density(z)


def bimodal_2d(z):
    x, y = z[..., 0], z[..., 1]
    return 1.5 * x**2 - 0.25 * x**4 + 0.5 * x * y - 0.3 * y**2 + laplace_log_density(z)


def _quadrature_moments(log_density, points):
    w = weights(log_density, points)
    mean = (w[:, None] * points).sum(0)
    centred = points - mean
    cov = (w[:, None, None] * centred[:, :, None] * centred[:, None, :]).sum(0)
    return w, mean, cov


def test_1d_bimodal_matches_quadrature_moments_and_cdf():
    torch.manual_seed(0)
    init = torch.distributions.Laplace(0.0, 1.0).sample((NUM_CHAINS, 1))
    samples = langevin_sample(bimodal_1d, init, LangevinConfig(NUM_STEPS, STEP_SIZE)).double()
    z, _ = grid_1d()
    w, mean, cov = _quadrature_moments(bimodal_1d, z[:, None])
    sd = cov[0, 0].sqrt()
    # Independent chains: the sample mean has standard error sd/sqrt(N) (~0.012); 5 SE leaves room
    # for the O(s^2) discretisation bias of unadjusted Langevin at s = 0.15 (measured: under 1 SE).
    assert abs(samples.mean() - mean[0]) < 5 * sd / math.sqrt(NUM_CHAINS)
    # The variance estimate has SE ~ sd^2 sqrt(2/N) (the target is not far from Gaussian per mode).
    assert abs(samples.var() - cov[0, 0]) < 5 * cov[0, 0] * math.sqrt(2 / NUM_CHAINS) + 0.02
    # Bimodality: the quadrature mass right of the barrier at 0 is reproduced.
    right = w[z > 0].sum()
    assert abs((samples > 0).double().mean() - right) < 5 * math.sqrt(right * (1 - right) / NUM_CHAINS)
    # Kolmogorov–Smirnov distance to the quadrature CDF, against the 0.1% critical value 1.95/sqrt(N).
    cdf = torch.cumsum(w, 0).numpy()
    ks = stats.kstest(samples.squeeze(-1).numpy(), lambda x: cdf[z.numpy().searchsorted(x).clip(max=len(cdf) - 1)])
    assert ks.statistic < 1.95 / math.sqrt(NUM_CHAINS)


def test_2d_bimodal_matches_quadrature_moments_and_marginals():
    torch.manual_seed(1)
    init = torch.distributions.Laplace(0.0, 1.0).sample((NUM_CHAINS, 2))
    samples = langevin_sample(bimodal_2d, init, LangevinConfig(NUM_STEPS, STEP_SIZE)).double()
    n = 721
    points, _ = grid_2d(-9, 9, n)
    w, mean, cov = _quadrature_moments(bimodal_2d, points)
    axis = points[::n, 0]
    half_cell = 0.5 * float(axis[1] - axis[0])
    se = cov.diagonal().sqrt() / math.sqrt(NUM_CHAINS)
    assert torch.all((samples.mean(0) - mean).abs() < 5 * se)
    sample_cov = torch.cov(samples.T)
    assert torch.allclose(sample_cov, cov, atol=0.05, rtol=0.03)
    # Marginal CDFs (KS) per dimension; a grid point's mass covers its cell, so the quadrature CDF
    # is exact at cell edges.
    for dim in range(2):
        cdf = torch.cumsum(w.reshape(n, n).sum(1 - dim), 0)
        edges = axis + half_cell
        emp = torch.searchsorted(samples[:, dim].sort().values, edges, right=True).double() / NUM_CHAINS
        assert (emp - cdf).abs().max() < 1.95 / math.sqrt(NUM_CHAINS)


def test_too_large_step_raises_clear_error_naming_step_size():
    # Normal base times exp(-2 z^2): the drift contracts by (1 - 5 s^2 / 2) per step, |.| = 9 at s = 2,
    # so the chain overflows float32 within ~40 steps.
    def log_density(z):
        return (-2.0 * z**2 - 0.5 * z**2).sum(-1)

    with pytest.raises(LangevinDivergenceError, match="step size 2.0"):
        langevin_sample(log_density, torch.randn(100, 2), LangevinConfig(steps=200, step_size=2.0))


def test_invalid_settings_raise():
    with pytest.raises(ValueError, match="langevin_step_size .* must be a positive number"):
        LangevinConfig(steps=10, step_size=-0.1)
    with pytest.raises(ValueError, match="langevin_steps .* must be at least 0"):
        LangevinConfig(steps=-1)
    with pytest.raises(ValueError, match="one value per state"):
        langevin_sample(lambda z: -z.pow(2), torch.zeros(3, 2), LangevinConfig(10, 0.1))


def test_runs_under_no_grad_without_building_a_graph_through_the_chain():
    energy = EnergyMLP(3, 16, 3)

    def log_density(z):
        return energy(z) + laplace_log_density(z)

    init = torch.randn(8, 3)
    with torch.no_grad():
        samples = langevin_sample(log_density, init, LangevinConfig(5, 0.1))
    assert samples.shape == init.shape and not samples.requires_grad
    samples = langevin_sample(log_density, init, LangevinConfig(5, 0.1))
    assert samples.grad_fn is None and not samples.requires_grad
    assert all(p.grad is None for p in energy.parameters())


def test_record_returns_states_and_statistics():
    run = langevin_run(lambda z: -0.5 * z.pow(2).sum(-1), torch.zeros(4, 5, 3), LangevinConfig(7, 0.2), record=True)
    assert run.states.shape == (8, 4, 5, 3)
    assert run.log_density.shape == (8, 4, 5) and run.grad_norm.shape == (8, 4, 5)
    assert torch.equal(run.states[0], torch.zeros(4, 5, 3)) and torch.equal(run.states[-1], run.samples)
    assert torch.allclose(run.log_density[-1], -0.5 * run.samples.pow(2).sum(-1))
    assert torch.allclose(run.grad_norm[-1], run.samples.norm(dim=-1))


def test_persistent_chains_resume_and_reinitialise():
    chains = PersistentChains(reinit_prob=0.0)
    fresh = torch.zeros(5, 2)
    assert chains.initial_states(fresh) is fresh
    chains.update(torch.ones(5, 2))
    assert torch.equal(chains.initial_states(fresh), torch.ones(5, 2))
    assert torch.equal(chains.initial_states(torch.zeros(6, 2)), torch.zeros(6, 2))  # size changed
    chains.reinit_prob = 1.0
    assert torch.equal(chains.initial_states(fresh), fresh)


@pytest.mark.parametrize("metropolis", [False, True])
@pytest.mark.parametrize("family", ["laplace", "normal"])
def test_a_closed_form_base_score_gives_the_autograd_chain(family, metropolis):
    """``base_score`` (the base's gradient in closed form, with its log density for the adjusted chain)
    moves the chains exactly as differentiating ``f + log p0`` does, with the same noise."""
    torch.manual_seed(0)
    energy = EnergyMLP(3, 16, 3)
    loc, scale = torch.tensor([0.5, -1.0, 0.0]), torch.tensor([1.0, 2.0, 0.5])
    base = LOCATION_SCALE_FAMILIES[family](loc, scale)
    init = base.sample((64,))
    config = LangevinConfig(20, 0.3, metropolis=metropolis)
    autograd = langevin_sample(
        lambda z: energy(z) + base.log_prob(z).sum(-1), init, config, generator=torch.Generator().manual_seed(1)
    )
    closed = langevin_sample(
        energy,
        init,
        config,
        generator=torch.Generator().manual_seed(1),
        base_score=score(family, loc, scale),
        base_log_prob=lambda z: base.log_prob(z).sum(-1),
    )
    torch.testing.assert_close(closed, autograd, rtol=1e-5, atol=1e-5)


def standard_normal(z):
    return -0.5 * z.square().sum(-1)


@pytest.mark.parametrize("metropolis, variance", [(True, 1.0), (False, 4 / 3)])
def test_a_large_step_biases_the_unadjusted_chain_and_not_the_adjusted_one(metropolis, variance):
    """On ``N(0, 1)`` at ``s = 1`` the unadjusted chain's stationary variance is ``1 / (1 − s²/4) = 4/3``
    (its step is the AR(1) map ``z ↦ (1 − s²/2) z + s ε``); the Metropolis-adjusted chain's is 1.

    The chains start far off (``N(3, 0.5²)``) and contract by at least half per accepted step, so 100
    steps forget the start. Tolerances: 5 standard errors of independent chains' mean
    (``σ / √N``) and variance (``σ² √(2/N)``, the target being Normal); the two variances differ by 33 SE.
    """
    chains = 20_000
    init = 3.0 + 0.5 * torch.randn(chains, 1, generator=torch.Generator().manual_seed(0))
    run = langevin_run(
        standard_normal, init, LangevinConfig(100, 1.0, metropolis=metropolis), generator=torch.Generator().manual_seed(1)
    )
    samples = run.samples.double()
    assert abs(samples.mean()) < 5 * math.sqrt(variance / chains)
    assert abs(samples.var() - variance) < 5 * variance * math.sqrt(2 / chains)
    if metropolis:
        assert run.acceptance.shape == (chains,) and 0.5 < run.acceptance.mean() < 1.0
    else:
        assert run.acceptance is None


def bounded_tilt_bimodal_1d(z):
    # A Laplace base tilted by bumps of bounded slope, as an energy MLP tilts it: modes near ±1.5
    # (68% of the mass right of 0). (On ``bimodal_1d``'s quartic tails the adjusted chain is not
    # ergodic [Roberts, Tweedie 1996]: chains started far out reject every proposal.)
    x = z[..., 0]
    return 4 * torch.exp(-((x - 1.5) ** 2)) + 3 * torch.exp(-((x + 1.5) ** 2)) + laplace_log_density(z)


def test_the_adjusted_chain_matches_a_bimodal_target_at_a_step_that_biases_the_unadjusted_one():
    """MALA at ``s = 0.6``: moments, mass right of the barrier and the CDF against quadrature, with the
    tolerances of the unadjusted test at ``s = 0.15`` above (measured: all within 2 SE). At this step
    the unadjusted chain's mass right of the barrier is 14 standard errors off (checked at 5 here,
    so the test can tell the two samplers apart)."""
    z, _ = grid_1d()
    w, mean, cov = _quadrature_moments(bounded_tilt_bimodal_1d, z[:, None])
    right = w[z > 0].sum()
    mass_se = math.sqrt(right * (1 - right) / NUM_CHAINS)
    torch.manual_seed(0)
    init = torch.distributions.Laplace(0.0, 1.0).sample((NUM_CHAINS, 1))
    unadjusted = langevin_sample(
        bounded_tilt_bimodal_1d, init, LangevinConfig(400, 0.6), generator=torch.Generator().manual_seed(1)
    )
    assert abs((unadjusted > 0).double().mean() - right) > 5 * mass_se
    run = langevin_run(
        bounded_tilt_bimodal_1d, init, LangevinConfig(400, 0.6, metropolis=True), generator=torch.Generator().manual_seed(1)
    )
    samples = run.samples.double()
    sd = cov[0, 0].sqrt()
    assert abs(samples.mean() - mean[0]) < 5 * sd / math.sqrt(NUM_CHAINS)
    assert abs(samples.var() - cov[0, 0]) < 5 * cov[0, 0] * math.sqrt(2 / NUM_CHAINS) + 0.02
    assert abs((samples > 0).double().mean() - right) < 5 * mass_se
    cdf = torch.cumsum(w, 0).numpy()
    ks = stats.kstest(samples.squeeze(-1).numpy(), lambda x: cdf[z.numpy().searchsorted(x).clip(max=len(cdf) - 1)])
    assert ks.statistic < 1.95 / math.sqrt(NUM_CHAINS)
    assert (run.acceptance > 0).all()


def test_the_adjusted_chain_rejects_diverging_proposals_instead_of_failing():
    """The target that makes the unadjusted chain overflow at ``s = 2`` (test above): the adjusted one
    rejects those proposals, stays finite, and says so by its acceptance rate."""

    def log_density(z):
        return (-2.0 * z**2 - 0.5 * z**2).sum(-1)

    run = langevin_run(log_density, torch.randn(100, 2), LangevinConfig(steps=200, step_size=2.0, metropolis=True))
    assert torch.isfinite(run.samples).all()
    assert run.acceptance.mean() < 0.05


def test_the_adjusted_chain_records_its_states_and_needs_the_base_s_log_density_with_its_score():
    config = LangevinConfig(7, 0.2, metropolis=True)
    run = langevin_run(standard_normal, torch.zeros(4, 5, 3), config, record=True)
    assert run.states.shape == (8, 4, 5, 3) and run.acceptance.shape == (4, 5)
    assert torch.equal(run.states[0], torch.zeros(4, 5, 3)) and torch.equal(run.states[-1], run.samples)
    assert torch.allclose(run.log_density, standard_normal(run.states))
    assert torch.allclose(run.grad_norm, run.states.norm(dim=-1))
    with pytest.raises(ValueError, match="needs both base_score .* and base_log_prob"):
        langevin_run(standard_normal, torch.zeros(4, 3), config, base_score=lambda z: -z)
    assert langevin_run(standard_normal, torch.zeros(4, 3), LangevinConfig(7, 0.2), base_score=lambda z: -z).acceptance is None
