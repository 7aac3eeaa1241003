"""TiltedLaplace: exact values, α-gradients against closed forms and quadrature, Pyro integration."""

import copy
import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import Predictive
from torch import nn

from pyro_mmebm import (
    EBMPriorConfig,
    EnergyBasedPrior,
    EnergyGapMonitor,
    EnergyMLP,
    LangevinConfig,
    NoiseContrastMonitor,
    TiltedLaplace,
)
from pyro_mmebm.ebm import penalty_gap
from pyro_mmebm.ebm.langevin import LangevinDivergenceError
from pyro_mmebm.ebm.noise import NCE_NOISES, BaseAndFittedGaussian
from tests.reference import grid_1d, grid_2d, laplace_log_density, log_normaliser

NUM_NEGATIVES = 8000
STEPS, STEP_SIZE = 800, 0.2  # Langevin time 16: mixed for the bounded tilts below


class LinearTilt(nn.Module):
    """f(z) = a·z, which turns a standard Laplace into a product of AsymmetricLaplace laws."""

    def __init__(self, a):
        super().__init__()
        self.a = nn.Parameter(torch.as_tensor(a, dtype=torch.float32))

    def forward(self, z):
        return (z * self.a).sum(-1)


def tilted(energy, d, steps=STEPS, **kwargs):
    return TiltedLaplace(energy, torch.zeros(d), torch.ones(d), langevin=LangevinConfig(steps, STEP_SIZE), **kwargs)


def test_log_prob_value_is_f_plus_base_log_density():
    energy = EnergyMLP(3, 8, 2)
    z = torch.randn(5, 3)
    prior = tilted(energy, 3)
    expected = energy(z) + laplace_log_density(z.double()).float()
    assert torch.allclose(prior.log_prob(z), expected, atol=1e-5)  # with negatives drawn
    with torch.no_grad():
        assert torch.allclose(prior.log_prob(z), expected, atol=1e-5)


def test_linear_tilt_alpha_gradient_matches_asymmetric_laplace():
    a = torch.tensor([0.3, -0.4])
    energy = LinearTilt(a)
    torch.manual_seed(0)
    z = torch.randn(64, 2)
    # The heavier tail (scale 1/(1-|a|)) needs Langevin time 40 to mix (measured: bias < 1.5 SE).
    tilted(energy, 2, steps=2000, num_negatives=20000).log_prob(z).mean().backward()
    # log Z(a) = -sum_j log(1 - a_j^2), so grad_a log p_a(z) = z - 2a / (1 - a^2).
    exact = z.mean(0) - 2 * a / (1 - a**2)
    # Monte Carlo error: the estimate replaces E[z] by the mean of N negatives, SE = sd(z) / sqrt(N),
    # with sd from the AsymmetricLaplace second moment p*2/(1-a)^2 + (1-p)*2/(1+a)^2, p = (1+a)/2.
    p = (1 + a) / 2
    second = p * 2 / (1 - a) ** 2 + (1 - p) * 2 / (1 + a) ** 2
    sd = (second - (2 * a / (1 - a**2)) ** 2).sqrt()
    assert torch.all((energy.a.grad - exact).abs() < 5 * sd / math.sqrt(20000))


def test_linear_tilt_z_gradient_is_exact():
    energy = LinearTilt([0.3, -0.5])
    z = torch.randn(10, 2, requires_grad=True)
    tilted(energy, 2, regularisation=0.5).log_prob(z).sum().backward()
    assert torch.allclose(z.grad, energy.a.detach() - z.detach().sign())


def _grad_vs_quadrature(energy, d, points, cell, z):
    """The α-gradient estimate of mean log_prob(z) and its exact value, per parameter."""
    params = list(energy.parameters())
    torch.manual_seed(1)
    estimate = torch.autograd.grad(tilted(energy, d, num_negatives=NUM_NEGATIVES).log_prob(z).mean(), params)
    energy64 = energy.double()
    log_z = log_normaliser(lambda u: energy64(u) + laplace_log_density(u), points, cell)
    exact = torch.autograd.grad(energy64(z.double()).mean() - log_z, params)
    energy.float()
    # Standard error of the negatives' mean gradient, by batch means over 20 groups of negatives.
    torch.manual_seed(2)
    negatives = tilted(energy, d).negative_samples(NUM_NEGATIVES).chunk(20)
    group_grads = [torch.autograd.grad(energy(g).mean(), params) for g in negatives]
    se = [torch.stack(gs).std(0) / math.sqrt(20) for gs in zip(*group_grads)]
    return estimate, exact, se


@pytest.mark.parametrize("d", [1, 2])
def test_nonlinear_tilt_alpha_gradient_matches_quadrature(d):
    torch.manual_seed(3)
    energy = EnergyMLP(d, 8, 3, activation="tanh")
    z = torch.randn(32, d)
    points, cell = grid_1d(-14, 14, 8001) if d == 1 else grid_2d(-14, 14, 351)
    if d == 1:
        points = points[:, None]
    estimate, exact, se = _grad_vs_quadrature(energy, d, points, cell, z)
    for est, ex, s in zip(estimate, exact, se):
        # 5 SE plus a floor for parameters whose gradient is (nearly) deterministic.
        assert torch.all((est.double() - ex).abs() < 5 * s.double() + 2e-3), (est, ex, s)


@pytest.mark.parametrize("fraction", [0.0, 0.25])
def test_encoder_gradient_scales_only_f_s_gradient_in_z(fraction):
    """With ``encoder_gradient = c``, the z-gradient is ``c a − sign(z)`` for ``f(z) = a·z`` (exact),
    while the value and the α-gradient (same negatives) are those of ``c = 1``."""
    energy = LinearTilt([0.3, -0.5])
    z = torch.randn(10, 2, requires_grad=True)
    torch.manual_seed(0)
    full = tilted(energy, 2, steps=5).log_prob(z)
    (alpha_full,) = torch.autograd.grad(full.sum(), [energy.a])
    torch.manual_seed(0)
    scaled = tilted(energy, 2, steps=5, encoder_gradient=fraction).log_prob(z)
    alpha_scaled, z_grad = torch.autograd.grad(scaled.sum(), [energy.a, z])
    assert torch.equal(scaled, full)
    assert torch.allclose(alpha_scaled, alpha_full)
    assert torch.allclose(z_grad, fraction * energy.a.detach() - z.detach().sign())
    with pytest.raises(ValueError, match="encoder_gradient in \\[0, 1\\]"):
        tilted(energy, 2, encoder_gradient=1.5)


def test_noise_contrastive_gradient_is_the_logistic_loss_s_with_the_same_value_and_z_gradient():
    """With ``estimator="nce"`` the α-gradient of ``Σ log_prob(z)`` is minus that of the logistic loss
    ``Σ log(1 + e^{−f(z)}) + Σ log(1 + e^{f(z⁰)})`` on the same draws ``z⁰`` of ``p0`` (exact, by
    autograd on the loss written out), while the value and the z-gradient are maximum likelihood's."""
    energy = EnergyMLP(2, 8, 2)
    z = torch.randn(12, 2, requires_grad=True)
    torch.manual_seed(0)
    monitor = NoiseContrastMonitor()
    nce = tilted(energy, 2, steps=5, estimator="nce", encoder_gradient=0.5, monitor=monitor).log_prob(z)
    alpha_nce = torch.autograd.grad(nce.sum(), list(energy.parameters()), retain_graph=True)
    (z_nce,) = torch.autograd.grad(nce.sum(), [z])
    torch.manual_seed(0)
    base = dist.Laplace(torch.zeros(2), torch.ones(2)).to_event(1).sample((12,))
    logistic = nn.functional.softplus(-energy(z)).sum() + nn.functional.softplus(energy(base)).sum()
    alpha_logistic = torch.autograd.grad(logistic, list(energy.parameters()))
    assert all(torch.allclose(a, -b, atol=1e-6) for a, b in zip(alpha_nce, alpha_logistic))
    # the monitor holds that loss (per class), the classifier's accuracy and log Z(α) on the same draws
    with torch.no_grad():
        f_z, f_base = energy(z), energy(base)
    positive_mean, base_mean, loss, accuracy, log_normaliser = monitor.values()
    assert torch.allclose(positive_mean, f_z.mean()) and torch.allclose(base_mean, f_base.mean())
    assert torch.allclose(loss, nn.functional.softplus(-f_z).mean() + nn.functional.softplus(f_base).mean())
    assert torch.allclose(accuracy, ((f_z > 0).sum() + (f_base < 0).sum()) / 24.0)
    assert torch.allclose(log_normaliser, f_base.exp().mean().log())
    torch.manual_seed(0)
    ml = tilted(energy, 2, steps=5, encoder_gradient=0.5).log_prob(z)
    (z_ml,) = torch.autograd.grad(ml.sum(), [z])
    assert torch.equal(nce, ml) and torch.allclose(z_nce, z_ml)
    with pytest.raises(ValueError, match="unknown estimator 'mle'"):
        tilted(energy, 2, estimator="mle")
    with pytest.raises(ValueError, match="NoiseContrastMonitor watches the 'nce' estimator; this prior's is 'ml'"):
        tilted(energy, 2, monitor=NoiseContrastMonitor())
    with pytest.raises(ValueError, match="EnergyGapMonitor watches the 'ml' estimator; this prior's is 'nce'"):
        tilted(energy, 2, estimator="nce", monitor=EnergyGapMonitor())


class KnownPosterior(nn.Module):
    """A stand-in guide whose posterior is ``N((1, −0.5), 0.5² I)`` for every example, so that the
    aggregate posterior is known exactly."""

    loc, scale = torch.tensor([1.0, -0.5]), 0.5

    def posterior(self, batch):
        return dist.Normal(self.loc.expand(len(batch["x"]), 2), self.scale).to_event(1)


class FarPosterior(KnownPosterior):
    """``N((4, −3), 0.3² I)`` for every example: an aggregate posterior 8 nats from ``p0``."""

    loc, scale = torch.tensor([4.0, -3.0]), 0.3


def fit_to_known_posterior(prior, guide, batch_size, steps, slower_from):
    """Fit ``prior`` by the two-stage loss to ``guide``'s draws for ``batch_size`` examples: Adam at
    1e-2, then 1e-3 from step ``slower_from``; returns the batch."""
    from pyro_mmebm.two_stage import PriorNegativeLogLikelihood

    loss_fn = PriorNegativeLogLikelihood(prior, guide.posterior)
    optimizer = torch.optim.Adam(prior.energy.parameters(), lr=1e-2)
    batch = {"x": torch.zeros(batch_size, 1)}
    for step in range(steps):
        if step == slower_from:
            optimizer.param_groups[0]["lr"] = 1e-3
        optimizer.zero_grad()
        (loss_fn(batch) / batch_size).backward()
        optimizer.step()
    return batch


@pytest.mark.parametrize("ceiling_margin", [math.inf, 2.0])
def test_noise_contrastive_two_stage_fit_learns_the_log_density_ratio_to_the_base(ceiling_margin):
    """The minimiser of the logistic loss is ``f = log q − log p0``: the tilted prior is ``q``, with
    ``Z(α) = 1``. Fitted by the two-stage loss to a known ``q``, with ``f_α`` unbounded and bounded
    above (the default, :class:`~pyro_mmebm.ebm.BoundedEnergy`): the measured figures below are the
    unbounded fit's; the bounded one's differ from them by at most 0.005."""
    torch.manual_seed(0)
    config = EBMPriorConfig(hidden=32, depth=3, estimator="nce", nce_noise="base", ceiling_margin=ceiling_margin)
    prior = EnergyBasedPrior(2, config)
    guide = KnownPosterior()
    batch = fit_to_known_posterior(prior, guide, batch_size=1024, steps=1500, slower_from=1000)
    z = guide.posterior(batch).sample((4,)).reshape(-1, 2)  # where q has its mass
    q = dist.Normal(guide.loc, guide.scale).to_event(1)
    exact = q.log_prob(z) - laplace_log_density(z)
    with torch.no_grad():
        error = prior.energy(z) - exact
    # Over q's mass the log ratio has standard deviation 1.04 and mean size 1.71 (what f = 0 misses
    # by). The fit's error is the network's approximation plus the SGD noise of its last steps (1,024
    # fresh draws of each class a step): measured -0.017 (mean) and 0.053 (RMS) on this seed; the
    # bounds leave about 3x that.
    assert exact.std() > 0.8
    assert error.mean().abs() < 0.06 and error.square().mean().sqrt() < 0.15
    # and the tilted prior is normalised: E_p0[exp f] = 1. Measured 0.985 by a Monte Carlo mean over
    # 200,000 draws of p0, whose own relative standard error is 0.5 %; the bound leaves 3x.
    with torch.no_grad():
        normaliser = prior.energy(prior().base_dist.sample((200_000,))).exp().mean()
    assert abs(float(normaliser) - 1.0) < 0.05
    # What training watched at its last step, on 1,024 draws of each class, against the exact optimum:
    # the mean of f on q's draws is KL(q || p0) (1.53 here); the logistic loss is the optimal
    # classifier's (both by 200,000 draws, whose own error is under 0.005); log Z(α) is 0. Measured
    # -0.016, -0.003 and -0.028. The last step's own noise, from 1,024 draws of each class: about 0.03
    # for the mean of f (its standard deviation over q is 1.04), 0.03 for the loss, and 0.07 for
    # log Z (q/p0 has variance about 5.5 under p0). The bounds leave about 3x.
    positive_mean, _, loss, accuracy, log_normaliser = (float(v) for v in prior.monitor.values())
    with torch.no_grad():
        on_q = guide.posterior({"x": torch.zeros(200_000, 1)}).sample()
        on_base = prior().base_dist.sample((200_000,))
        optimum_f_q, optimum_f_base = (q.log_prob(x) - laplace_log_density(x) for x in (on_q, on_base))
    optimal_loss = nn.functional.softplus(-optimum_f_q).mean() + nn.functional.softplus(optimum_f_base).mean()
    assert abs(positive_mean - float(optimum_f_q.mean())) < 0.15
    assert abs(loss - float(optimal_loss)) < 0.1 and loss < 2 * math.log(2) - 0.5 and accuracy > 0.75
    assert abs(log_normaliser) < 0.25


def test_noise_contrastive_gradient_against_another_noise_is_the_logistic_loss_s_with_its_logits():
    """Against the noise ``ν = ½ p0 + ½ N(m, C)``, the α-gradient is minus that of the logistic loss
    on the logits ``h = f + log p0 − log ν`` of the same draws of ``ν`` (exact, by autograd), after the
    noise has been updated with the scored latents; the value is maximum likelihood's."""
    energy = EnergyMLP(2, 8, 2)
    z = torch.randn(12, 2) + torch.tensor([2.0, -1.0])
    noise = BaseAndFittedGaussian(2, decay=0.5)
    reference = copy.deepcopy(noise)
    torch.manual_seed(0)
    monitor = NoiseContrastMonitor()
    nce = tilted(energy, 2, estimator="nce", noise=noise, monitor=monitor).log_prob(z)
    alpha_nce = torch.autograd.grad(nce.sum(), list(energy.parameters()))
    base = dist.Laplace(torch.zeros(2), torch.ones(2)).to_event(1)
    torch.manual_seed(0)
    reference.update(z)
    draws = reference.sample(base, 12)
    assert torch.equal(noise.mean, reference.mean) and torch.allclose(noise.mean, 0.5 * z.mean(0))

    def logit(x):
        return energy(x) + reference.log_ratio_to_base(base, x)

    logistic = nn.functional.softplus(-logit(z)).sum() + nn.functional.softplus(logit(draws)).sum()
    alpha_logistic = torch.autograd.grad(logistic, list(energy.parameters()))
    assert all(torch.allclose(a, -b, atol=1e-6) for a, b in zip(alpha_nce, alpha_logistic))
    assert torch.allclose(nce, energy(z) + base.log_prob(z))
    with torch.no_grad():
        assert torch.allclose(monitor.loss, (nn.functional.softplus(-logit(z)) + nn.functional.softplus(logit(draws))).mean())
    with pytest.raises(ValueError, match="a noise other than p0 is for the 'nce' estimator; this prior's is 'ml'"):
        tilted(energy, 2, noise=noise)
    with pytest.raises(ValueError, match="nce_noise 'base\\+gaussian' is for the 'nce' estimator; this one is 'ml'"):
        EBMPriorConfig(estimator="ml", nce_noise="base+gaussian")


def test_the_default_noise_is_the_mixture_for_nce_and_none_for_ml():
    assert EBMPriorConfig().contrast_noise == "base+gaussian"
    assert EBMPriorConfig(nce_noise="base").contrast_noise == "base"
    assert EBMPriorConfig(estimator="ml").contrast_noise is None
    assert EBMPriorConfig(estimator="ml", nce_noise="base").contrast_noise is None  # as runs before the mixture saved it
    assert EnergyBasedPrior(2, EBMPriorConfig(hidden=8)).noise is not None
    assert EnergyBasedPrior(2, EBMPriorConfig(hidden=8, estimator="ml")).noise is None
    with pytest.raises(ValueError, match="generation_start 'noise' starts from the Gaussian"):
        EBMPriorConfig(estimator="ml", generation_start="noise")


def test_the_fitted_gaussian_noise_matches_the_moments_it_is_shown_and_knows_its_density():
    torch.manual_seed(0)
    z = torch.randn(4000, 2) @ torch.tensor([[1.0, 0.0], [0.8, 0.5]]) + torch.tensor([3.0, -2.0])
    noise = BaseAndFittedGaussian(2, decay=0.9)
    gaussian = noise.gaussian()  # before any update: the standard Laplace's moments
    assert torch.equal(gaussian.mean, torch.zeros(2)) and torch.allclose(gaussian.covariance_matrix, 2 * torch.eye(2), atol=1e-3)
    for _ in range(300):  # the running moments converge geometrically (0.9^300 ≈ 2e-14) to z's own
        noise.update(z)
    gaussian = noise.gaussian()
    assert torch.allclose(gaussian.mean, z.mean(0), atol=1e-5)
    assert torch.allclose(gaussian.covariance_matrix, torch.cov(z.T, correction=0), atol=1e-3)
    base = dist.Laplace(torch.zeros(2), torch.ones(2)).to_event(1)
    x = torch.randn(7, 2) * 3
    by_hand = base.log_prob(x) - torch.log(0.5 * base.log_prob(x).exp() + 0.5 * gaussian.log_prob(x).exp())
    assert torch.allclose(noise.log_ratio_to_base(base, x), by_hand, atol=1e-5)
    # half the draws from each: those near (3, -2) are the Gaussian's (the Laplace puts 0.3 % there)
    draws = noise.sample(base, 20_000)
    near = ((draws - torch.tensor([3.0, -2.0])).norm(dim=-1) < 1.0).float().mean()
    gaussian_share = (gaussian.sample((20_000,)) - torch.tensor([3.0, -2.0])).norm(dim=-1).lt(1.0).float().mean()
    # 20,000 draws: the share's standard error is under 0.004; the bound leaves 4x
    assert abs(float(near) - 0.5 * float(gaussian_share)) < 0.016
    with pytest.raises(ValueError, match="decay in \\[0, 1\\)"):
        BaseAndFittedGaussian(2, decay=1.0)


def test_noise_contrastive_with_a_fitted_gaussian_learns_the_ratio_where_the_base_alone_does_not():
    """The density chasm: ``q = N((4, −3), 0.3² I)`` lies 8 nats from ``p0``, where few of ``p0``'s
    draws land. Against ``p0`` alone the fit misses ``log q − log p0`` on ``q``'s mass; against half
    ``p0``, half a Gaussian fitted to ``q``'s draws, the same fit learns it."""
    errors, watched = {}, {}
    for nce_noise in NCE_NOISES:
        torch.manual_seed(0)
        config = EBMPriorConfig(hidden=32, depth=3, estimator="nce", nce_noise=nce_noise, ceiling_margin=math.inf)
        prior = EnergyBasedPrior(2, config)
        guide = FarPosterior()
        batch = fit_to_known_posterior(prior, guide, batch_size=512, steps=600, slower_from=400)
        z = guide.posterior(batch).sample((8,)).reshape(-1, 2)
        exact = dist.Normal(guide.loc, guide.scale).to_event(1).log_prob(z) - laplace_log_density(z)
        with torch.no_grad():
            errors[nce_noise] = float((prior.energy(z) - exact).square().mean().sqrt())
        watched[nce_noise] = float(prior.monitor.log_normaliser)
    # Measured RMS errors on this seed: 1.08 against p0, 0.094 against the mixture (the log ratio
    # itself averages 7.98 over q); and the mixture's watch reads log Z(α) = -0.014.
    assert errors["base"] > 0.5 and errors["base+gaussian"] < 0.25, errors
    assert abs(watched["base+gaussian"]) < 0.3, watched


def test_generation_starts_its_chains_from_the_fitted_gaussian_when_asked():
    """``generation_start="noise"``: the chains start from the noise's Gaussian, so with no step the
    samples are its own draws."""
    noise = BaseAndFittedGaussian(1, decay=0.0)
    noise.update(torch.full((4, 1), 6.0) + torch.tensor([[-0.2], [0.2], [-0.2], [0.2]]))  # N(6, 0.2²)
    peaked = LinearTilt(torch.tensor([0.5]))
    torch.manual_seed(0)
    drawn = tilted(peaked, 1, steps=0, estimator="nce", noise=noise, generation_start="noise").sample((500,))
    torch.manual_seed(0)
    assert torch.equal(drawn, noise.gaussian().sample((500,)))
    with pytest.raises(ValueError, match="generation_start 'noise' starts the chains from the noise's Gaussian"):
        tilted(peaked, 1, estimator="nce", generation_start="noise")
    with pytest.raises(ValueError, match="unknown generation_start 'prior'"):
        tilted(peaked, 1, estimator="nce", noise=noise, generation_start="prior")
    with pytest.raises(ValueError, match="generation_start 'noise' starts from the Gaussian of nce_noise"):
        EBMPriorConfig(estimator="nce", nce_noise="base", generation_start="noise")


def test_regularisation_changes_gradient_not_value():
    energy = EnergyMLP(2, 8, 2)
    z = torch.randn(16, 2)
    torch.manual_seed(0)
    plain = tilted(energy, 2, steps=5).log_prob(z)
    (g_plain,) = torch.autograd.grad(plain.sum(), [energy.net[-1].bias])
    torch.manual_seed(0)
    reg = tilted(energy, 2, steps=5, regularisation=1.0).log_prob(z)
    (g_reg,) = torch.autograd.grad(reg.sum(), [energy.net[-1].bias])
    assert torch.allclose(plain, reg)
    # d/db of -λ Σ_n (f(z_n)^2 + E f(z⁻)^2) adds -2λ Σ_n (f(z_n) + E f(z⁻)) to the bias gradient.
    assert not torch.allclose(g_plain, g_reg)


def test_no_negatives_when_gradients_are_off():
    calls = []

    class Counting(EnergyMLP):
        def forward(self, z):
            calls.append(z.shape)
            return super().forward(z)

    prior = tilted(Counting(2, 4, 2), 2, steps=3)
    with torch.no_grad():
        prior.log_prob(torch.zeros(7, 2))
    assert calls == [torch.Size([7, 2])]


def test_monitor_records_energy_gap():
    monitor = EnergyGapMonitor()
    energy = LinearTilt([1.0, 0.0])
    tilted(energy, 2, steps=2, monitor=monitor, num_negatives=4000).log_prob(torch.full((100, 2), 3.0))
    # Positives sit at f = 3; negatives near E[z_1] = 2a/(1 - a^2), infinite at a = 1 but the
    # 2-step chains stay near the base: the gap is large and positive.
    assert monitor.gap > 2.0


def penalised_loss(energy, positives, monitor, regularisation):
    """−mean log_prob of ``positives`` with fixed negatives (K = 0: the same 512 base draws every call)."""
    torch.manual_seed(1)
    prior = tilted(energy, 2, steps=0, regularisation=regularisation, monitor=monitor, num_negatives=512)
    return -prior.log_prob(positives).mean()


def test_penalty_gap_is_the_gradient_along_the_output_scale():
    """Scaling f's output layer by (1 + ε) scales f, so the derivative of the penalised α-objective
    E f − E f(z⁻) − λ (E f² + E f(z⁻)²) along it is gap − 2λ (E f² + E f(z⁻)²) at any α, exactly; at a
    stationary point it vanishes, so the penalty alone sets the gap (pyro_mmebm.ebm.monitoring).
    Checked at an arbitrary α, then after training to near-stationarity (Adam, 3,000 full-batch
    steps along a cosine; the residual left is the projected gradient, 0.2 % of the gap here)."""
    torch.manual_seed(0)
    positives = 0.4 * torch.randn(256, 2) + torch.tensor([1.5, -1.0])
    energy = EnergyMLP(2, 16, 3)
    output = energy.net[-1]
    monitor = EnergyGapMonitor()
    regularisation = 0.1

    def residual():
        loss = penalised_loss(energy, positives, monitor, regularisation)
        weight, bias = torch.autograd.grad(loss, [output.weight, output.bias])
        with torch.no_grad():
            along_scale = -float((output.weight * weight).sum() + (output.bias * bias).sum())  # d objective / dε
        sustained = penalty_gap(regularisation, float(monitor.positive_square_mean), float(monitor.negative_square_mean))
        return monitor.gap - sustained, along_scale

    difference, along_scale = residual()
    assert difference == pytest.approx(along_scale, rel=1e-4, abs=1e-4)  # float32 means of ~5

    optimizer = torch.optim.Adam(energy.parameters(), lr=1e-2)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, 3000)
    for _ in range(3000):
        optimizer.zero_grad()
        penalised_loss(energy, positives, monitor, regularisation).backward()
        optimizer.step()
        schedule.step()
    difference, along_scale = residual()
    assert difference == pytest.approx(along_scale, rel=1e-4, abs=1e-4)  # float32 means of ~5
    assert monitor.gap > 5.0  # far from a flat tilt, yet
    assert abs(difference) < 0.005 * monitor.gap  # the penalty alone sets the gap,
    assert monitor.gap < 1 / regularisation  # which stays below 1/λ


def test_shapes_expand_and_event():
    prior = tilted(EnergyMLP(3, 8, 2), 3, steps=2)
    assert prior.batch_shape == () and prior.event_shape == (3,)
    assert prior.sample().shape == (3,) and prior.sample((4, 5)).shape == (4, 5, 3)
    expanded = prior.expand([2, 6])
    assert expanded.batch_shape == (2, 6) and expanded.sample().shape == (2, 6, 3)
    assert expanded.log_prob(torch.zeros(2, 6, 3)).shape == (2, 6)
    assert expanded.langevin.steps == 2 and expanded.energy is prior.energy
    assert prior.expand([4]).to_event(1).log_prob(torch.zeros(4, 3)).shape == ()
    assert not prior.has_rsample


def test_validation_errors_name_the_problem():
    prior = TiltedLaplace(EnergyMLP(3, 8, 2), torch.zeros(3), torch.ones(3), validate_args=True)
    with pytest.raises(ValueError):
        prior.log_prob(torch.tensor([[float("nan"), 0.0, 0.0]]))
    with pytest.raises(ValueError, match="event_shape"):
        prior.log_prob(torch.zeros(2, 4))
    with pytest.raises(ValueError, match="base"):
        TiltedLaplace(EnergyMLP(3), torch.zeros(3), torch.ones(3), base="cauchy")
    with pytest.raises(ValueError, match="regularisation"):
        TiltedLaplace(EnergyMLP(3), torch.zeros(3), torch.ones(3), regularisation=-1.0)
    with pytest.raises(ValueError, match="step_size"):
        TiltedLaplace(EnergyMLP(3), torch.zeros(3), torch.ones(3), langevin=LangevinConfig(step_size=0.0))


def test_metropolis_adjusted_generation_samples_the_tilt_exactly_at_a_large_step():
    """``f(z) = z / 2`` tilts the standard Laplace into the asymmetric Laplace of density ∝ e^{−z/2}
    for z > 0 and ∝ e^{3z/2} for z < 0: P(z > 0) = 3/4, mean 4/3, variance 40/9. At ``s = 1`` the
    unadjusted chain's mean is 1.48 (10 standard errors off); the adjusted one's is within 5 SE
    (σ / √N = 0.015 for 20,000 chains), and its mass right of 0 within 5 SE (0.0031)."""
    chains = 20_000
    config = EBMPriorConfig(generation_metropolis=True)
    assert config.generation.metropolis and not config.langevin.metropolis
    assert not EBMPriorConfig(ceiling_margin=math.inf).generation.metropolis
    assert EBMPriorConfig(langevin=LangevinConfig(metropolis=True)).generation.metropolis
    torch.manual_seed(0)
    prior = tilted(LinearTilt(torch.tensor([0.5])), 1, generation=LangevinConfig(300, 1.0, metropolis=True))
    run = prior.generation_run((chains,))
    z = run.samples[:, 0].double()
    assert abs(z.mean() - 4 / 3) < 5 * math.sqrt(40 / 9 / chains)
    assert abs((z > 0).double().mean() - 0.75) < 5 * math.sqrt(0.75 * 0.25 / chains)
    assert run.acceptance.shape == (chains,) and 0.5 < run.acceptance.mean() < 1.0
    torch.manual_seed(0)
    unadjusted = tilted(LinearTilt(torch.tensor([0.5])), 1, generation=LangevinConfig(300, 1.0)).sample((chains,))
    assert abs(unadjusted.double().mean() - 4 / 3) > 5 * math.sqrt(40 / 9 / chains)


def test_an_exact_chain_that_leaves_says_the_prior_is_not_normalisable():
    """``f(z) = 3z`` rises faster than the Laplace's ``−|z|`` falls, so ``exp(f) p0`` has no normaliser:
    Metropolis-adjusted chains drift out (one scale per step at s = 1), and the error names the prior,
    not the step size."""
    torch.manual_seed(0)
    prior = tilted(LinearTilt(torch.tensor([3.0])), 1, generation=LangevinConfig(200, 1.0, metropolis=True))
    with pytest.raises(LangevinDivergenceError, match="Metropolis-adjusted, so the prior itself has mass there"):
        prior.sample((100,))


def test_normal_base():
    energy = EnergyMLP(2, 4, 2)
    z = torch.randn(3, 2)
    prior = TiltedLaplace(energy, torch.zeros(2), torch.ones(2), base="normal")
    expected = energy(z) + dist.Normal(0.0, 1.0).log_prob(z).sum(-1)
    with torch.no_grad():
        assert torch.allclose(prior.log_prob(z), expected)


def test_usable_in_a_pyro_model_with_plates_and_predictive():
    prior = EnergyBasedPrior(4, EBMPriorConfig(hidden=16, depth=2, langevin=LangevinConfig(steps=3)))

    def model(n):
        with pyro.plate("outer", 2, dim=-2), pyro.plate("data", n, dim=-1):
            z = pyro.sample("z", prior())
            pyro.sample("x", dist.Normal(z.sum(-1), 1.0))

    trace = pyro.poutine.trace(model).get_trace(5)
    trace.compute_log_prob()
    assert trace.nodes["z"]["value"].shape == (2, 5, 4)
    assert trace.nodes["z"]["log_prob"].shape == (2, 5)
    samples = Predictive(model, num_samples=3)(5)
    assert samples["z"].shape == (3, 2, 5, 4) and samples["x"].shape == (3, 2, 5)


def test_diverging_prior_chain_raises_langevin_error_with_validation_on():
    from pyro_mmebm import LangevinDivergenceError

    class Explosive(nn.Module):
        def __init__(self):
            super().__init__()
            self.c = nn.Parameter(torch.tensor(3.0))

        def forward(self, z):
            return self.c * z.pow(2).sum(-1)  # f grows faster than log p0 falls: no normaliser

    prior = TiltedLaplace(
        Explosive(), torch.zeros(2), torch.ones(2), langevin=LangevinConfig(steps=100, step_size=1.0), validate_args=True
    )
    with pytest.raises(LangevinDivergenceError, match="step size 1.0"):
        prior.sample((10,))
    with pytest.raises(LangevinDivergenceError, match="step size 1.0"):
        prior.log_prob(torch.zeros(10, 2))
