r"""Whether the tilted prior is a distribution at all: how fast ``f_α`` grows far from the data
against how fast the base ``p0`` falls.

``exp(f_α(z)) p0(z)`` has a finite normaliser ``Z(α)`` only if ``f_α`` does not outgrow ``−log p0``.
Every energy network of :data:`~pyro_mmebm.ebm.energy.ACTIVATIONS` grows at most linearly, so far out
along a unit direction ``v``

.. math::

    f_\alpha(\mu + t v) = t\, g(v) + O(1), \qquad g(v) = \lim_{t \to \infty} f_\alpha(\mu + t v) / t,

while a Laplace base falls as ``−log p0(μ + t v) = t Σ_j |v_j| / b_j + const``. The *excess slope*

.. math::

    e = \max_{\lVert v \rVert_2 = 1} \Big( g(v) - \sum_j |v_j| / b_j \Big)

decides: ``e < 0`` and the density falls exponentially in every direction, so ``Z(α) < ∞``; ``e > 0``
and, ``g`` being continuous, it grows exponentially on an open cone of directions, so
``Z(α) = ∞``: the "prior" is no distribution, an exact sampler run long enough leaves for infinity
along that cone, and only short chains (which never get there) produce anything. A Normal base falls
quadratically, so every such ``f_α`` is normalisable under it (``e = −∞``).

Noise-contrastive estimation and maximum likelihood both fit ``f_α`` where the posterior draws, the
noise and the negatives are, and say nothing about it far beyond them; a magnitude penalty on ``f_α``
holds its growth down. :func:`tail_growth` measures ``e`` for a trained prior: ``g`` by the slope
between the base's centre and ``t = radius``, maximised over random directions refined by gradient
ascent on the sphere. A positive ``e`` found is proof (up to the ``O(1/radius)`` of the slope); a
negative one is the largest the search found, not a bound.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Optional

import torch
from torch import Tensor, nn

from pyro_mmebm.ebm.tilted_laplace import TiltedLaplace
from pyro_mmebm.modes import eval_mode


@dataclass(frozen=True)
class TailGrowth:
    """The result of :func:`tail_growth`.

    :param excess: ``e``, the largest excess slope found (``−inf`` for a Normal base).
    :param direction: the unit direction ``v`` attaining it (``None`` for a Normal base).
    :param slope: ``g(v)`` there, the slope of ``f_α``.
    :param base_decay: ``Σ_j |v_j| / b_j`` there, the slope of ``−log p0``.
    :param random_excess: the largest excess among the random directions before the ascent: far below
        ``excess`` when the directions that grow form a narrow cone.
    """

    excess: float
    direction: Optional[Tensor]
    slope: float
    base_decay: float
    random_excess: float

    @property
    def normalisable(self) -> bool:
        """Whether no direction was found along which ``exp(f_α) p0`` grows: ``excess < 0``."""
        return self.excess < 0

    def __str__(self) -> str:
        if self.direction is None:
            return "exp(f_α) p0 is normalisable: the Normal base falls faster than f_α can grow"
        if self.normalisable:
            return (
                f"exp(f_α) p0 is normalisable as far as the search found: in no direction does f_α rise faster "
                f"than log p0 falls (largest excess slope {self.excess:.3f})"
            )
        return (
            f"exp(f_α) p0 is not normalisable: along a cone of directions f_α rises by {self.slope:.3f} per unit "
            f"while log p0 falls by {self.base_decay:.3f}, so Z(α) = ∞; an exact sampler run long enough "
            "drifts out along it, and what short chains generate is not a prior's sample"
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: the numbers and ``normalisable`` (the direction is left out)."""
        return {
            "excess_slope": self.excess,
            "f_slope": self.slope,
            "base_decay": self.base_decay,
            "random_excess": self.random_excess,
            "normalisable": self.normalisable,
        }


def tail_growth(
    prior: TiltedLaplace,
    *,
    directions: int = 4096,
    refined: int = 64,
    ascent_steps: int = 600,
    learning_rate: float = 0.02,
    radius: float = 1e4,
    seed: int = 0,
) -> TailGrowth:
    """The excess slope ``e`` of ``prior`` (see the module): ``directions`` random unit directions,
    the best ``refined`` of them improved by ``ascent_steps`` of Adam on the sphere.

    Draws from its own generator (``seed``), so the caller's random streams are untouched; accumulates
    no gradient in ``f_α``'s parameters; runs the energy network in eval mode (spectral
    normalisation's power iteration does not advance) and restores its mode.

    :param prior: an unbatched :class:`~pyro_mmebm.ebm.TiltedLaplace` (event ``(d,)``).
    :param radius: ``t`` of the slope ``(f_α(μ + t v) − f_α(μ)) / t``; its error is ``O(1 / t)``.
    """
    if prior.batch_shape != torch.Size():
        raise ValueError(f"tail_growth measures one prior; this one has batch shape {tuple(prior.batch_shape)}")
    if directions < 1 or not 1 <= refined <= directions or ascent_steps < 0 or radius <= 0:
        raise ValueError(
            f"need directions >= refined >= 1, ascent_steps >= 0 and radius > 0, got {directions}, {refined}, "
            f"{ascent_steps}, {radius}"
        )
    if prior.base == "normal":
        return TailGrowth(excess=-math.inf, direction=None, slope=math.nan, base_decay=math.inf, random_excess=-math.inf)
    loc, scale = prior.loc.detach(), prior.scale.detach()
    energy = prior.energy
    with eval_mode(*([energy] if isinstance(energy, nn.Module) else [])):
        with torch.no_grad():
            centre = energy(loc.unsqueeze(0)).reshape(())

        def excess(v: Tensor) -> Tensor:
            unit = v / v.norm(dim=-1, keepdim=True)
            slope = (energy(loc + radius * unit) - centre) / radius
            return slope - (unit.abs() / scale).sum(-1)

        generator = torch.Generator(device="cpu").manual_seed(seed)
        start = torch.randn(directions, loc.shape[-1], generator=generator, dtype=loc.dtype).to(loc.device)
        with torch.no_grad():
            random_excess, order = excess(start).topk(refined)
            best = start[order]
        v = best.clone().requires_grad_(True)
        optimizer = torch.optim.Adam([v], lr=learning_rate)
        for _ in range(ascent_steps):
            with torch.enable_grad():
                (gradient,) = torch.autograd.grad(-excess(v).sum(), v)
            v.grad = gradient
            optimizer.step()
        with torch.no_grad():
            v = torch.cat([v.detach(), best])  # the ascent may not improve a start: keep the starts
            values = excess(v)
            i = int(values.argmax())
            unit = v[i] / v[i].norm()
            decay = float((unit.abs() / scale).sum())
    return TailGrowth(
        excess=float(values[i]), direction=unit.cpu(), slope=float(values[i]) + decay, base_decay=decay,
        random_excess=float(random_excess[0]),
    )


__all__ = ["TailGrowth", "tail_growth"]
