"""The guides: PoE in closed form, MoPoE against brute force, and every guide with missing modalities."""

import math

import pyro
import pytest
import torch
from pyro import poutine
from pyro.distributions import Laplace, Normal

from guides import (
    GUIDES,
    MixtureOfExpertsGuide,
    PrivateLatentGuide,
    ProductOfExpertsGuide,
    product_of_experts,
)
from models import MultimodalVAE
from pyro_mmebm.likelihoods import Likelihood
from pyro_mmebm.networks import MLPDecoder, MLPEncoder
from pyro_mmebm.priors import LaplacePrior

LATENT_DIM = 3
PRIVATE_DIM = 2
SHAPES = {"a": (4,), "b": (2, 3), "c": (5,)}
BATCH_SIZE = 6
# float32 log densities of order 10 agree to ~1e-5 whichever way the product is computed.
ATOL = 1e-4


def make_encoders(out_dim: int = LATENT_DIM) -> dict:
    return {name: MLPEncoder(shape, out_dim, hidden=(8,)) for name, shape in SHAPES.items()}


def make_batch(seed: int = 0) -> dict:
    generator = torch.Generator().manual_seed(seed)
    return {name: torch.randn(BATCH_SIZE, *shape, generator=generator) for name, shape in SHAPES.items()}


def make_guide(name: str):
    torch.manual_seed(0)
    if name == "private":
        return PrivateLatentGuide(make_encoders(LATENT_DIM + PRIVATE_DIM), LATENT_DIM, PRIVATE_DIM)
    return GUIDES[name](make_encoders(), LATENT_DIM)


def sequential_product(experts: list[tuple[torch.Tensor, torch.Tensor]], prior_expert: bool = True):
    """The product of Gaussians by multiplying in one expert at a time:
    N(μ1, v1) N(μ2, v2) ∝ N((μ1 v2 + μ2 v1) / (v1 + v2), v1 v2 / (v1 + v2))."""
    if prior_expert:
        experts = [(torch.zeros_like(experts[0][0]), torch.ones_like(experts[0][1]))] + list(experts)
    loc, var = experts[0][0], experts[0][1] ** 2
    for expert_loc, expert_scale in experts[1:]:
        expert_var = expert_scale**2
        loc = (loc * expert_var + expert_loc * var) / (var + expert_var)
        var = var * expert_var / (var + expert_var)
    return loc, var.sqrt()


def test_registry_builds_every_guide_from_encoders_and_latent_dim():
    assert set(GUIDES) == {"moe", "poe", "mopoe"}
    assert GUIDES["moe"] is MixtureOfExpertsGuide
    batch = make_batch()
    for name in GUIDES:
        guide = make_guide(name)
        trace = poutine.trace(guide).get_trace(batch, num_draws=guide.num_draws)
        assert trace.nodes["z"]["value"].shape == (guide.num_draws, BATCH_SIZE, LATENT_DIM)
    assert make_guide("poe").num_draws == 1
    assert make_guide("mopoe").num_draws == 2 ** len(SHAPES) - 1


@pytest.mark.parametrize("prior_expert", [True, False])
def test_product_of_experts_equals_closed_form(prior_expert):
    torch.manual_seed(0)
    locs, scales = torch.randn(3, BATCH_SIZE, LATENT_DIM), torch.rand(3, BATCH_SIZE, LATENT_DIM) + 0.2
    loc, scale = product_of_experts(locs, scales, torch.ones(1, 3), prior_expert=prior_expert)
    expected_loc, expected_scale = sequential_product(list(zip(locs, scales)), prior_expert)
    assert torch.allclose(loc[0], expected_loc, atol=1e-5) and torch.allclose(scale[0], expected_scale, atol=1e-5)
    # The product is the normalised pointwise product: log q(z) − Σ_i log q_i(z) is the same for all z.
    z = torch.randn(50, BATCH_SIZE, LATENT_DIM) * 2
    experts = Normal(locs, scales).log_prob(z.unsqueeze(1)).sum(1)
    if prior_expert:
        experts = experts + Normal(0.0, 1.0).log_prob(z)
    log_ratio = Normal(loc[0], scale[0]).log_prob(z) - experts
    assert torch.allclose(log_ratio, log_ratio[:1].expand_as(log_ratio), atol=ATOL)


def test_poe_guide_posterior_is_the_product_of_its_experts_and_the_prior():
    guide, batch = make_guide("poe"), make_batch()
    experts = [guide.expert_params(name, batch[name]) for name in SHAPES]
    expected_loc, expected_scale = sequential_product(experts)
    posterior = guide.posterior(batch)
    assert posterior.batch_shape == (BATCH_SIZE,) and posterior.event_shape == (LATENT_DIM,)
    assert torch.allclose(posterior.base_dist.loc, expected_loc, atol=1e-5)
    assert torch.allclose(posterior.base_dist.scale, expected_scale, atol=1e-5)
    without_prior = ProductOfExpertsGuide(guide.encoders, LATENT_DIM, prior_expert=False).posterior(batch)
    assert torch.allclose(without_prior.base_dist.scale, sequential_product(experts, False)[1], atol=1e-5)


def brute_force_mopoe_log_density(guide, batch, subsets, z):
    """log (1/|subsets|) Σ_S N(z; PoE of S and the prior), each PoE multiplied out one expert at a time."""
    experts = {name: guide.expert_params(name, batch[name]) for name in batch}
    components = []
    for subset in subsets:
        loc, scale = sequential_product([experts[name] for name in subset])
        components.append(Normal(loc, scale).log_prob(z).sum(-1))
    return torch.stack(components).logsumexp(0) - math.log(len(subsets))


def test_mopoe_mixture_density_equals_brute_force():
    guide, batch = make_guide("mopoe"), make_batch()
    subsets = [("a",), ("b",), ("c",), ("a", "b"), ("a", "c"), ("b", "c"), ("a", "b", "c")]
    assert guide.subsets == subsets
    posterior = guide.posterior(batch)
    assert posterior.batch_shape == (7, BATCH_SIZE)
    # Values with the stratum dimension (one draw per subset, as the guide draws them) and without.
    z = posterior.sample((4,))
    assert z.shape == (4, 7, BATCH_SIZE, LATENT_DIM)
    expected = brute_force_mopoe_log_density(guide, batch, subsets, z)
    assert torch.allclose(posterior.log_prob(z), expected, atol=ATOL)
    z_flat = torch.randn(5, BATCH_SIZE, LATENT_DIM)
    expected_flat = brute_force_mopoe_log_density(guide, batch, subsets, z_flat)
    assert torch.allclose(posterior.log_prob(z_flat), expected_flat, atol=ATOL)
    # Stratum k draws from the product of subset k: its empirical mean is that PoE's mean.
    loc, _ = sequential_product([guide.expert_params(name, batch[name]) for name in ("a", "c")])
    many = posterior.sample((4000,))[:, subsets.index(("a", "c"))]
    assert torch.allclose(many.mean(0), loc, atol=0.1)  # 4000 draws of scale <= 1: 4 standard errors < 0.07


def reference_log_density(name, guide, batch, z):
    """q(z | X_S) rebuilt from the guide's experts for the modalities present."""
    present = list(batch)
    if name == "poe":
        loc, scale = sequential_product([guide.expert_params(m, batch[m]) for m in present])
        return Normal(loc, scale).log_prob(z).sum(-1)
    if name == "mopoe":
        subsets = {1: [("a",)], 2: [("a",), ("c",), ("a", "c")]}[len(present)]
        return brute_force_mopoe_log_density(guide, batch, subsets, z)
    per_expert = []
    for m in present:
        if name == "private":
            loc, scale = guide.encoder_params(m, batch[m])
            loc, scale = loc[:, :LATENT_DIM], scale[:, :LATENT_DIM]
        else:
            loc, scale = guide.expert_params(m, batch[m])
        per_expert.append(Laplace(loc, scale).log_prob(z).sum(-1))
    return torch.stack(per_expert).logsumexp(0) - math.log(len(present))


@pytest.mark.parametrize("name", ["moe", "poe", "mopoe", "private"])
@pytest.mark.parametrize("present", [("a",), ("a", "c")])
def test_every_guide_encodes_from_any_subset_for_cross_generation(name, present):
    guide, full = make_guide(name), make_batch()
    batch = {m: full[m] for m in present}
    posterior = guide.posterior(batch)
    z = torch.randn(3, BATCH_SIZE, LATENT_DIM)
    assert torch.allclose(posterior.log_prob(z), reference_log_density(name, guide, batch, z), atol=ATOL)
    # Cross generation: decode the draws of q(z | X_S) into every modality, the missing ones included.
    model = MultimodalVAE(
        {m: MLPDecoder(LATENT_DIM, shape, hidden=(8,)) for m, shape in SHAPES.items()},
        {m: Likelihood("bernoulli") for m in SHAPES},
        LaplacePrior(LATENT_DIM),
    )
    draws = posterior.sample()
    strata = {"moe": len(present), "private": len(present), "poe": None, "mopoe": 2 ** len(present) - 1}[name]
    expected_batch = (BATCH_SIZE,) if strata is None else (strata, BATCH_SIZE)
    assert draws.shape == expected_batch + (LATENT_DIM,)
    generated = model.decode(draws)
    assert {m: tuple(x.shape) for m, x in generated.items()} == {m: expected_batch + s for m, s in SHAPES.items()}


def test_only_the_poe_guide_runs_as_a_pyro_guide_on_a_partial_batch():
    partial = {"a": make_batch()["a"]}
    trace = poutine.trace(make_guide("poe")).get_trace(partial, num_draws=1)
    assert trace.nodes["z"]["value"].shape == (1, BATCH_SIZE, LATENT_DIM)
    for name in ("moe", "mopoe", "private"):
        with pytest.raises(ValueError, match="missing modality"):
            make_guide(name)(partial)


@pytest.mark.parametrize("name", ["poe", "mopoe"])
def test_guides_report_a_wrong_num_draws_or_encoder_output(name):
    guide, batch = make_guide(name), make_batch()
    with pytest.raises(ValueError, match="num_draws=2"):
        guide(batch, num_draws=2)
    wrong = GUIDES[name](make_encoders(LATENT_DIM + 1), LATENT_DIM)
    with pytest.raises(ValueError, match="latent_dim = 3"):
        wrong.posterior(batch)


def test_guides_keep_their_parameters_out_of_the_param_store():
    pyro.clear_param_store()
    guide = make_guide("mopoe")
    poutine.trace(guide).get_trace(make_batch(), num_draws=guide.num_draws)
    assert len(pyro.get_param_store()) == 0
