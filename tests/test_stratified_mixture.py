"""The stratified mixture of experts and the MMVAE objective it gives with Trace_ELBO."""

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from pyro.infer import Trace_ELBO
from torch import nn

from guides import MixtureOfExpertsGuide
from models import MultimodalVAE
from pyro_mmebm import LaplacePrior, Likelihood, StratifiedMixtureOfExperts


def test_log_prob_equals_brute_force_mixture_density():
    torch.manual_seed(0)
    m, batch, d = 3, 4, 2
    loc, scale = torch.randn(m, batch, d).double(), torch.rand(m, batch, d).double() + 0.3
    mixture = StratifiedMixtureOfExperts(dist.Laplace(loc, scale).to_event(1))
    z = torch.randn(5, m, batch, d).double()
    brute = torch.zeros(5, m, batch, dtype=torch.float64)
    for s in range(5):
        for k in range(m):
            for b in range(batch):
                density = sum(
                    math.exp(dist.Laplace(loc[j, b], scale[j, b]).log_prob(z[s, k, b]).sum()) for j in range(m)
                ) / m
                brute[s, k, b] = math.log(density)
    assert torch.allclose(mixture.log_prob(z), brute, atol=1e-10)
    # A point without the stratum dimension is scored under the same mixture.
    assert torch.allclose(mixture.log_prob(z[0, 0]), brute[0, 0], atol=1e-10)


def test_rsample_draws_one_reparameterised_sample_per_expert():
    loc = torch.tensor([[-100.0], [0.0], [100.0]]).unsqueeze(1).expand(3, 6, 1).clone().requires_grad_()
    mixture = StratifiedMixtureOfExperts(dist.Normal(loc, 1.0).to_event(1))
    z = mixture.rsample()
    assert z.shape == (3, 6, 1) and mixture.has_rsample
    assert torch.all((z[:, :, 0] - loc[:, :, 0]).abs() < 6)  # stratum k comes from expert k
    z.sum().backward()
    assert torch.allclose(loc.grad, torch.ones_like(loc))
    expanded = mixture.expand([2, 3, 6])
    assert expanded.rsample().shape == (2, 3, 6, 1) and expanded.log_prob(expanded.sample()).shape == (2, 3, 6)


def test_rejects_experts_without_vector_event():
    with pytest.raises(ValueError, match="event shape"):
        StratifiedMixtureOfExperts(dist.Normal(torch.zeros(3, 2), 1.0))


class AffineEncoder(nn.Module):
    def __init__(self, n, d):
        super().__init__()
        self.linear = nn.Linear(n, 2 * d)
        self.d = d
        self.event_shape = (n,)

    def forward(self, x):
        h = self.linear(x)
        return h[:, : self.d], nn.functional.softplus(h[:, self.d :]) + 0.1


def tiny_vae(d=2, dims=(3, 4), prior=None, scales=None):
    names = [f"m{i}" for i in range(len(dims))]
    decoders = {n: nn.Linear(d, k) for n, k in zip(names, dims)}
    likelihoods = {n: Likelihood("normal") for n in names}
    model = MultimodalVAE(decoders, likelihoods, prior or LaplacePrior(d), likelihood_scales=scales)
    guide = MixtureOfExpertsGuide({n: AffineEncoder(k, d) for n, k in zip(names, dims)}, d)
    batch = {n: torch.randn(5, k) for n, k in zip(names, dims)}
    return model, guide, batch


def test_trace_elbo_equals_mmvae_objective_by_hand():
    torch.manual_seed(0)
    model, guide, batch = tiny_vae(scales={"m0": 2.5})
    guide_trace = poutine.trace(guide).get_trace(batch, num_draws=2)
    loss = Trace_ELBO(max_plate_nesting=2).differentiable_loss(
        model, poutine.replay(guide, trace=guide_trace), batch, num_draws=2
    )
    z = guide_trace.nodes["z"]["value"]  # (m=2 strata, batch=5, d=2)
    objective = 0.0
    for k in range(2):
        for b in range(5):
            zk = z[k, b]
            log_p = dist.Laplace(0.0, 1.0).log_prob(zk).sum()
            log_p = log_p + 2.5 * dist.Normal(model.decoders["m0"](zk), 1.0).log_prob(batch["m0"][b]).sum()
            log_p = log_p + dist.Normal(model.decoders["m1"](zk), 1.0).log_prob(batch["m1"][b]).sum()
            experts = [guide.encoders[n](batch[n][b : b + 1]) for n in ("m0", "m1")]
            log_q = torch.logsumexp(
                torch.stack([dist.Laplace(loc[0], scale[0]).log_prob(zk).sum() for loc, scale in experts]), 0
            ) - math.log(2)
            objective = objective + (log_p - log_q) / 2
    assert torch.allclose(-loss, objective, rtol=1e-5)


def test_model_and_guide_shapes_under_plates_predictive_and_render():
    model, guide, batch = tiny_vae()
    trace = poutine.trace(poutine.replay(model, trace=poutine.trace(guide).get_trace(batch))).get_trace(
        batch, num_draws=2
    )
    assert trace.nodes["z"]["value"].shape == (2, 5, 2)
    assert trace.nodes["x_m0"]["fn"].batch_shape == (2, 5) and trace.nodes["x_m0"]["fn"].event_shape == (3,)
    samples = pyro.infer.Predictive(model, guide=guide, num_samples=4)(batch, num_draws=2)
    assert samples["z"].shape == (4, 2, 5, 2)
    generated = pyro.infer.Predictive(model, num_samples=3)(batch_size=6)
    assert generated["x_m1"].shape == (3, 1, 6, 4)
    graph = pyro.render_model(model, model_kwargs={"batch": batch})
    assert "x_m0" in graph.source and "z" in graph.source
    z, means = model.generate(7)
    assert z.shape == (7, 2) and means["m0"].shape == (7, 3)


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda b: b.pop("m1"), "missing modality"),
        (lambda b: b.update(m2=torch.zeros(5, 4)), "unknown modality"),
        (lambda b: b.update(m1=torch.zeros(5, 6)), "item shape"),
    ],
)
def test_bad_input_raises_error_naming_the_problem(mutate, message):
    # What the model and guide check on every call: which modalities, and their item shapes. The values
    # are checked once where a batch enters fit or the evaluation (tests/test_safety.py).
    model, guide, batch = tiny_vae()
    mutate(batch)
    loss = Trace_ELBO(max_plate_nesting=2)(model, guide)
    with pytest.raises((ValueError, TypeError), match=message):
        loss(batch, num_draws=2)


def test_wrong_latent_dimension_is_named():
    model, guide, batch = tiny_vae(d=2)
    guide.latent_dim = 3
    with pytest.raises(ValueError, match="latent_dim = 3"):
        guide(batch)
    model, guide, batch = tiny_vae(d=2, prior=LaplacePrior(3))
    with pytest.raises((ValueError, RuntimeError)):
        Trace_ELBO(max_plate_nesting=2)(model, guide)(batch, num_draws=2)


def test_guide_rejects_mismatched_number_of_draws():
    model, guide, batch = tiny_vae()
    with pytest.raises(ValueError, match="num_draws=1"):
        guide(batch, num_draws=1)
