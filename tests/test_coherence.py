"""Coherence, linear probes, result files and sample grids, on fakes whose answers are known.

The fakes follow the duck-typed model/guide API: a latent ``z`` carries a digit in ``z[..., 0]``
(and its one-hot code in ``z[..., 1:]``); a decoder renders digit ``k`` as an image filled with
``(k + 0.5) / 10`` (a caption as ``k`` repeated), which the fake classifier reads back exactly. A
*coherent* decoder renders the digit of ``z``; a *random* one an independent uniform digit.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from PIL import Image
from pyro.distributions import Normal
from torch import Tensor, nn
from torch.utils.data import DataLoader

from pyro_mmebm.distributions import StratifiedMixtureOfExperts
from pyro_mmebm.evaluation import (
    CrossCoherence,
    aggregate_posterior_coherence,
    cross_coherence,
    format_table,
    generated_digit_counts,
    joint_coherence,
    joint_coherence_of,
    linear_probe_accuracy,
    sample_mixture,
    save_cross_grid,
    save_joint_grid,
    save_results_json,
)

SHAPES = {"a": (1, 8, 8), "b": (3, 6, 6), "c": (3, 8, 8)}
CAPTION_LENGTH = 4
LATENT_DIM = 11


def render(digits: Tensor, shape: tuple[int, ...]) -> Tensor:
    """Images ``(*digits.shape, *shape)`` filled with ``(digit + 0.5) / 10``; captions of the digit."""
    if len(shape) == 1:
        return digits.unsqueeze(-1).expand(*digits.shape, *shape)
    return ((digits.float() + 0.5) / 10).reshape(digits.shape + (1,) * len(shape)).expand(digits.shape + shape)


def read(x: Tensor) -> Tensor:
    """The digit of a rendered batch ``(B, *shape)``."""
    if not x.is_floating_point():
        return x[:, 0]
    return (x.flatten(1).mean(1) * 10 - 0.5).round().long()


def latent(digits: Tensor) -> Tensor:
    return torch.cat([digits.float().unsqueeze(-1), nn.functional.one_hot(digits, 10).float()], -1)


class ReadDigit(nn.Module):
    """A classifier that reads the digit of a rendered image: logits peak at it."""

    def forward(self, x: Tensor) -> Tensor:
        level = x.flatten(1).mean(1) * 10 - 0.5
        return -(level.unsqueeze(-1) - torch.arange(10.0)) ** 2


class FakeModel(nn.Module):
    def __init__(self, shapes: dict[str, tuple[int, ...]], coherent: bool = True) -> None:
        super().__init__()
        self.shapes = shapes
        self.coherent = coherent
        self.decoded: list[list[str]] = []  # the modalities of each decode call

    @property
    def modalities(self) -> list[str]:
        return list(self.shapes)

    def prior(self) -> Normal:
        return Normal(torch.zeros(LATENT_DIM), 1.0).to_event(1)

    def decode(self, z: Tensor, modalities: list[str] | None = None) -> dict[str, Tensor]:
        digits = z[..., 0].round().clamp(0, 9).long()
        self.decoded.append(list(modalities or self.shapes))
        return {
            name: render(digits if self.coherent else torch.randint(10, digits.shape), shape)
            for name, shape in self.shapes.items()
            if modalities is None or name in modalities
        }

    def generate(self, num_samples: int) -> tuple[Tensor, dict[str, Tensor]]:
        z = latent(torch.randint(10, (num_samples,)))
        return z, self.decode(z)


class FakeGuide(nn.Module):
    """A mixture of experts, each centred on the latent of the digit its input shows (or on noise)."""

    def __init__(self, modalities: list[str], informative: bool = True) -> None:
        super().__init__()
        self.modalities = modalities
        self.informative = informative

    def posterior(self, batch: dict[str, Tensor]) -> StratifiedMixtureOfExperts:
        locs = [
            latent(read(batch[name])) if self.informative else torch.randn(len(batch[name]), LATENT_DIM)
            for name in self.modalities
            if name in batch
        ]
        return StratifiedMixtureOfExperts(Normal(torch.stack(locs), 0.01).to_event(1))


def loader(shapes: dict[str, tuple[int, ...]], n: int, batch_size: int = 500, seed: int = 1) -> DataLoader:
    digits = torch.randint(10, (n,), generator=torch.Generator().manual_seed(seed))
    items = [({name: render(d, shape) for name, shape in shapes.items()}, d) for d in digits]
    return DataLoader(items, batch_size=batch_size)


CLASSIFIERS = {name: ReadDigit() for name in SHAPES}


def binomial_tolerance(p: float, n: int, sds: float = 5.0) -> float:
    """``sds`` standard deviations of a fraction of ``n`` Bernoulli(``p``) trials."""
    return sds * math.sqrt(p * (1 - p) / n)


@pytest.mark.parametrize("sample_shape", [(), (2,)])
def test_sample_mixture_picks_each_stratum_uniformly(sample_shape):
    n = 6000
    experts = Normal(torch.tensor([0.0, 10.0, 20.0]).reshape(3, 1, 1).expand(3, n, 1), 0.1).to_event(1)
    z = sample_mixture(StratifiedMixtureOfExperts(experts), torch.Size(sample_shape))
    assert z.shape == sample_shape + (n, 1)
    stratum = (z / 10).round()
    assert ((z - 10 * stratum).abs() < 1).all()  # each value is a draw of one expert
    for k in range(3):
        assert abs(float((stratum == k).float().mean()) - 1 / 3) < binomial_tolerance(1 / 3, stratum.numel())


def test_sample_mixture_shapes():
    inner = Normal(torch.zeros(4, 2, 5, 3), 1.0).to_event(1)  # strata 4, batch (2, 5)
    assert sample_mixture(StratifiedMixtureOfExperts(inner)).shape == (2, 5, 3)
    assert sample_mixture(Normal(torch.zeros(7, 3), 1.0).to_event(1), torch.Size([2])).shape == (2, 7, 3)


def test_coherent_generator_is_perfectly_coherent():
    model, guide = FakeModel(SHAPES), FakeGuide(list(SHAPES))
    assert joint_coherence(model, CLASSIFIERS, 1000, batch_size=300) == 1.0
    result = cross_coherence(model, guide, CLASSIFIERS, loader(SHAPES, 200, batch_size=64))
    assert result.num_examples == 200
    assert len(result.accuracy) == 3 * 3  # per target: 2 single sources and 1 pair of the others
    assert set(result.pairs) == {(i, j) for i in SHAPES for j in SHAPES if i != j}
    assert all(acc == 1.0 for acc in result.accuracy.values())
    assert result.by_size == {j: {1: 1.0, 2: 1.0} for j in SHAPES}
    assert result.leave_one_out == {j: 1.0 for j in SHAPES}
    assert result.mean == 1.0


def test_random_generator_is_coherent_by_chance():
    model, guide = FakeModel(SHAPES, coherent=False), FakeGuide(list(SHAPES))
    # Three independent uniform digits agree with probability (1/10)^2.
    n = 20000
    assert abs(joint_coherence(model, CLASSIFIERS, n, batch_size=5000) - 0.01) < binomial_tolerance(0.01, n)
    n = 2000
    result = cross_coherence(model, guide, CLASSIFIERS, loader(SHAPES, n), max_source_size=1)
    assert set(result.accuracy) == {((i,), j) for i in SHAPES for j in SHAPES if i != j}
    for acc in result.accuracy.values():
        assert abs(acc - 0.1) < binomial_tolerance(0.1, n)


def test_digit_counts_expose_a_single_class_artefact():
    # "a" draws the mean image, read as 1 every time; "b" renders the digit. Samples agree only on 1s.
    labels = {"a": torch.tensor([1, 1, 1, 1, 1, 1]), "b": torch.tensor([1, 2, 1, 3, 1, 0])}
    assert joint_coherence_of(labels) == 0.5
    counts = generated_digit_counts(labels, num_classes=4)
    assert counts == {
        "coherent": [0, 3, 0, 0],
        "top_share": 1.0,
        "per_modality": {"a": [0, 6, 0, 0], "b": [1, 3, 1, 1]},
    }
    balanced = {"a": torch.arange(4), "b": torch.arange(4)}
    assert generated_digit_counts(balanced, num_classes=4)["top_share"] == 0.25
    assert generated_digit_counts({"a": torch.tensor([0]), "b": torch.tensor([1])})["top_share"] is None


def test_cross_coherence_decodes_only_the_modalities_left_out():
    model, guide = FakeModel(SHAPES), FakeGuide(list(SHAPES))
    cross_coherence(model, guide, CLASSIFIERS, loader(SHAPES, 10))
    assert sorted(model.decoded) == sorted([["b", "c"], ["a", "c"], ["a", "b"], ["c"], ["b"], ["a"]])


def test_cross_coherence_summaries():
    accuracy = {
        (("b",), "a"): 0.2, (("c",), "a"): 0.4, (("b", "c"), "a"): 0.9,
        (("a",), "b"): 0.6, (("c",), "b"): 0.8, (("a", "c"), "b"): 0.7,
    }
    result = CrossCoherence(("a", "b", "c"), accuracy, num_examples=10)
    assert result.targets == ["a", "b"]
    assert result.by_size["a"] == pytest.approx({1: 0.3, 2: 0.9})
    assert result.by_size["b"] == pytest.approx({1: 0.7, 2: 0.7})
    assert result.leave_one_out == {"a": 0.9, "b": 0.7}
    assert result.mean_by_size == pytest.approx({1: 0.5, 2: 0.8})
    assert result.mean == pytest.approx((0.5 + 0.7) / 2)
    assert result.to_dict()["accuracy"]["b+c->a"] == 0.9


def test_linear_probe_reads_the_label_from_an_informative_posterior():
    train, test = loader(SHAPES, 300, batch_size=100), loader(SHAPES, 300, seed=2)
    accuracy = linear_probe_accuracy(FakeGuide(list(SHAPES)), train, test, max_train_batches=2)
    assert accuracy == {"a": 1.0, "b": 1.0, "c": 1.0, "all": 1.0}
    chance = linear_probe_accuracy(FakeGuide(list(SHAPES), informative=False), train, test)
    assert all(acc < 0.25 for acc in chance.values())


def test_results_json_and_table(tmp_path):
    cross = CrossCoherence(("a", "b"), {(("a",), "b"): 0.5, (("b",), "a"): 0.25}, num_examples=4)
    path = save_results_json({"joint": torch.tensor(0.5), "cross": cross, ("a", "b"): 1}, tmp_path / "r" / "x.json")
    saved = json.loads(path.read_text())
    assert saved["cross"]["accuracy"] == {"a->b": 0.5, "b->a": 0.25}
    assert saved["joint"] == 0.5 and saved["a+b"] == 1
    table = format_table([{"model": "moe", "joint": 0.5, "cross": {"mean": 0.375}}, {"model": "ebm", "joint": 0.75}])
    assert table.splitlines() == [
        "| model | joint | cross/mean |",
        "|---|---|---|",
        "| moe | 0.500 | 0.375 |",
        "| ebm | 0.750 |  |",
    ]


def test_grids_are_pngs_of_the_expected_size(tmp_path):
    shapes = SHAPES | {"caption": (CAPTION_LENGTH,)}
    model, guide = FakeModel(shapes), FakeGuide(list(shapes))
    # Three image rows of 8 × 8 (b resized from 6 × 6) with 2-pixel padding; the caption is text.
    path = save_joint_grid(model, tmp_path / "joint.png", 5, decode_text=lambda x: [str(t.tolist()) for t in x])
    assert Image.open(path).size == (5 * 10 + 2, 3 * 10 + 2)
    assert len(path.with_suffix(".txt").read_text().splitlines()) == 5
    batch = next(iter(loader(shapes, 8)))
    path = save_cross_grid(model, guide, batch, "b", tmp_path / "cross.png", num_examples=4)
    assert Image.open(path).size == (4 * 10 + 2, (1 + 3) * 10 + 2)  # input row, then a, b, c
    assert not path.with_suffix(".txt").exists()


def test_aggregate_posterior_coherence_is_one_for_a_coherent_model_and_chance_for_a_random_one():
    guide = FakeGuide(list(SHAPES))
    assert aggregate_posterior_coherence(FakeModel(SHAPES), guide, CLASSIFIERS, loader(SHAPES, 300)) == 1.0
    n = 5000
    ceiling = aggregate_posterior_coherence(FakeModel(SHAPES, coherent=False), guide, CLASSIFIERS, loader(SHAPES, n))
    assert abs(ceiling - 0.01) < binomial_tolerance(0.01, n)  # three independent digits agree w.p. 1/100


class DigitInPrivateLatents(FakeModel):
    """Private latents that carry the digit: reconstruction (``cross_generate`` with every modality
    given) draws each ``w_i ~ q(w_i | x_i)`` and renders ``x_i``'s digit; ``decode(z)`` draws ``w_j`` from
    the prior and renders noise, as ``z`` carries no digit."""

    def __init__(self, shapes: dict[str, tuple[int, ...]]) -> None:
        super().__init__(shapes, coherent=False)

    def cross_generate(self, guide: nn.Module, batch: dict[str, Tensor], *, targets=None) -> dict[str, Tensor]:
        return {name: render(read(batch[name]), shape) for name, shape in self.shapes.items() if name in (targets or self.shapes)}


def test_aggregate_posterior_coherence_decodes_with_private_latents_from_their_prior():
    """The ceiling of a prior of ``z``: a digit carried by ``q(w | x)`` must not count."""
    n = 5000
    model = DigitInPrivateLatents(SHAPES)
    ceiling = aggregate_posterior_coherence(model, FakeGuide(list(SHAPES)), CLASSIFIERS, loader(SHAPES, n))
    assert abs(ceiling - 0.01) < binomial_tolerance(0.01, n)


@pytest.mark.parametrize(
    "entry", ["cross_coherence", "aggregate_posterior_coherence", "linear_probe_accuracy", "save_cross_grid"]
)
def test_loaders_and_batches_are_checked_as_they_enter(entry, tmp_path):
    model, guide = FakeModel(SHAPES), FakeGuide(list(SHAPES))
    in_0_255 = [({name: x * 255 for name, x in batch.items()}, labels) for batch, labels in loader(SHAPES, 20)]
    calls = {
        "cross_coherence": lambda: cross_coherence(model, guide, CLASSIFIERS, in_0_255),
        "aggregate_posterior_coherence": lambda: aggregate_posterior_coherence(model, guide, CLASSIFIERS, in_0_255),
        "linear_probe_accuracy": lambda: linear_probe_accuracy(guide, in_0_255, in_0_255),
        "save_cross_grid": lambda: save_cross_grid(model, guide, in_0_255[0], "b", tmp_path / "cross.png"),
    }
    with pytest.raises(ValueError, match="divide them by 255"):
        calls[entry]()


@pytest.mark.parametrize("entry", ["joint_coherence", "aggregate_posterior_coherence", "cross_coherence"])
def test_classifiers_of_modalities_the_model_lacks_are_refused_by_name(entry):
    model, guide = FakeModel(SHAPES), FakeGuide(list(SHAPES))
    classifiers = CLASSIFIERS | {"d": ReadDigit()}
    calls = {
        "joint_coherence": lambda: joint_coherence(model, classifiers, 10),
        "aggregate_posterior_coherence": lambda: aggregate_posterior_coherence(model, guide, classifiers, loader(SHAPES, 10)),
        "cross_coherence": lambda: cross_coherence(model, guide, classifiers, loader(SHAPES, 10)),
    }
    with pytest.raises(ValueError, match=r"classifiers for unknown modalities \['d'\]; the model has \['a', 'b', 'c'\]"):
        calls[entry]()
