"""The two-stage fit's table of ``q(z | X)``: the same posterior, the same draws and the same fit as
encoding every batch again."""

import pytest
import torch
from pyro.distributions import Gamma
from torch import nn

from models import MultimodalVAE
from pyro_mmebm import EBMPriorConfig, EnergyBasedPrior, TrainConfig
from pyro_mmebm.data import InMemoryBatches
from pyro_mmebm.distributions import StratifiedMixtureOfExperts
from pyro_mmebm.likelihoods import Likelihood
from pyro_mmebm.networks import MLPDecoder
from pyro_mmebm.two_stage import PosteriorTable, fit_prior_to_posterior, freeze
from tests.test_guides import LATENT_DIM, SHAPES, make_guide

EXAMPLES = 40


def data() -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(3)
    return {name: torch.randn(EXAMPLES, *shape, generator=generator) for name, shape in SHAPES.items()}


def as_items(modalities: dict[str, torch.Tensor]) -> list[tuple[dict[str, torch.Tensor], int]]:
    return [({name: x[i] for name, x in modalities.items()}, 0) for i in range(EXAMPLES)]


@pytest.mark.parametrize("name", ["moe", "poe", "mopoe", "private"])
def test_table_gives_the_guides_posterior_and_its_draws(name):
    guide = make_guide(name)
    modalities = data()
    table = PosteriorTable.of(guide, as_items(modalities), batch_size=7, device=torch.device("cpu"))
    assert not any(m.training for m in guide.modules()) and not any(p.requires_grad for p in guide.parameters())
    rows = torch.arange(5, 17)
    expected = guide.posterior({n: x[rows] for n, x in modalities.items()})
    stored = table.posterior({"loc": table.loc[rows], "scale": table.scale[rows]})
    assert type(stored) is type(expected) and stored.batch_shape == expected.batch_shape
    assert table.stratified == isinstance(expected, StratifiedMixtureOfExperts)
    torch.manual_seed(0)
    draw = expected.sample()
    torch.manual_seed(0)
    torch.testing.assert_close(stored.sample(), draw, rtol=1e-6, atol=1e-6)


def test_a_fit_from_the_table_equals_the_fit_that_encodes_every_batch(tmp_path):
    """Same seed, same batches, same draws: the per-epoch losses agree to float rounding."""
    modalities = data()
    histories = []
    for use_table in (False, True):
        guide = make_guide("moe")
        torch.manual_seed(1)
        prior = EnergyBasedPrior(LATENT_DIM, EBMPriorConfig(hidden=8, depth=2, generation_steps=2))
        decoders = {name: MLPDecoder(LATENT_DIM, shape, hidden=(8,)) for name, shape in SHAPES.items()}
        model = MultimodalVAE(decoders, {name: Likelihood("normal", 1.0) for name in SHAPES}, prior)
        config = TrainConfig(epochs=2, seed=0)
        if use_table:
            freeze(guide)
            table = PosteriorTable.of(guide, as_items(modalities), batch_size=16, device=torch.device("cpu"))
            history = fit_prior_to_posterior(model, guide, table.loader(8), config, progress=False, posterior=table.posterior)
        else:
            loader = InMemoryBatches(modalities, None, 8)
            history = fit_prior_to_posterior(model, guide, loader, config, progress=False)
        histories.append([record["prior_loss"] for record in history])
    assert histories[0] == pytest.approx(histories[1], rel=1e-5)


class GammaGuide(nn.Module):
    modalities = ["a"]

    def posterior(self, batch):
        return Gamma(torch.ones(len(batch["a"]), 2), 1.0).to_event(1)


def test_a_posterior_that_is_no_location_scale_family_is_refused_by_name():
    items = [({"a": torch.zeros(3)}, 0)] * 4
    with pytest.raises(TypeError, match="location-scale family .* the guide's posterior is Independent"):
        PosteriorTable.of(GammaGuide(), items, batch_size=2, device=torch.device("cpu"))
