"""What a model, a guide and a training hook must offer: the contracts between them and the rest of the library.

The models of :mod:`models` and the guides of :mod:`guides` are plain ``nn.Module`` objects that
meet these protocols (:class:`typing.Protocol`) by their methods alone: there is no base class to
inherit.
Evaluation and diagnostics use a model or guide only through them, so one written by hand works
everywhere once it offers what its protocol lists. A batch is a dict ``{modality: tensor}``, each
tensor ``(B, *item)``, holding any non-empty subset of the modalities where a method allows it.
The training loop calls its hooks (the EBM prior's warm-up and energy-gap watch) only through
:class:`TrainingHook`.
"""

from __future__ import annotations

from typing import Callable, Mapping, Optional, Protocol, Sequence, runtime_checkable

from pyro.distributions import TorchDistribution
from torch import Tensor

Batch = Mapping[str, Tensor]


@runtime_checkable
class MultimodalModel(Protocol):
    """A generative model ``p(X, z) = p(z) Π_i p(x_i | z)`` with one shared latent ``z`` of dimension ``d``
    (:class:`~models.MultimodalVAE`, :class:`~models.PrivateLatentVAE`)."""

    prior: Callable[[], TorchDistribution]
    """``model.prior()`` is the prior of ``z``, event shape ``(d,)``; for the EBM prior a
    :class:`~pyro_mmebm.ebm.TiltedLaplace`, whose ``log_prob`` leaves out ``log Z``."""

    @property
    def modalities(self) -> list[str]:
        """The modality names, in the model's order."""

    def __call__(self, batch: Optional[Batch] = None, *, num_draws: int = 1) -> Tensor:
        """Pyro's ``model``: site ``"z"`` and an observed site ``"x_<name>"`` per modality of ``batch``,
        inside ``pyro.plate("draws", num_draws, dim=-2)`` and ``pyro.plate("data", B, dim=-1)`` and scaled
        by ``1 / num_draws`` (further latent sites, such as private latents ``"w_<name>"``, likewise).
        Returns ``z``, shape ``(num_draws, B, d)``."""

    def decode(self, z: Tensor, modalities: Optional[Sequence[str]] = None) -> dict[str, Tensor]:
        """Every modality's (or only ``modalities``') likelihood mean at latents ``z`` of shape
        ``(*batch, d)``: ``{name: (*batch, *item)}``."""

    def generate(self, num_samples: int) -> tuple[Tensor, dict[str, Tensor]]:
        """``num_samples`` latents ``(num_samples, d)`` from the prior and their decoded means (:meth:`decode`)."""


@runtime_checkable
class Guide(Protocol):
    """An amortised posterior of the shared latent (the guides of :mod:`guides`)."""

    @property
    def modalities(self) -> list[str]:
        """The modality names, in the order of the model's."""

    @property
    def num_draws(self) -> int:
        """Latent draws per example when called as Pyro's ``guide`` (the model is called with as many)."""

    def posterior(self, batch: Batch) -> TorchDistribution:
        """``q(z | X_S)`` from the modalities ``S`` present in ``batch`` (any non-empty subset), event
        ``(d,)``: batch ``(B,)``, or ``(K, B)`` for a
        :class:`~pyro_mmebm.distributions.StratifiedMixtureOfExperts` of ``K`` equally weighted strata."""

    def __call__(self, batch: Batch, *, num_draws: Optional[int] = None) -> Tensor:
        """Pyro's ``guide``: site ``"z"`` (and any further latent site of the model) inside the model's
        plates, ``num_draws`` draws per example; refuses another ``num_draws`` than its own."""


@runtime_checkable
class ExpertGuide(Guide, Protocol):
    """A guide built from one expert ``q_i(z | x_i)`` per modality, which the expert diagnostics compare."""

    def experts(self, batch: Batch) -> TorchDistribution:
        """The experts of the modalities present in ``batch``, in :attr:`modalities` order, stacked: batch
        ``(m', B)``, event ``(d,)`` (for a product of experts: its factors, without a prior expert)."""


@runtime_checkable
class GuideWithPrivateLatents(Guide, Protocol):
    """A guide of the model with modality-specific latents ``w_i`` (sites ``"w_<name>"``) besides ``z``."""

    def posteriors(self, batch: Batch) -> tuple[TorchDistribution, dict[str, TorchDistribution]]:
        """``q(z | X_S)`` as :meth:`posterior` gives it and ``{i: q(w_i | x_i)}`` (batch ``(B,)``) for the
        modalities ``S`` present in ``batch``."""

    def auxiliary_prior(self, name: str) -> TorchDistribution:
        """The distribution ``r_j(w_j)`` (event ``(d_w,)``) of modality ``name``'s private latent
        where its posterior is not drawn: cross generation into ``name``."""


@runtime_checkable
class CrossGeneratingModel(MultimodalModel, Protocol):
    """A model whose decoders need more than ``z`` (private latents), so that generating from a subset
    of the modalities is its own method rather than ``decode`` of a posterior draw."""

    def cross_generate(
        self, guide: Guide, batch: Batch, *, targets: Optional[Sequence[str]] = None
    ) -> dict[str, Tensor]:
        """The mean of each of ``targets`` (default: every modality) given the modalities present in
        ``batch``, from one draw of the latents per example (of a mixture-of-experts posterior, one
        expert's draw, uniformly at random): ``{name: (B, *item)}``."""


class TrainingHook(Protocol):
    """What the epoch loop of :func:`~pyro_mmebm.fit` (and of the two-stage fit) calls at every epoch and
    step. A hook that subclasses this protocol inherits its defaults, which do nothing."""

    def start_epoch(self, epoch: int) -> None:
        """Before the first step of ``epoch`` (counted from 0)."""

    def step_values(self) -> list[Tensor]:
        """After a step: this process's values, summed over all processes in one reduction with the loss."""
        return []

    def end_step(self, values: list[float], step: int) -> dict[str, float]:
        """After step ``step`` (counted from 1 over the run): the values of :meth:`step_values`, averaged
        over the processes (the same on each); returns scalars to show and log, ``{tag: value}``."""
        return {}

    def end_epoch(self) -> dict[str, float]:
        """At the end of an epoch: entries of the epoch's record (``metrics.json``)."""
        return {}

    def end_training(self) -> None:
        """After the last epoch."""


def guide_posteriors(guide: Guide, batch: Batch) -> tuple[TorchDistribution, dict[str, TorchDistribution]]:
    """``q(z | X_S)`` and, for a :class:`GuideWithPrivateLatents`, ``{i: q(w_i | x_i)}`` (else ``{}``): the
    guide's distribution of every latent site of the model, from one pass of the encoders."""
    if isinstance(guide, GuideWithPrivateLatents):
        return guide.posteriors(batch)
    return guide.posterior(batch), {}


__all__ = [
    "Batch",
    "CrossGeneratingModel",
    "ExpertGuide",
    "Guide",
    "MultimodalModel",
    "GuideWithPrivateLatents",
    "TrainingHook",
    "guide_posteriors",
]
