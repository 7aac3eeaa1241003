"""log Z of the EBM prior by annealed importance sampling, against exact values.

Tolerance for AIS: the estimate must lie within 4 of its own (delta-method) standard errors of the
exact log Z, and that standard error must itself be small, so the check has teeth. For a correct
sampler |error| / se is about standard normal (the Jensen bias, about se²/2, is negligible at these
sizes), so 4 se fails a correct sampler with probability ~6e-5; the seeds are fixed anyway.
"""

import pytest
import torch

from pyro_mmebm.ebm import EnergyMLP, TiltedLaplace, annealed_importance_sampling, sigmoid_schedule
from tests.reference import grid_2d, laplace_log_density, log_normaliser

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
