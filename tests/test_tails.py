"""The excess slope of ``f_α`` over the base's decay (:func:`~pyro_mmebm.ebm.tail_growth`), against
exact values.

References: for a linear tilt ``f(z) = a·z`` of ``Laplace(μ, b)`` the excess slope over unit
directions is ``max_v Σ_j c_j |v_j|`` with ``c_j = |a_j| − 1/b_j``: ``sqrt(Σ_{c_j > 0} c_j²)`` when some
``c_j > 0`` (Cauchy–Schwarz), else ``max_j c_j`` (all weight on one axis); ``exp(a·z) p0`` is
normalisable exactly when every ``|a_j| < 1/b_j``. A bounded ``f`` has slope 0, so the excess is
``−min_j 1/b_j`` (up to ``5 / 1e4`` at the radius of 1e4 for ``|f| ≤ 5``). For an MLP in two
dimensions, the reference is the maximum of the same slope over a grid of 100,000 angles (spacing 6.3e-5 rad; the excess of these networks changes by at most 4.7 per
radian, so the grid's own error is below 1.5e-4).

Tolerance: 2e-3 absolute. The slopes are computed at radius 1e4, where float32 rounding of ``f`` is
about 1e-3 absolute, i.e. 1e-7 of the slope; what remains is how close the ascent gets to a maximum
that sits on a kink of ``Σ |v_j| / b_j`` (Adam at rate 0.02 oscillates there by about 1e-3).
"""

import math

import pytest
import torch
from torch import nn

from pyro_mmebm.ebm import EnergyMLP, TiltedLaplace, tail_growth

TOLERANCE = 2e-3


def linear_excess(a: torch.Tensor, scale: torch.Tensor) -> float:
    c = a.abs() - 1 / scale
    return float(c.clamp(min=0).norm()) if (c > 0).any() else float(c.max())


@pytest.mark.parametrize(
    "a, scale",
    [
        ([0.5, -0.3, 0.7, 0.1], [1.0, 1.0, 1.0, 1.0]),  # normalisable: e = 0.7 - 1
        ([1.5, -0.3, -1.2, 0.1], [1.0, 1.0, 1.0, 1.0]),  # two directions grow: e = sqrt(0.5² + 0.2²)
        ([0.5, 0.5, 0.5, 0.5], [3.0, 1.0, 0.5, 1.0]),  # the wide axis grows: e = 0.5 - 1/3
    ],
)
def test_excess_slope_of_a_linear_tilt_is_exact(a, scale):
    a, scale = torch.tensor(a), torch.tensor(scale)
    prior = TiltedLaplace(lambda z: z @ a, torch.tensor([0.3, -1.0, 2.0, 0.0]), scale)
    result = tail_growth(prior)
    exact = linear_excess(a, scale)
    assert result.excess == pytest.approx(exact, abs=TOLERANCE)
    assert result.normalisable == bool((a.abs() < 1 / scale).all())
    assert result.direction.norm() == pytest.approx(1.0)
    assert result.random_excess <= result.excess  # the ascent keeps its starts
    assert result.slope - result.base_decay == pytest.approx(result.excess, abs=1e-5)
    assert result.slope == pytest.approx(float(result.direction @ a), abs=1e-4)


def test_a_bounded_energy_is_normalisable_by_the_widest_axis():
    scale = torch.tensor([0.5, 2.0, 1.0])
    prior = TiltedLaplace(lambda z: 5 * torch.tanh(z.sum(-1)), torch.zeros(3), scale)
    assert tail_growth(prior).excess == pytest.approx(-0.5, abs=TOLERANCE)


@pytest.mark.parametrize("activation", ["gelu", "relu", "leaky_relu"])
@pytest.mark.parametrize("output_scale, normalisable", [(4.0, True), (20.0, False)])
def test_excess_slope_of_an_mlp_in_two_dimensions_matches_a_grid_of_directions(activation, output_scale, normalisable):
    torch.manual_seed(1)
    energy = EnergyMLP(2, hidden_dim=32, depth=3, activation=activation)
    with torch.no_grad():  # a steeper last layer: the excess is positive on 18-25 % of the directions at 20
        energy.net[-1].weight.mul_(output_scale)
    loc, scale = torch.tensor([0.5, -0.5]), torch.ones(2)
    prior = TiltedLaplace(energy, loc, scale)
    angles = torch.linspace(0, 2 * math.pi, 100_001)
    grid = torch.stack([angles.cos(), angles.sin()], -1)
    with torch.no_grad():
        slopes = (energy(loc + 1e4 * grid) - energy(loc)) / 1e4
    reference = float((slopes - grid.abs().sum(-1)).max())
    result = tail_growth(prior)
    assert result.excess == pytest.approx(reference, abs=TOLERANCE)
    assert result.normalisable == normalisable == (reference < 0)


def test_a_normal_base_outfalls_any_linear_growth():
    prior = TiltedLaplace(lambda z: 100 * z.sum(-1), torch.zeros(2), torch.ones(2), base="normal")
    result = tail_growth(prior)
    assert result.excess == -math.inf and result.normalisable and result.direction is None


def test_the_search_leaves_the_energy_and_the_random_streams_as_they_were():
    torch.manual_seed(0)
    energy = EnergyMLP(3, hidden_dim=8, depth=2, spectral_norm=True)
    energy.train()
    before = {name: b.clone() for name, b in energy.named_buffers()}
    state = torch.get_rng_state()
    tail_growth(TiltedLaplace(energy, torch.zeros(3), torch.ones(3)), directions=64, refined=4, ascent_steps=10)
    assert torch.equal(torch.get_rng_state(), state)
    assert all(m.training for m in energy.modules())
    assert all(p.grad is None for p in energy.parameters())
    assert all(torch.equal(b, before[name]) for name, b in energy.named_buffers())  # no power iteration


def test_bad_arguments_are_refused_by_name():
    batched = TiltedLaplace(lambda z: z.sum(-1), torch.zeros(2, 3), torch.ones(2, 3))
    with pytest.raises(ValueError, match=r"one prior; this one has batch shape \(2,\)"):
        tail_growth(batched)
    prior = TiltedLaplace(lambda z: z.sum(-1), torch.zeros(3), torch.ones(3))
    with pytest.raises(ValueError, match="need directions >= refined >= 1"):
        tail_growth(prior, directions=4, refined=8)


def test_the_result_goes_to_json():
    prior = TiltedLaplace(lambda z: 2 * z[..., 0], torch.zeros(2), torch.ones(2))
    assert tail_growth(prior).to_dict() == {
        "excess_slope": pytest.approx(1.0, abs=TOLERANCE),
        "f_slope": pytest.approx(2.0, abs=TOLERANCE),
        "base_decay": pytest.approx(1.0, abs=TOLERANCE),
        "random_excess": pytest.approx(1.0, abs=0.05),  # 4,096 directions in two dimensions come close
        "normalisable": False,
    }


def test_every_module_is_left_in_its_mode():
    energy = nn.Sequential(nn.Linear(2, 4), nn.Dropout(0.5), nn.Linear(4, 1), nn.Flatten(0))
    energy.eval()
    tail_growth(TiltedLaplace(energy, torch.zeros(2), torch.ones(2)), directions=16, refined=2, ascent_steps=2)
    assert not any(m.training for m in energy.modules())
