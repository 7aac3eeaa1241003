"""Coherence of multimodal generations, latent linear probes, result tables and sample grids.

A generation is *coherent* when per-modality classifiers (:mod:`pyro_mmebm.evaluation.classifiers`)
read the same digit from it as from its source [1]:

- **joint coherence**: samples of the prior, decoded to every modality; the fraction on which all
  modality classifiers agree (:func:`joint_coherence`);
- **cross coherence**: ``z ~ q(z | X_S)`` from a subset ``S`` of a test example's modalities, decoded
  to a modality ``j ∉ S``; the fraction classified as the example's label (:func:`cross_coherence`),
  per single source (MMVAE's ``i → j`` table [1]) and averaged over the source subsets of each size
  (MoPoE [2], MMVAE+ [3]);
- **latent linear probe**: a logistic regression on the posterior mean of ``z`` (:func:`linear_probe_accuracy`).

The test-set objective is :func:`pyro_mmebm.training.evaluate_loss`.

The model and guide are modules used through their contracts
(:mod:`pyro_mmebm.contracts`): ``model.modalities``, ``model.decode(z)``, ``model.generate(n)``
(:class:`~pyro_mmebm.contracts.MultimodalModel`) and ``guide.posterior({name: x})``, ``q(z | X_S)``
for the modalities in the dict (:class:`~pyro_mmebm.contracts.Guide`). A model whose decoders need
more than ``z`` (private latents) generates with its ``cross_generate(guide, source_batch, targets=...)``
(:class:`~pyro_mmebm.contracts.CrossGeneratingModel`), one draw per example, like :func:`sample_mixture`.

[1] Shi, Siddharth, Paige, Torr (2019) "Variational Mixture-of-Experts Autoencoders for Multi-Modal
    Deep Generative Models". [2] Sutter, Daunhawer, Vogt (2021) "Generalized Multimodal ELBO".
[3] Palumbo, Daunhawer, Vogt (2023) "MMVAE+: Enhancing the Generative Quality of Multimodal VAEs
    without Compromises".
"""

from __future__ import annotations

import dataclasses
import itertools
from dataclasses import dataclass
from pathlib import Path
from statistics import fmean
from typing import Any, Callable, Iterable, Iterator, Mapping, Optional, Sequence

import torch
from pyro.distributions import TorchDistribution
from torch import Tensor, nn
from torch.nn import functional as F

from pyro_mmebm._torchvision import utils as tv_utils
from pyro_mmebm.batch import prepare_batch, split_batch
from pyro_mmebm.contracts import CrossGeneratingModel, Guide, MultimodalModel
from pyro_mmebm.atomic import atomic_save_json
from pyro_mmebm.distributions import StratifiedMixtureOfExperts
from pyro_mmebm.modes import eval_mode

ALL_MODALITIES = "all"
"""The key of the probe on the posterior given every modality in :func:`linear_probe_accuracy`."""


# --- helpers -------------------------------------------------------------------------------------


def _default_device(model: nn.Module) -> torch.device:
    parameter = next(model.parameters(), None)
    return parameter.device if parameter is not None else torch.device("cpu")


def _batches(
    loader: Iterable, num_batches: Optional[int], device: torch.device
) -> Iterator[tuple[dict[str, Tensor], Tensor]]:
    """``(modalities on device, labels)`` of the first ``num_batches`` items of ``loader`` (all when
    ``None``), each checked as it enters (:func:`~pyro_mmebm.batch.prepare_batch`)."""
    for item in itertools.islice(loader, num_batches):
        batch, labels = split_batch(item)
        if labels is None:
            raise ValueError("coherence needs labelled data: loader items must be (dict, labels) pairs")
        yield prepare_batch(batch, device), torch.as_tensor(labels).long()


def _check_classifiers(model: MultimodalModel, classifiers: Mapping[str, nn.Module]) -> None:
    """Refuse classifiers of modalities that ``model`` does not generate."""
    unknown = sorted(set(classifiers) - set(model.modalities))
    if unknown:
        raise ValueError(f"classifiers for unknown modalities {unknown}; the model has {list(model.modalities)}")


def _predict(classifier: nn.Module, x: Tensor) -> Tensor:
    return classifier(x).argmax(-1)


def sample_mixture(posterior: TorchDistribution, sample_shape: torch.Size = torch.Size()) -> Tensor:
    """Draw ``z`` from ``posterior`` without gradients, as one mixture draw per example.

    A :class:`~pyro_mmebm.distributions.StratifiedMixtureOfExperts` (batch ``(K, *batch)``) draws one
    ``z`` per stratum; here one stratum is kept per example, uniformly at random, so ``z`` follows the
    mixture ``(1/K) Σ_k q_k``: shape ``sample_shape + batch + (d,)``. Any other distribution is
    sampled as it is: shape ``sample_shape + batch_shape + event_shape``.
    """
    with torch.no_grad():
        z = posterior.sample(sample_shape)
    if not isinstance(posterior, StratifiedMixtureOfExperts):
        return z
    stratum_dim = len(sample_shape)
    picked_shape = z.shape[:stratum_dim] + (1,) + z.shape[stratum_dim + 1 : -1]
    picked = torch.randint(posterior.num_experts, picked_shape, device=z.device)
    index = picked.unsqueeze(-1).expand(picked.shape + z.shape[-1:])
    return z.gather(stratum_dim, index).squeeze(stratum_dim)


def posterior_mean(posterior: TorchDistribution, num_samples: int = 16) -> Tensor:
    """The mean of ``posterior`` per example, shape ``batch + (d,)`` (the stratum dimension averaged out).

    The mean of a stratified mixture is the average of its experts' means; a distribution without a
    closed-form mean is averaged over ``num_samples`` draws.
    """
    if isinstance(posterior, StratifiedMixtureOfExperts):
        return posterior_mean(posterior.experts, num_samples).mean(0)
    try:
        return posterior.mean
    except NotImplementedError:
        return sample_mixture(posterior, torch.Size([num_samples])).mean(0)


def generate_from(
    model: MultimodalModel, guide: Guide, source: Mapping[str, Tensor], targets: Optional[Sequence[str]] = None
) -> dict[str, Tensor]:
    """The mean of each of ``targets`` (default: every modality) given the modalities in ``source``:
    ``{name: (B, *item)}``.

    ``z`` is one mixture draw from ``guide.posterior(source)`` (:func:`sample_mixture`), decoded by
    ``model.decode``; a :class:`~pyro_mmebm.contracts.CrossGeneratingModel` uses its
    ``cross_generate(guide, source, targets=targets)`` instead. Only ``targets`` are decoded.
    """
    with torch.no_grad():
        if isinstance(model, CrossGeneratingModel):
            return model.cross_generate(guide, source, targets=targets)
        return model.decode(sample_mixture(guide.posterior(source)), targets)


# --- joint coherence -----------------------------------------------------------------------------


def generated_labels(
    model: MultimodalModel,
    classifiers: Mapping[str, nn.Module],
    num_samples: int,
    *,
    batch_size: int = 500,
    device: Optional[torch.device] = None,
) -> dict[str, Tensor]:
    """The labels that each modality's classifier gives ``num_samples`` prior samples decoded to it.

    :param classifiers: ``{modality: classifier}`` returning logits, on ``device``; modalities
        without a classifier (captions) are not classified.
    :returns: ``{modality: (num_samples,) long tensor}`` on the CPU, modalities in ``classifiers``'s order.
    """
    _check_classifiers(model, classifiers)
    if num_samples < 1 or batch_size < 1:
        raise ValueError(f"num_samples and batch_size must be positive, got {num_samples}, {batch_size}")
    device = device or _default_device(model)
    labels: dict[str, list[Tensor]] = {name: [] for name in classifiers}
    with eval_mode(model, *classifiers.values()), torch.no_grad():
        for start in range(0, num_samples, batch_size):
            _, means = model.generate(min(batch_size, num_samples - start))
            for name, classifier in classifiers.items():
                labels[name].append(_predict(classifier, means[name].to(device)).cpu())
    return {name: torch.cat(chunks) for name, chunks in labels.items()}


def joint_coherence(
    model: MultimodalModel,
    classifiers: Mapping[str, nn.Module],
    num_samples: int,
    *,
    batch_size: int = 500,
    device: Optional[torch.device] = None,
) -> float:
    """The fraction of ``num_samples`` prior samples on which every modality's classifier agrees.

    Each sample ``z ~ p(z)`` (``model.generate``) is decoded to every modality with a classifier; it
    counts when all of them predict the same digit (PolyMNIST: all five). If the decoders were
    independent of ``z`` and the labels uniform, this would be ``(1/10)^(m−1)``.
    For the labels themselves, see :func:`generated_labels`.
    """
    if len(classifiers) < 2:
        raise ValueError(f"joint coherence needs classifiers for two modalities or more, got {sorted(classifiers)}")
    labels = generated_labels(model, classifiers, num_samples, batch_size=batch_size, device=device)
    return joint_coherence_of(labels)


def joint_coherence_of(labels: Mapping[str, Tensor]) -> float:
    """The fraction of samples on which all modalities' labels (:func:`generated_labels`) agree."""
    stacked = torch.stack(list(labels.values()))
    return float((stacked == stacked[0]).all(0).float().mean())


def generated_digit_counts(labels: Mapping[str, Tensor], num_classes: int = 10) -> dict[str, Any]:
    """How the generated labels (:func:`generated_labels`) spread over the classes: a check that joint
    coherence is not an artefact.

    A decoder that has not learned the digit draws one blurred image for every ``z``, which its
    classifier reads as a single class (on PolyMNIST usually "1"); prior samples that the other
    decoders also happen to render as that class then count as coherent. Joint coherence means
    something only when the coherent samples spread over the classes as the data do.

    :returns: ``{"coherent": counts per class of the samples all modalities agree on,
        "top_share": the most common class's share of them (0.1 for balanced digits; None when none
        agree), "per_modality": {modality: counts per class}}``.
    """
    stacked = torch.stack(list(labels.values()))
    agree = (stacked == stacked[0]).all(0)
    coherent = torch.bincount(stacked[0][agree], minlength=num_classes)
    return {
        "coherent": coherent.tolist(),
        "top_share": float(coherent.max() / coherent.sum()) if coherent.sum() > 0 else None,
        "per_modality": {name: torch.bincount(x, minlength=num_classes).tolist() for name, x in labels.items()},
    }


def aggregate_posterior_coherence(
    model: MultimodalModel,
    guide: Guide,
    classifiers: Mapping[str, nn.Module],
    loader: Iterable,
    *,
    device: Optional[torch.device] = None,
    num_batches: Optional[int] = None,
) -> float:
    """Joint coherence of latents drawn from the aggregate posterior: the ceiling of a learned prior.

    Joint coherence decodes ``z ~ p(z)``. A prior equal to the aggregate posterior
    ``q(z) = E_data[q(z | X)]`` would draw, in effect, a data tuple and then ``z ~ q(z | X)``; here,
    for every tuple of ``loader``, one such ``z`` (one expert, uniformly at random:
    :func:`sample_mixture`) is decoded to every modality as generation decodes a prior sample
    (``model.decode``: a model with private latents draws each ``w_j`` from its prior, not from
    ``q(w_j | x_j)``, which would carry the tuple's digit past ``z``), and counts when all classifiers
    agree. A perfect prior of ``z`` reaches this number; the gap from a Laplace prior's joint coherence
    to it is what a learned prior can close.
    """
    _check_classifiers(model, classifiers)
    if len(classifiers) < 2:
        raise ValueError(f"joint coherence needs classifiers for two modalities or more, got {sorted(classifiers)}")
    device = device or _default_device(model)
    agree = total = 0
    with eval_mode(model, guide, *classifiers.values()), torch.no_grad():
        for batch, _ in _batches(loader, num_batches, device):
            z = sample_mixture(guide.posterior({name: batch[name] for name in model.modalities}))
            generated = model.decode(z)
            labels = torch.stack([_predict(c, generated[name].to(device)) for name, c in classifiers.items()])
            agree += int((labels == labels[0]).all(0).sum())
            total += labels.shape[1]
    if total == 0:
        raise ValueError("cannot compute a coherence on an empty loader")
    return agree / total


# --- cross coherence -----------------------------------------------------------------------------


def _subset_name(sources: Sequence[str]) -> str:
    return "+".join(sources)


@dataclass(frozen=True)
class CrossCoherence:
    """Cross coherence of every evaluated ``(sources S, target j)``, with ``j ∉ S``.

    :param modalities: the model's modalities, in order; source subsets list them in this order.
    :param accuracy: ``{(S, j): fraction of test examples whose generation of j from X_S is
        classified as their label}``.
    :param num_examples: the number of test examples behind each accuracy.
    """

    modalities: tuple[str, ...]
    accuracy: dict[tuple[tuple[str, ...], str], float]
    num_examples: int

    @property
    def targets(self) -> list[str]:
        """The modalities generated (those with a classifier), in model order."""
        present = {target for _, target in self.accuracy}
        return [name for name in self.modalities if name in present]

    @property
    def pairs(self) -> dict[tuple[str, str], float]:
        """``{(i, j): accuracy}`` from single sources: MMVAE's table (MNIST→SVHN, SVHN→MNIST)."""
        return {(sources[0], target): acc for (sources, target), acc in self.accuracy.items() if len(sources) == 1}

    @property
    def by_size(self) -> dict[str, dict[int, float]]:
        """``{j: {k: mean accuracy over the evaluated source subsets of size k}}``."""
        groups: dict[str, dict[int, list[float]]] = {}
        for (sources, target), acc in self.accuracy.items():
            groups.setdefault(target, {}).setdefault(len(sources), []).append(acc)
        return {
            target: {k: fmean(groups[target][k]) for k in sorted(groups[target])}
            for target in self.targets
        }

    @property
    def leave_one_out(self) -> dict[str, float]:
        """``{j: accuracy}`` from all the other modalities (where evaluated)."""
        result = {}
        for target in self.targets:
            others = tuple(name for name in self.modalities if name != target)
            if (others, target) in self.accuracy:
                result[target] = self.accuracy[(others, target)]
        return result

    @property
    def mean_by_size(self) -> dict[int, float]:
        """``{k: mean over targets j of by_size[j][k]}``: MoPoE's coherence per number of inputs."""
        sizes = sorted({k for per_size in self.by_size.values() for k in per_size})
        return {k: fmean(per[k] for per in self.by_size.values() if k in per) for k in sizes}

    @property
    def mean(self) -> float:
        """The mean over targets ``j`` of the mean accuracy over all evaluated subsets not containing
        ``j`` (MMVAE+'s conditional coherence; for two modalities, the mean of the two pairs)."""
        per_target: dict[str, list[float]] = {}
        for (_, target), acc in self.accuracy.items():
            per_target.setdefault(target, []).append(acc)
        return fmean(fmean(accs) for accs in per_target.values())

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready summary: string keys ``"a+b->c"`` for ``({a, b}, c)``."""
        return {
            "num_examples": self.num_examples,
            "accuracy": {f"{_subset_name(s)}->{t}": acc for (s, t), acc in self.accuracy.items()},
            "by_size": {t: {str(k): acc for k, acc in per.items()} for t, per in self.by_size.items()},
            "leave_one_out": self.leave_one_out,
            "mean_by_size": {str(k): acc for k, acc in self.mean_by_size.items()},
            "mean": self.mean,
        }


def source_subsets(
    modalities: Sequence[str], targets: Sequence[str], max_size: Optional[int] = None
) -> list[tuple[str, ...]]:
    """The non-empty subsets of ``modalities`` (up to ``max_size``) that leave out at least one target."""
    max_size = len(modalities) - 1 if max_size is None else min(max_size, len(modalities) - 1)
    return [
        subset
        for size in range(1, max_size + 1)
        for subset in itertools.combinations(modalities, size)
        if any(target not in subset for target in targets)
    ]


def cross_coherence(
    model: MultimodalModel,
    guide: Guide,
    classifiers: Mapping[str, nn.Module],
    loader: Iterable,
    *,
    device: Optional[torch.device] = None,
    num_batches: Optional[int] = None,
    max_source_size: Optional[int] = None,
) -> CrossCoherence:
    """Cross coherence of ``model`` and ``guide`` on the labelled test ``loader``.

    For every non-empty source subset ``S`` (of at most ``max_source_size`` modalities; default all
    but one), one ``z`` per example from ``q(z | X_S)`` is decoded to every target ``j ∉ S`` with a
    classifier (:func:`generate_from`), and counts when classified as the example's label.

    :param classifiers: ``{modality: classifier}`` returning logits, on ``device``.
    :param loader: items ``({modality: tensor}, labels)`` with every modality of the model.
    :param num_batches: use only the first ``num_batches`` items of ``loader``.
    """
    _check_classifiers(model, classifiers)
    if len(model.modalities) < 2:
        raise ValueError("cross coherence needs at least two modalities")
    device = device or _default_device(model)
    modalities = tuple(model.modalities)
    targets = [name for name in modalities if name in classifiers]
    subsets = source_subsets(modalities, targets, max_source_size)
    correct = {(s, t): 0 for s in subsets for t in targets if t not in s}
    total = 0
    with eval_mode(model, guide, *classifiers.values()), torch.no_grad():
        for batch, labels in _batches(loader, num_batches, device):
            labels = labels.to(device)
            for sources in subsets:
                missing = [target for target in targets if target not in sources]
                generated = generate_from(model, guide, {name: batch[name] for name in sources}, missing)
                for target in missing:
                    prediction = _predict(classifiers[target], generated[target].to(device))
                    correct[(sources, target)] += int((prediction == labels).sum())
            total += labels.numel()
    if total == 0:
        raise ValueError("cannot compute cross coherence on an empty loader")
    return CrossCoherence(modalities, {key: count / total for key, count in correct.items()}, total)


# --- latent linear probe -------------------------------------------------------------------------


def _latent_features(
    guide: Guide, loader: Iterable, device: torch.device, num_batches: Optional[int]
) -> tuple[dict[str, Tensor], Tensor]:
    """Posterior means ``{modality or "all": (N, d)}`` and labels ``(N,)``, on the CPU."""
    features: dict[str, list[Tensor]] = {}
    labels = []
    for batch, batch_labels in _batches(loader, num_batches, device):
        batch = {name: batch[name] for name in guide.modalities if name in batch}
        posteriors = {name: guide.posterior({name: x}) for name, x in batch.items()}
        posteriors[ALL_MODALITIES] = guide.posterior(batch)
        for key, posterior in posteriors.items():
            features.setdefault(key, []).append(posterior_mean(posterior).cpu())
        labels.append(batch_labels)
    if not labels:
        raise ValueError("cannot fit or test a linear probe on an empty loader")
    return {key: torch.cat(chunks) for key, chunks in features.items()}, torch.cat(labels)


def fit_logistic_regression(
    features: Tensor, labels: Tensor, num_classes: int, *, max_iter: int = 300, weight_decay: float = 1e-4
) -> nn.Linear:
    """Multinomial logistic regression ``features (N, d) → logits (N, num_classes)``, fitted by L-BFGS
    on the mean cross-entropy plus ``weight_decay · ‖W‖²`` (a convex problem, so started at zero)."""
    linear = nn.Linear(features.shape[-1], num_classes)
    nn.init.zeros_(linear.weight)
    nn.init.zeros_(linear.bias)
    optimizer = torch.optim.LBFGS(linear.parameters(), lr=1.0, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure() -> Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(linear(features), labels) + weight_decay * linear.weight.pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
    return linear.requires_grad_(False)


def linear_probe_accuracy(
    guide: Guide,
    train_loader: Iterable,
    test_loader: Iterable,
    *,
    device: Optional[torch.device] = None,
    max_train_batches: Optional[int] = None,
    max_test_batches: Optional[int] = None,
    max_iter: int = 300,
) -> dict[str, float]:
    """Test accuracy of a logistic regression of the label on the posterior mean of ``z``.

    One probe per modality, on the unimodal posterior ``q(z | x_i)`` (``guide.posterior({i: x_i})``),
    and one on the posterior given every modality (key ``"all"``); the features are standardised
    with the training set's mean and standard deviation (:func:`fit_logistic_regression`).

    :returns: ``{modality: accuracy, ..., "all": accuracy}``.
    """
    device = device or _default_device(guide)
    with eval_mode(guide), torch.no_grad():
        train_features, train_labels = _latent_features(guide, train_loader, device, max_train_batches)
        test_features, test_labels = _latent_features(guide, test_loader, device, max_test_batches)
    num_classes = int(max(train_labels.max(), test_labels.max())) + 1
    accuracy = {}
    for key, train_x in train_features.items():
        loc, scale = train_x.mean(0), train_x.std(0).clamp_min(1e-6)
        probe = fit_logistic_regression((train_x - loc) / scale, train_labels, num_classes, max_iter=max_iter)
        prediction = probe((test_features[key] - loc) / scale).argmax(-1)
        accuracy[key] = float((prediction == test_labels).float().mean())
    return accuracy


# --- results -------------------------------------------------------------------------------------


def _jsonable(value: Any) -> Any:
    if hasattr(value, "to_dict"):
        return _jsonable(value.to_dict())
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _jsonable(dataclasses.asdict(value))
    if isinstance(value, Mapping):
        return {
            (_subset_name(key) if isinstance(key, tuple) else str(key)): _jsonable(item)
            for key, item in value.items()
        }
    if isinstance(value, Tensor):
        return value.tolist()
    if isinstance(value, (list, tuple)):
        return [_jsonable(item) for item in value]
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "item"):  # numpy scalars
        return value.item()
    return value


def save_results_json(results: Any, path: str | Path) -> Path:
    """Write ``results`` as JSON at ``path`` atomically (creating its directory).

    :class:`CrossCoherence` (anything with ``to_dict``), dataclasses, tensors and tuple keys
    (joined with ``+``) are converted on the way.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_save_json(_jsonable(results), path)
    return path


def _flatten(row: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in _jsonable(row).items():
        if isinstance(value, Mapping):
            flat.update(_flatten(value, f"{prefix}{key}/"))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def format_table(rows: Sequence[Mapping[str, Any]], *, float_format: str = "{:.3f}") -> str:
    """A markdown table of ``rows``, one column per key (in order of first appearance).

    Nested mappings become columns ``outer/inner`` (e.g. a :class:`CrossCoherence`'s ``mean`` is
    ``cross/mean``); missing cells stay empty; floats use ``float_format``.
    """
    flat_rows = [_flatten(row) for row in rows]
    columns = list(dict.fromkeys(key for row in flat_rows for key in row))

    def cell(value: Any) -> str:
        if value is None:
            return ""
        if isinstance(value, float):
            return float_format.format(value)
        return str(value)

    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    lines += ["| " + " | ".join(cell(row.get(column)) for column in columns) + " |" for row in flat_rows]
    return "\n".join(lines)


# --- sample grids --------------------------------------------------------------------------------


def is_image(x: Tensor) -> bool:
    """Whether a batch of means is a batch of images ``(N, C, H, W)`` with 1 or 3 channels."""
    return x.is_floating_point() and x.dim() == 4 and x.shape[1] in (1, 3)


def _save_rows(
    rows: Sequence[tuple[str, Tensor]],
    path: str | Path,
    decode_text: Optional[Callable[[Tensor], list[str]]],
) -> Path:
    """Save the image rows as one PNG (resized to a common size and to RGB); text rows, if
    ``decode_text`` is given, as sentences in ``path`` with suffix ``.txt``."""
    images = [x for _, x in rows if is_image(x)]
    if not images:
        raise ValueError(f"no image modality among {[name for name, _ in rows]} to draw")
    height = max(x.shape[-2] for x in images)
    width = max(x.shape[-1] for x in images)
    resized = [
        F.interpolate(x.float().cpu(), size=(height, width), mode="bilinear", align_corners=False)
        if x.shape[-2:] != (height, width) else x.float().cpu()
        for x in images
    ]
    grid = torch.cat([x.expand(-1, 3, -1, -1) for x in resized]).clamp(0, 1)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tv_utils.save_image(grid, path, nrow=images[0].shape[0])
    texts = [(name, x) for name, x in rows if not is_image(x)]
    if decode_text is not None and texts:
        lines = [
            f"{name}[{i}]: {sentence}" for name, x in texts for i, sentence in enumerate(decode_text(x.cpu()))
        ]
        path.with_suffix(".txt").write_text("\n".join(lines) + "\n")
    return path


def save_joint_grid(
    model: MultimodalModel,
    path: str | Path,
    num_samples: int,
    *,
    decode_text: Optional[Callable[[Tensor], list[str]]] = None,
) -> Path:
    """Save ``num_samples`` prior samples as a PNG: one column per sample, one row per image modality.

    Rows are resized to the largest modality (bilinear) and shown in RGB, with torchvision's 2-pixel
    padding: the image is ``m·(H+2)+2`` by ``num_samples·(W+2)+2`` pixels. Other modalities
    (captions) are skipped, or written one sentence per line to ``path.with_suffix(".txt")`` by
    ``decode_text(tokens) -> list[str]``.
    """
    with eval_mode(model), torch.no_grad():
        _, means = model.generate(num_samples)
    return _save_rows([(name, means[name]) for name in model.modalities], path, decode_text)


def save_cross_grid(
    model: MultimodalModel,
    guide: Guide,
    batch: Any,
    source: str | Sequence[str],
    path: str | Path,
    *,
    num_examples: Optional[int] = None,
    decode_text: Optional[Callable[[Tensor], list[str]]] = None,
) -> Path:
    """Save generations from ``source`` as a PNG: one column per example, the source inputs in the
    first row(s), then one row per modality of the model, generated from ``q(z | X_source)``
    (:func:`generate_from`; the source's own row is its reconstruction).

    :param batch: ``{modality: tensor}`` or a loader item ``(dict, labels)`` holding the source.
    :param source: a modality name or several.
    :param num_examples: use only the first examples of ``batch``.
    """
    batch, _ = split_batch(batch)
    sources = [source] if isinstance(source, str) else list(source)
    missing = [name for name in sources if name not in batch]
    if missing:
        raise ValueError(f"source modalities {missing} are not in the batch, which has {sorted(batch)}")
    inputs = prepare_batch({name: batch[name][:num_examples] for name in sources}, _default_device(model))
    with eval_mode(model, guide), torch.no_grad():
        generated = generate_from(model, guide, inputs)
    rows = list(inputs.items()) + [(name, generated[name]) for name in model.modalities]
    return _save_rows(rows, path, decode_text)


__all__ = [
    "ALL_MODALITIES",
    "CrossCoherence",
    "cross_coherence",
    "fit_logistic_regression",
    "format_table",
    "generate_from",
    "generated_labels",
    "is_image",
    "joint_coherence",
    "joint_coherence_of",
    "generated_digit_counts",
    "linear_probe_accuracy",
    "posterior_mean",
    "sample_mixture",
    "save_cross_grid",
    "save_joint_grid",
    "save_results_json",
    "source_subsets",
]
