"""The model with shared and modality-specific latents ("Ours+") and its guide."""

import math

import pytest
import torch
from pyro import poutine
from pyro.infer import Trace_ELBO

from guides import PrivateLatentGuide
from models.private_latents import PrivateLatentVAE
from pyro_mmebm import EBMPriorConfig, LangevinConfig, TrainConfig, fit
from pyro_mmebm.likelihoods import Likelihood
from pyro_mmebm.networks import MLPDecoder, MLPEncoder
from pyro_mmebm.objectives import OBJECTIVES, IWAE
from pyro_mmebm.priors import PRIORS
from tests.reference import energy_output_biases

LATENT_DIM = 3
PRIVATE_DIM = 2
SHAPES = {"a": (4,), "b": (2, 3)}
BATCH_SIZE = 5


def make_model_and_guide(prior_name: str = "ebm"):
    torch.manual_seed(0)
    options = [EBMPriorConfig(hidden=8, depth=2, langevin=LangevinConfig(steps=2))] if prior_name.startswith("ebm") else []
    model = PrivateLatentVAE(
        {name: MLPDecoder(LATENT_DIM + PRIVATE_DIM, shape, hidden=(8,)) for name, shape in SHAPES.items()},
        {name: Likelihood("bernoulli") for name in SHAPES},
        PRIORS[prior_name](LATENT_DIM, *options),
        PRIVATE_DIM,
    )
    encoders = {name: MLPEncoder(shape, LATENT_DIM + PRIVATE_DIM, hidden=(8,)) for name, shape in SHAPES.items()}
    return model, PrivateLatentGuide(encoders, LATENT_DIM, PRIVATE_DIM)


def make_batch(seed: int = 0) -> dict:
    generator = torch.Generator().manual_seed(seed)
    return {name: torch.rand(BATCH_SIZE, *shape, generator=generator).round() for name, shape in SHAPES.items()}


def test_sites_and_shapes_of_model_and_guide():
    model, guide = make_model_and_guide()
    batch = make_batch()
    guide_trace = poutine.trace(guide).get_trace(batch, num_draws=guide.num_draws)
    model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(batch, num_draws=guide.num_draws)
    draws = len(SHAPES)
    assert guide_trace.nodes["z"]["value"].shape == (draws, BATCH_SIZE, LATENT_DIM)
    for name in SHAPES:
        w = guide_trace.nodes[f"w_{name}"]
        assert w["value"].shape == (draws, BATCH_SIZE, PRIVATE_DIM)
        assert model_trace.nodes[f"w_{name}"]["value"] is w["value"]
        assert model_trace.nodes[f"x_{name}"]["is_observed"]
    # The guide's w_i depends on x_i only: changing x_b leaves q(w_a | x_a) unchanged.
    other = dict(batch, b=1 - batch["b"])
    q_w_a = guide.private_posterior(batch)["a"].base_dist
    assert torch.equal(q_w_a.loc, guide.private_posterior(other)["a"].base_dist.loc)
    # Without a batch, the model generates every modality, each from its own prior w_i.
    generated = poutine.trace(model).get_trace(batch_size=BATCH_SIZE)
    assert {name for name in generated.nodes if name.startswith(("w_", "x_"))} == {"w_a", "w_b", "x_a", "x_b"}


def test_one_sample_iwae_equals_the_elbo():
    model, guide = make_model_and_guide("laplace")
    batch = make_batch()
    torch.manual_seed(1)
    elbo = Trace_ELBO(max_plate_nesting=2)(model, guide)(batch, num_draws=guide.num_draws).item()
    torch.manual_seed(1)
    iwae = IWAE(1)(model, guide)(batch, num_draws=guide.num_draws).item()
    assert iwae == pytest.approx(elbo, rel=1e-6)


def test_the_other_experts_draws_take_w_from_the_auxiliary_prior():
    # MMVAE+: in the draw of expert i, w_i comes from q(w_i | x_i) and every other w_j from r_j.
    model, guide = make_model_and_guide("laplace")
    with torch.no_grad():
        guide.auxiliary_log_scale["b"].fill_(math.log(3.0))
    batch = make_batch()
    trace = poutine.trace(guide).get_trace(batch, num_draws=guide.num_draws)
    q_w = guide.private_posterior(batch)
    for expert, name in enumerate(SHAPES):
        fn = trace.nodes[f"w_{name}"]["fn"].base_dist
        assert fn.batch_shape == (len(SHAPES), BATCH_SIZE, PRIVATE_DIM)
        for row in range(len(SHAPES)):
            if row == expert:
                assert torch.equal(fn.loc[row], q_w[name].base_dist.loc)
                assert torch.equal(fn.scale[row], q_w[name].base_dist.scale)
            else:
                r = guide.auxiliary_prior(name).base_dist
                assert torch.equal(fn.loc[row], r.loc.expand(BATCH_SIZE, -1))
                assert torch.equal(fn.scale[row], r.scale.expand(BATCH_SIZE, -1))
    assert torch.allclose(guide.auxiliary_prior("b").base_dist.scale, torch.full((PRIVATE_DIM,), 3.0))
    # So x_b's own data never reaches w_b in expert a's draw: changing x_b, same seed, same draw there.
    other = dict(batch, b=1 - batch["b"])
    torch.manual_seed(3)
    first = poutine.trace(guide).get_trace(batch, num_draws=guide.num_draws).nodes["w_b"]["value"]
    torch.manual_seed(3)
    second = poutine.trace(guide).get_trace(other, num_draws=guide.num_draws).nodes["w_b"]["value"]
    assert torch.equal(first[0], second[0]) and not torch.equal(first[1], second[1])


def test_elbo_is_mmvae_plus_objective_plus_the_auxiliary_kl_terms():
    # Written out for one shared draw: (1/m) Σ_i [log p(z_i) − log q(z_i | X) + log p0(w_i) − log q(w_i | x_i)
    # + Σ_j log p(x_j | z_i, w_j^(i)) + Σ_{j≠i} (log p0(w_j^(i)) − log r_j(w_j^(i)))], summed over the batch.
    model, guide = make_model_and_guide("laplace")
    with torch.no_grad():
        for name in SHAPES:
            guide.auxiliary_log_scale[name].normal_(0.0, 0.3)
    batch = make_batch()
    guide_trace = poutine.trace(guide).get_trace(batch, num_draws=guide.num_draws)
    model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(batch, num_draws=guide.num_draws)
    pyro_elbo = model_trace.log_prob_sum() - guide_trace.log_prob_sum()

    shared, private = guide.posteriors(batch)
    z = guide_trace.nodes["z"]["value"]
    p0 = model.private_prior()
    total = model.prior().log_prob(z) - shared.log_prob(z)
    for i in range(len(SHAPES)):
        for j, name in enumerate(SHAPES):
            w = guide_trace.nodes[f"w_{name}"]["value"][i]
            if i == j:
                total[i] += p0.log_prob(w) - private[name].log_prob(w)
            else:
                total[i] += p0.log_prob(w) - guide.auxiliary_prior(name).log_prob(w)
            params = model.decoders[name](torch.cat([z[i], w], -1))
            total[i] += model.likelihoods[name](params, 1).log_prob(batch[name])
    torch.testing.assert_close(pyro_elbo, total.mean(0).sum(), rtol=1e-5, atol=1e-4)


def test_cross_generation_draws_w_from_the_learned_auxiliary_prior():
    model, guide = make_model_and_guide()
    with torch.no_grad():
        guide.auxiliary_log_scale["b"].fill_(-30.0)  # r_b is a point mass at 0
    batch = make_batch()
    torch.manual_seed(0)
    generated = model.cross_generate(guide, {"a": batch["a"]}, targets=["b"])
    torch.manual_seed(0)
    z = guide.posterior({"a": batch["a"]}).sample()[0]  # the one expert's draw
    expected = model.decode(z, {"b": torch.zeros(*z.shape[:-1], PRIVATE_DIM)}, modalities=["b"])
    assert list(generated) == ["b"]
    torch.testing.assert_close(generated["b"], expected["b"])


def test_cross_generation_keeps_one_experts_draw_per_example_uniformly():
    """From two modalities, each example's generation decodes the draw of one of the two experts,
    and each expert's in half of the examples (tolerance: 5 binomial standard deviations)."""
    model, guide = make_model_and_guide()
    n = 2000
    generator = torch.Generator().manual_seed(1)
    batch = {name: torch.rand(n, *shape, generator=generator).round() for name, shape in SHAPES.items()}
    torch.manual_seed(0)
    generated = model.cross_generate(guide, batch, targets=["a"])["a"]
    torch.manual_seed(0)  # the same draws: every expert's z, then q(w_i | x_i) in the batch's order
    shared, private = guide.posteriors(batch)
    z = shared.sample()
    w_a = private["a"].sample(z.shape[:-2])
    candidates = torch.stack([model.decode(z[k], {"a": w_a[k]}, modalities=["a"])["a"] for k in range(2)])
    matches = (candidates == generated).flatten(2).all(-1)  # (expert, example)
    assert bool((matches.sum(0) >= 1).all())  # every example is one expert's decoded draw
    share = matches[0].float().mean().item()
    assert abs(share - 0.5) < 5 * math.sqrt(0.25 / n)


def test_decode_uses_given_private_latents_and_draws_the_others():
    model, guide = make_model_and_guide()
    z = torch.randn(7, LATENT_DIM)
    w_a = torch.randn(7, PRIVATE_DIM)
    first, second = model.decode(z, {"a": w_a}), model.decode(z, {"a": w_a})
    assert torch.equal(first["a"], second["a"])  # w_a given: deterministic
    assert not torch.equal(first["b"], second["b"])  # w_b drawn from its prior
    assert {name: tuple(x.shape) for name, x in first.items()} == {"a": (7, 4), "b": (7, 2, 3)}
    with pytest.raises(ValueError, match="unknown modalities"):
        model.decode(z, {"c": w_a})
    with pytest.raises(ValueError, match=r"cannot decode unknown modalities \['c'\]"):
        model.decode(z, modalities=["a", "c"])


def test_cross_generation_prior_is_explicit():
    model, _ = make_model_and_guide()
    assert torch.equal(model.private_prior().base_dist.scale, torch.ones(PRIVATE_DIM))
    assert torch.equal(model.private_prior(auxiliary_scale=4.0).base_dist.scale, torch.full((PRIVATE_DIM,), 4.0))
    with pytest.raises(ValueError, match="auxiliary_scale"):
        model.private_prior(auxiliary_scale=0.0)
    # The wider auxiliary prior spreads the cross-generated outputs further.
    torch.manual_seed(0)
    z = torch.zeros(2000, LATENT_DIM)
    narrow = model.decode(z)["b"].std(0).mean()
    wide = model.decode(z, auxiliary_scale=4.0)["b"].std(0).mean()
    assert wide > 1.5 * narrow


@pytest.mark.parametrize("present", [("a",), ("b",), ("a", "b")])
def test_cross_generate_from_any_subset(present):
    model, guide = make_model_and_guide()
    full = make_batch()
    batch = {name: full[name] for name in present}
    generated = model.cross_generate(guide, batch, auxiliary_scale=2.0)
    expected = {name: (BATCH_SIZE,) + shape for name, shape in SHAPES.items()}
    assert {name: tuple(x.shape) for name, x in generated.items()} == expected
    assert list(model.cross_generate(guide, batch, targets=["b"])) == ["b"]
    assert set(guide.private_posterior(batch)) == set(present)
    assert guide.posterior(batch).batch_shape == (len(present), BATCH_SIZE)
    z, means = model.generate(3)
    assert z.shape == (3, LATENT_DIM) and means["b"].shape == (3, 2, 3)


def test_errors_name_the_problem():
    model, guide = make_model_and_guide()
    batch = make_batch()
    with pytest.raises(ValueError, match="num_draws=1"):
        guide(batch, num_draws=1)
    with pytest.raises(ValueError, match="latent_dim \\+ private_dim"):
        PrivateLatentGuide({"a": MLPEncoder((4,), LATENT_DIM)}, LATENT_DIM, PRIVATE_DIM).posterior({"a": batch["a"]})
    with pytest.raises(ValueError, match="missing modality"):
        model({"a": batch["a"]})


@pytest.mark.parametrize("objective", sorted(OBJECTIVES))
@pytest.mark.parametrize("prior_name", ["ebm", "laplace"])
def test_trains_with_every_objective(prior_name, objective):
    model, guide = make_model_and_guide(prior_name)
    before = [p.detach().clone() for p in list(model.parameters()) + list(guide.parameters())]
    batches = [make_batch(0), make_batch(1)]
    history = fit(model, guide, batches, TrainConfig(epochs=1), elbo=OBJECTIVES[objective](2), progress=False)
    assert math.isfinite(history[0]["loss"])
    after = list(model.parameters()) + list(guide.parameters())
    untrained = energy_output_biases(model)  # f_α's constant offset: no gradient without a penalty
    assert all(not torch.equal(old, new) for old, new in zip(before, after) if id(new) not in untrained)
