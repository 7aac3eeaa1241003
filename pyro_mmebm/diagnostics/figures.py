"""Figures of the prior's Markov chains and of ``f_α`` on prior and posterior samples.

Figures are built with Matplotlib's object-oriented API (:class:`matplotlib.figure.Figure`, saved
through the Agg canvas), so they need no display and leave pyplot's global state alone.

References:
    [1] Yuan, Cui, Han, Zhu, Wu, Nijkamp et al. (2024) "Learning Multimodal Latent Generative Models
        with Energy-Based Prior" (Fig. 4: Markov chain transitions).
"""

from __future__ import annotations

import os
import textwrap
from typing import Callable, Mapping, Optional, Sequence

import numpy as np
import torch
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from torch import Tensor

from pyro_mmebm.contracts import MultimodalModel

CELL_INCHES = 1.1


def _save(figure: Figure, path: Optional[str | os.PathLike]) -> Figure:
    if path is not None:
        figure.savefig(path, dpi=120, bbox_inches="tight")
    return figure


def _is_image(item_shape: torch.Size) -> bool:
    return len(item_shape) == 2 or (len(item_shape) == 3 and item_shape[0] in (1, 3))


def _draw_cell(ax: Axes, item: Tensor, lo: float, hi: float, decode_text: Callable[[Tensor], str]) -> None:
    """One decoded item: an image, a sentence (integer tokens) or a real vector (a one-row strip)."""
    ax.set_xticks([])
    ax.set_yticks([])
    if not item.is_floating_point():
        ax.text(0.5, 0.5, textwrap.fill(decode_text(item), 16), ha="center", va="center", fontsize=6,
                transform=ax.transAxes)
        return
    pixels = ((item - lo) / (hi - lo)).clamp(0, 1)
    if not _is_image(item.shape):
        pixels = pixels.reshape(1, -1)
    elif pixels.dim() == 3:
        pixels = pixels.permute(1, 2, 0).squeeze(-1)
    ax.imshow(pixels.numpy(), cmap="gray", vmin=0, vmax=1, aspect="auto" if pixels.shape[0] == 1 else "equal")


@torch.no_grad()
def plot_transitions(
    model: MultimodalModel,
    states: Tensor,
    steps: Sequence[int],
    *,
    decode_text: Optional[Callable[[Tensor], str]] = None,
    path: Optional[str | os.PathLike] = None,
) -> Figure:
    """The Markov chain transition figure [1]: decoded chain states from ``p0`` to the last step.

    One panel per modality; in each, a row per chain and a column per chosen step. Images are drawn
    as images (values mapped from ``[min(0, lo), max(1, hi)]`` of the panel to grey levels), integer
    token sequences (a categorical likelihood's decoded mode) as text, other real items as strips.

    :param model: its ``decode(z) -> {modality: (*batch, *item)}`` draws the figure.
    :param states: chain states ``(K + 1, chains, d)``, e.g. ``prior_chains(prior, 4).states``.
    :param steps: the steps to show, e.g. ``[0, 10, 20, ..., K]``.
    :param decode_text: maps a token sequence ``(length,)`` to a string; default: the ids joined by spaces.
    :param path: where to save the PNG.
    """
    if states.dim() != 3:
        raise ValueError(f"expected states of shape (K + 1, chains, d), got {tuple(states.shape)}")
    if any(not 0 <= k < states.shape[0] for k in steps):
        raise ValueError(f"steps {list(steps)} must lie in [0, {states.shape[0] - 1}]")
    decode_text = decode_text or (lambda tokens: " ".join(str(int(t)) for t in tokens))
    decoded = {name: x.cpu() for name, x in model.decode(states[list(steps)]).items()}  # (steps, chains, *item)
    num_chains = states.shape[1]
    figure = Figure(figsize=(CELL_INCHES * len(steps) * len(decoded) + 0.5, CELL_INCHES * num_chains + 0.6),
                    layout="constrained")
    panels = np.atleast_1d(figure.subfigures(1, len(decoded)))
    for panel, (name, values) in zip(panels, decoded.items()):
        panel.suptitle(name)
        axes = panel.subplots(num_chains, len(steps), squeeze=False)
        lo = min(0.0, float(values.min())) if values.is_floating_point() else 0.0
        hi = max(1.0, float(values.max())) if values.is_floating_point() else 1.0
        for col, step in enumerate(steps):
            axes[0, col].set_title(f"step {step}", fontsize=7)
            for row in range(num_chains):
                _draw_cell(axes[row, col], values[col, row], lo, hi, decode_text)
        for row in range(num_chains):
            axes[row, 0].set_ylabel(f"chain {row}", fontsize=7)
    return _save(figure, path)


@torch.no_grad()
def plot_energy_histograms(
    energy: Callable[[Tensor], Tensor],
    samples: Mapping[str, Tensor],
    *,
    bins: int = 40,
    path: Optional[str | os.PathLike] = None,
) -> Figure:
    """Overlaid density histograms of ``f_α(z)`` on each named set of latents ``(..., d)``.

    For a trained EBM prior, ``f_α`` on posterior draws (``"posterior"``) and on Langevin draws of the
    prior (``"prior"``) should overlap: maximum likelihood drives ``E_q[f] − E_{p_α}[f]`` to zero. A
    posterior histogram far to the right means the short-run sampler does not reach where the
    encoders put the data.

    :param energy: ``f_α`` (``model.prior.energy``).
    :param samples: ``{label: latents}``.
    :param path: where to save the PNG.
    """
    figure = Figure(figsize=(5.0, 3.2), layout="constrained")
    ax = figure.subplots()
    values = {label: energy(z).flatten().cpu().numpy() for label, z in samples.items()}
    edges = np.histogram_bin_edges(np.concatenate(list(values.values())), bins=bins)
    for label, v in values.items():
        ax.hist(v, bins=edges, density=True, alpha=0.5, label=f"{label} (mean {v.mean():.3g})")
    ax.set_xlabel(r"$f_\alpha(z)$")
    ax.set_ylabel("density")
    ax.legend(fontsize=8)
    return _save(figure, path)
