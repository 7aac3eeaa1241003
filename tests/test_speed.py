"""The faster step computes the same loss: channels_last, bf16 networks and compiled networks against today's."""

from __future__ import annotations

import pyro
import pytest
import torch
from pyro.infer import Trace_ELBO

from guides import MixtureOfExpertsGuide
from models import MultimodalVAE
from pyro_mmebm import EBMPriorConfig, EnergyBasedPrior, LangevinConfig, LaplacePrior, Likelihood, TrainConfig, fit
from pyro_mmebm.data import InMemoryBatches
from pyro_mmebm.networks import MLPDecoder, MLPEncoder, PolyMNISTDecoder, PolyMNISTEncoder
from pyro_mmebm.speed import compile_networks, networks, use_channels_last, use_mixed_precision

LATENT = 4


def polymnist(prior: str = "laplace") -> tuple[MultimodalVAE, MixtureOfExpertsGuide]:
    torch.manual_seed(0)
    names = ("m0", "m1")
    ebm = EBMPriorConfig(hidden=16, depth=2, langevin=LangevinConfig(steps=2))
    base = LaplacePrior(LATENT) if prior == "laplace" else EnergyBasedPrior(LATENT, ebm)
    model = MultimodalVAE({n: PolyMNISTDecoder(LATENT) for n in names}, {n: Likelihood("laplace", 0.75) for n in names}, base)
    guide = MixtureOfExpertsGuide({n: PolyMNISTEncoder(LATENT, scale_activation="softmax") for n in names}, LATENT)
    return model, guide


def batch() -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    return {name: torch.rand(6, 3, 28, 28, generator=generator) for name in ("m0", "m1")}


def loss_and_grads(model, guide, data) -> tuple[float, list[torch.Tensor]]:
    """The loss and the parameters' gradients for the draw of seed 3."""
    pyro.set_rng_seed(3)
    model.zero_grad()
    guide.zero_grad()
    loss = Trace_ELBO(max_plate_nesting=2)(model, guide)(data, num_draws=guide.num_draws)
    loss.backward()
    params = list(model.parameters()) + list(guide.parameters())
    return float(loss.detach()), [p.grad.clone() for p in params]


def test_networks_finds_every_encoder_and_decoder_once():
    model, guide = polymnist()
    assert len(list(networks(model, guide, model))) == 4


def test_channels_last_gives_the_same_loss_and_gradients():
    model, guide = polymnist()
    reference, reference_grads = loss_and_grads(model, guide, batch())
    use_channels_last(model, guide)
    conv = model.decoders["m0"].net[3].weight
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    loss, grads = loss_and_grads(model, guide, batch())
    assert loss == pytest.approx(reference, rel=1e-6)  # another summation order: float32 rounding
    for grad, expected in zip(grads, reference_grads):
        torch.testing.assert_close(grad, expected, rtol=1e-4, atol=1e-4)


def test_bf16_networks_keep_the_loss_within_rounding_and_the_ebm_in_float32():
    model, guide = polymnist(prior="ebm")
    reference, _ = loss_and_grads(model, guide, batch())
    use_mixed_precision(model, guide, precision="bf16")
    loc, scale = guide.encoders["m0"](batch()["m0"])
    assert loc.dtype == scale.dtype == torch.float32
    assert model.decoders["m0"](loc).dtype == torch.float32
    assert all(p.dtype == torch.float32 for p in model.prior.parameters())
    loss, grads = loss_and_grads(model, guide, batch())
    # bf16 keeps 8 bits of mantissa: each decoded pixel is off by ~0.4 %, the summed loss far less.
    assert loss == pytest.approx(reference, rel=1e-2)
    assert all(torch.isfinite(g).all() for g in grads)
    use_mixed_precision(model, guide, precision="fp32")
    assert loss_and_grads(model, guide, batch())[0] == pytest.approx(reference, rel=1e-6)


def test_an_unknown_precision_is_refused():
    model, guide = polymnist()
    with pytest.raises(ValueError, match="unknown precision 'fp16'"):
        use_mixed_precision(model, guide, precision="fp16")


@pytest.mark.slow  # compilation: most of a minute on one CPU core
def test_compiled_networks_give_the_same_loss_and_keep_their_parameter_names():
    torch.manual_seed(0)
    model = MultimodalVAE({"a": MLPDecoder(LATENT, (5,), hidden=(8,))}, {"a": Likelihood("normal", 0.5)}, LaplacePrior(LATENT))
    guide = MixtureOfExpertsGuide({"a": MLPEncoder((5,), LATENT, hidden=(8,))}, LATENT)
    data = {"a": torch.rand(6, 5)}
    names = [name for name, _ in model.named_parameters()] + [name for name, _ in guide.named_parameters()]
    reference, reference_grads = loss_and_grads(model, guide, data)
    compile_networks(model, guide)
    loss, grads = loss_and_grads(model, guide, data)
    assert [name for name, _ in model.named_parameters()] + [name for name, _ in guide.named_parameters()] == names
    assert loss == pytest.approx(reference, rel=1e-5)
    for grad, expected in zip(grads, reference_grads):
        torch.testing.assert_close(grad, expected, rtol=1e-4, atol=1e-5)


def test_a_fixed_seed_run_gives_the_same_losses_with_the_faster_settings():
    """``fit`` with ``channels_last`` (and with bf16 networks) against today's fit, same seed and data."""
    generator = torch.Generator().manual_seed(2)
    images = {name: torch.randint(0, 256, (16, 3, 28, 28), dtype=torch.uint8, generator=generator) for name in ("m0", "m1")}

    def losses(**settings) -> tuple[list[float], MultimodalVAE]:
        model, guide = polymnist()
        history = fit(model, guide, InMemoryBatches(images, None, 8), TrainConfig(epochs=2, seed=4, **settings),
                      progress=False)
        return [record["loss"] for record in history], model

    today, _ = losses()
    faster, model = losses(channels_last=True)
    assert faster == pytest.approx(today, rel=1e-5)
    assert model.decoders["m0"].net[3].weight.is_contiguous(memory_format=torch.channels_last)
    bf16, model = losses(precision="bf16")
    assert bf16 == pytest.approx(today, rel=1e-2)
    assert model.decoders["m0"].compute_dtype == torch.bfloat16
