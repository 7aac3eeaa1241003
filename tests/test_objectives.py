"""IWAE and DReG: reduction to the ELBO, tightening towards an exact log-likelihood, DReG's gradients,
and every guide × prior × objective combination training."""

import functools
import math

import pytest
import torch
from pyro.infer import Trace_ELBO
from torch.distributions import MultivariateNormal

from guides import GUIDES, ProductOfExpertsGuide
from models import MultimodalVAE
from pyro_mmebm import EBMPriorConfig, LangevinConfig, TrainConfig, evaluate_loss, fit
from pyro_mmebm.likelihoods import Likelihood
from pyro_mmebm.networks import SCALE_EPS, MLPDecoder, MLPEncoder
from pyro_mmebm.objectives import OBJECTIVES, DReG, IWAE, SubsampledELBO, stratified_elbo
from pyro_mmebm.priors import PRIORS, NormalPrior
from tests.reference import energy_output_biases

# ---------------------------------------------------------------------------------------------------
# A linear-Gaussian model, p(z) = N(0, I), x_i = W_i z + b_i + σ_i ε, with W_iᵀ W_i diagonal so that
# the posterior is a diagonal Gaussian: precision Λ = I + Σ_i W_iᵀW_i / σ_i²,
# mean Λ⁻¹ Σ_i W_iᵀ(x_i − b_i)/σ_i².
# Each modality alone gives the Gaussian expert with precision P_i = diag(W_iᵀW_i)/σ_i² and mean
# P_i⁻¹ W_iᵀ(x_i − b_i)/σ_i², so the PoE guide (with its prior expert) is the exact posterior.

LATENT_DIM = 2
SIZES = {"a": 3, "b": 2}
NOISE = {"a": 0.5, "b": 0.8}
COLUMN_NORMS = {"a": (1.5, 0.7), "b": (0.6, 1.2)}


def linear_weights():
    generator = torch.Generator().manual_seed(0)
    weights, biases = {}, {}
    for name, size in SIZES.items():
        orthogonal, _ = torch.linalg.qr(torch.randn(size, size, generator=generator))
        weights[name] = orthogonal[:, :LATENT_DIM] * torch.tensor(COLUMN_NORMS[name])
        biases[name] = torch.randn(size, generator=generator)
    return weights, biases


def linear_gaussian_model() -> MultimodalVAE:
    weights, biases = linear_weights()
    decoders = {}
    for name, size in SIZES.items():
        decoder = MLPDecoder(LATENT_DIM, (size,), hidden=(), output="identity")
        with torch.no_grad():
            decoder.net[1].weight.copy_(weights[name])
            decoder.net[1].bias.copy_(biases[name])
        decoders[name] = decoder
    likelihoods = {name: Likelihood("normal", NOISE[name]) for name in SIZES}
    return MultimodalVAE(decoders, likelihoods, NormalPrior(LATENT_DIM))


def linear_encoders(*, shift: float = 0.0, scale_factor: float = 1.0, unimodal_posterior: bool = False) -> dict:
    """Linear encoders of the exact experts (or, ``unimodal_posterior``, of p(z | x_i)), optionally
    perturbed: means shifted by ``shift``, scales multiplied by ``scale_factor``."""
    weights, biases = linear_weights()
    encoders = {}
    for name, size in SIZES.items():
        precision = (weights[name] ** 2).sum(0) / NOISE[name] ** 2
        mean_map = weights[name].T / NOISE[name] ** 2 / precision[:, None]
        scale = precision.rsqrt()
        if unimodal_posterior:
            mean_map, scale = mean_map * (precision / (1 + precision))[:, None], (1 + precision).rsqrt()
        encoder = MLPEncoder((size,), LATENT_DIM, hidden=(), scale_activation="exp")
        with torch.no_grad():
            encoder.head.weight.zero_()
            encoder.head.weight[:LATENT_DIM] = mean_map
            encoder.head.bias[:LATENT_DIM] = shift - mean_map @ biases[name]
            encoder.head.bias[LATENT_DIM:] = torch.log(scale * scale_factor - SCALE_EPS)
        encoders[name] = encoder
    return encoders


def linear_gaussian_data(batch_size: int) -> dict:
    weights, biases = linear_weights()
    generator = torch.Generator().manual_seed(1)
    z = torch.randn(batch_size, LATENT_DIM, generator=generator)
    return {
        name: z @ weights[name].T + biases[name] + NOISE[name] * torch.randn(batch_size, size, generator=generator)
        for name, size in SIZES.items()
    }


def exact_log_likelihood(batch: dict) -> torch.Tensor:
    """log p(x) of the concatenated modalities: N(b, W Wᵀ + diag σ²)."""
    weights, biases = linear_weights()
    w = torch.cat([weights[name] for name in SIZES])
    noise = torch.cat([torch.full((size,), NOISE[name] ** 2) for name, size in SIZES.items()])
    joint = MultivariateNormal(torch.cat([biases[name] for name in SIZES]), w @ w.T + torch.diag(noise))
    return joint.log_prob(torch.cat([batch[name] for name in SIZES], dim=-1))


def mean_bound(objective, model, guide, batch, repeats: int) -> tuple[float, float]:
    """Mean per-example bound over ``repeats`` evaluations and its Monte Carlo standard error."""
    torch.manual_seed(0)
    size = next(iter(batch.values())).shape[0]
    with torch.no_grad():
        values = torch.tensor(
            [-float(objective(model, guide)(batch, num_draws=guide.num_draws)) / size for _ in range(repeats)]
        )
    return float(values.mean()), float(values.std() / math.sqrt(repeats))


def guide_gradients(objective, model, guide, batch, repeats: int, seed: int) -> torch.Tensor:
    """``repeats`` independent gradient estimates of the guide's parameters, shape ``(repeats, P)``."""
    torch.manual_seed(seed)
    estimates = []
    for _ in range(repeats):
        model.zero_grad()
        guide.zero_grad()
        objective(model, guide)(batch, num_draws=guide.num_draws).backward()
        estimates.append(torch.cat([p.grad.flatten() for p in guide.parameters()]))
    return torch.stack(estimates)


def test_the_exact_posterior_makes_every_bound_equal_log_likelihood():
    # Checks the closed forms above: with q = p(z | x) every weight is p(x), whatever K.
    model, batch = linear_gaussian_model(), linear_gaussian_data(50)
    guide = ProductOfExpertsGuide(linear_encoders(), LATENT_DIM)
    exact = float(exact_log_likelihood(batch).mean())
    for num_samples in (1, 8):
        bound, _ = mean_bound(IWAE(num_samples), model, guide, batch, repeats=2)
        assert bound == pytest.approx(exact, abs=1e-4)  # float32 round-off only


@pytest.mark.parametrize(
    "guide_name, limit_gap",
    # PoE (one stratum): IWAE_K → log p(x). MoE of the unimodal posteriors (two strata): the looser
    # stratified bound tends to (1/D) Σ_k log E_{q_k}[p/q] < log p(x); here ≈ 0.1 nats below it.
    [("poe", 0.0), ("moe", 0.1)],
)
def test_iwae_tightens_with_k_towards_the_log_likelihood(guide_name, limit_gap):
    model, batch = linear_gaussian_model(), linear_gaussian_data(200)
    if guide_name == "poe":
        guide = ProductOfExpertsGuide(linear_encoders(shift=0.5, scale_factor=1.5), LATENT_DIM)
    else:
        guide = GUIDES["moe"](linear_encoders(unimodal_posterior=True), LATENT_DIM, family="normal")
    exact = float(exact_log_likelihood(batch).mean())
    bounds = [mean_bound(IWAE(k), model, guide, batch, repeats=20) for k in (1, 4, 16, 64)]
    # Monte Carlo tolerance: 4 standard errors of the (difference of) means of 20 repeats over 200
    # examples (the standard errors are 0.002–0.06 nats; each step in K exceeds 8 of them).
    for (smaller, se_small), (larger, se_large) in zip(bounds, bounds[1:]):
        assert larger - smaller > 4 * math.hypot(se_small, se_large)
    for bound, standard_error in bounds:
        assert bound < exact + 4 * standard_error
    # At K = 64 the bound is within 0.05 nats of its limit (PoE: 0.01 nats short of log p(x)).
    final, final_se = bounds[-1]
    assert exact - final == pytest.approx(limit_gap, abs=0.05 + 4 * final_se)
    assert exact - final < (exact - bounds[0][0]) / 10


@pytest.mark.parametrize("estimator", ["ml", "nce"])
def test_iwae_and_dreg_with_one_sample_equal_the_elbo_with_an_ebm_prior(estimator):
    torch.manual_seed(0)
    shapes = {"a": (4,), "b": (3,)}
    # NCE against p0: the mixture's Gaussian moves with every batch it scores, so two objectives
    # evaluated one after the other would see different noise.
    ebm = EBMPriorConfig(hidden=8, depth=2, estimator=estimator, nce_noise="base", langevin=LangevinConfig(steps=3))
    prior = PRIORS["ebm"](LATENT_DIM, ebm)
    model = MultimodalVAE(
        {name: MLPDecoder(LATENT_DIM, shape, hidden=(8,), output="identity") for name, shape in shapes.items()},
        {name: Likelihood("laplace", 0.75) for name in shapes},
        prior,
    )
    encoders = {name: MLPEncoder(shape, LATENT_DIM, hidden=(8,)) for name, shape in shapes.items()}
    guide = GUIDES["moe"](encoders, LATENT_DIM)
    batch = {name: torch.randn(5, *shape) for name, shape in shapes.items()}
    parameters = list(model.parameters()) + list(guide.parameters())

    def loss_and_grads(objective):
        torch.manual_seed(1)  # the same guide draws and Langevin negatives (or noise draws) for every objective
        loss = objective(model, guide)(batch, num_draws=guide.num_draws)
        return loss.item(), torch.autograd.grad(loss, parameters)

    reference, reference_grads = loss_and_grads(Trace_ELBO(max_plate_nesting=2))
    num_model_parameters = len(list(model.parameters()))
    for objective in (IWAE(1), DReG(1), stratified_elbo(1)):
        loss, grads = loss_and_grads(objective)
        assert loss == pytest.approx(reference, rel=1e-6)
        # DReG(1) is the "sticking the landing" estimator: the ELBO's decoder and prior (energy)
        # gradients, but not its encoder gradients (it drops the score term, zero in expectation).
        compared = num_model_parameters if isinstance(objective, DReG) else len(parameters)
        for grad, expected in zip(grads[:compared], reference_grads[:compared]):
            assert torch.allclose(grad, expected, atol=1e-5, rtol=1e-4)


def test_dreg_encoder_gradient_vanishes_at_the_true_posterior():
    model, batch = linear_gaussian_model(), linear_gaussian_data(100)
    guide = ProductOfExpertsGuide(linear_encoders(), LATENT_DIM)
    iwae = guide_gradients(IWAE(4), model, guide, batch, repeats=3, seed=0)
    dreg = guide_gradients(DReG(4), model, guide, batch, repeats=3, seed=0)
    # With q = p(z | x), log w = log p(x) for every z: DReG's estimate is zero up to float32
    # round-off (observed 4e-7 of the scale below), whereas IWAE's is a noisy estimate of zero with
    # entries of order 10-100 (its score term does not cancel sample by sample).
    assert iwae.abs().max() > 5.0
    assert dreg.abs().max() < 1e-5 * iwae.abs().max()


def test_dreg_gradients_match_iwae_in_expectation():
    model, batch = linear_gaussian_model(), linear_gaussian_data(200)
    guide = ProductOfExpertsGuide(linear_encoders(shift=0.5, scale_factor=1.5), LATENT_DIM)
    repeats = 30
    iwae = guide_gradients(IWAE(4), model, guide, batch, repeats, seed=0)
    dreg = guide_gradients(DReG(4), model, guide, batch, repeats, seed=1)
    # Unbiased for one stratum: each mean is within 4 standard errors of the difference of 30
    # independent estimates (chance of a false alarm over these 12 entries ≈ 1e-3).
    standard_error = (iwae.var(0) / repeats + dreg.var(0) / repeats).sqrt()
    assert ((dreg.mean(0) - iwae.mean(0)).abs() < 4 * standard_error).all()
    assert (dreg.std(0) < iwae.std(0)).all()  # ... with a smaller variance, the point of DReG
    # The decoders' gradients are IWAE's exactly, sample by sample.
    model.zero_grad()
    torch.manual_seed(2)
    IWAE(4)(model, guide)(batch, num_draws=1).backward()
    iwae_decoder = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    torch.manual_seed(2)
    DReG(4)(model, guide)(batch, num_draws=1).backward()
    for p, expected in zip(model.parameters(), iwae_decoder):
        assert torch.allclose(p.grad, expected, rtol=1e-4, atol=1e-4)


def test_registry_and_evaluation_without_gradients():
    assert set(OBJECTIVES) == {"elbo", "iwae", "dreg"}
    model, batch = linear_gaussian_model(), linear_gaussian_data(20)
    guide = ProductOfExpertsGuide(linear_encoders(), LATENT_DIM)
    exact = float(exact_log_likelihood(batch).sum())
    for factory in OBJECTIVES.values():
        assert -evaluate_loss(model, guide, [batch], elbo=factory(3)) * 20 == pytest.approx(exact, rel=1e-5)
    with pytest.raises(ValueError, match="num_samples"):
        IWAE(0)


def test_subsampled_elbo_is_the_joint_plus_unimodal_elbos():
    model, batch = linear_gaussian_model(), linear_gaussian_data(20)
    guide = ProductOfExpertsGuide(linear_encoders(shift=0.3), LATENT_DIM)
    elbo = Trace_ELBO(max_plate_nesting=2)
    torch.manual_seed(0)
    subsampled = SubsampledELBO()(model, guide)(batch, num_draws=1).item()
    torch.manual_seed(0)
    observe_subset = functools.partial(model, partial=True)
    terms = [elbo.differentiable_loss(model, guide, batch, num_draws=1)] + [
        elbo.differentiable_loss(observe_subset, guide, {name: x}, num_draws=1) for name, x in batch.items()
    ]
    assert subsampled == pytest.approx(sum(terms).item(), rel=1e-6)
    # Without partial=True the model still insists on every modality.
    with pytest.raises(ValueError, match="missing modality"):
        model({"a": batch["a"]})


def tiny_setup(guide_name: str, prior_name: str):
    torch.manual_seed(0)
    shapes = {"a": (4,), "b": (3,), "c": (2,)}
    options = [EBMPriorConfig(hidden=8, depth=2, langevin=LangevinConfig(steps=2))] if prior_name.startswith("ebm") else []
    model = MultimodalVAE(
        {name: MLPDecoder(LATENT_DIM, shape, hidden=(8,)) for name, shape in shapes.items()},
        {name: Likelihood("bernoulli") for name in shapes},
        PRIORS[prior_name](LATENT_DIM, *options),
    )
    encoders = {name: MLPEncoder(shape, LATENT_DIM, hidden=(8,)) for name, shape in shapes.items()}
    guide = GUIDES[guide_name](encoders, LATENT_DIM)
    batches = [{name: torch.rand(8, *shape).round() for name, shape in shapes.items()} for _ in range(2)]
    return model, guide, batches


@pytest.mark.parametrize("objective", sorted(OBJECTIVES))
@pytest.mark.parametrize("prior_name", sorted(PRIORS))
@pytest.mark.parametrize("guide_name", sorted(GUIDES))
def test_every_guide_prior_and_objective_trains(guide_name, prior_name, objective):
    model, guide, batches = tiny_setup(guide_name, prior_name)
    before = [p.detach().clone() for p in list(model.parameters()) + list(guide.parameters())]
    config = TrainConfig(epochs=1, prior_lr=1e-3)
    history = fit(model, guide, batches, config, elbo=OBJECTIVES[objective](2), progress=False)
    assert math.isfinite(history[0]["loss"])
    after = list(model.parameters()) + list(guide.parameters())
    untrained = energy_output_biases(model)  # f_α's constant offset: no gradient without a penalty
    assert all(not torch.equal(old, new) for old, new in zip(before, after) if id(new) not in untrained)


def test_the_mvae_objective_trains_the_poe_guide():
    model, guide, batches = tiny_setup("poe", "ebm")
    history = fit(model, guide, batches, TrainConfig(epochs=1), elbo=SubsampledELBO(IWAE(2)), progress=False)
    assert math.isfinite(history[0]["loss"])
