"""The energy network ``f_α``: an MLP from the latent space to a scalar.

``f_α`` is the *negative* energy of the prior, ``p_α(z) ∝ exp(f_α(z)) p0(z)``, so larger values of
``f_α`` mean more prior mass. :class:`BoundedEnergy` bounds a network above, so that
``exp(f_α) p0`` has a finite normaliser whatever the network learns.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor, nn

ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "gelu": nn.GELU,
    "leaky_relu": lambda: nn.LeakyReLU(0.2),
    "relu": nn.ReLU,
    "silu": nn.SiLU,
    "softplus": nn.Softplus,
    "tanh": nn.Tanh,
}


class EnergyMLP(nn.Module):
    """``f_α: R^d → R``, an MLP with ``depth`` linear layers of width ``hidden_dim``.

    :param int latent_dim: dimension ``d`` of the latent ``z``.
    :param int hidden_dim: width ``D`` of the hidden layers (the paper's ablation uses 200 and 400).
    :param int depth: number ``L`` of linear layers, the output layer included (paper: 4 or 6).
    :param str activation: one of :data:`ACTIVATIONS` (the LEBM reference uses GELU).
    :param bool spectral_norm: wrap every linear layer in spectral normalisation, which bounds the
        Lipschitz constant of ``f_α`` and so how fast it can grow away from the data.
    """

    def __init__(
        self,
        latent_dim: int,
        hidden_dim: int = 200,
        depth: int = 4,
        activation: str = "gelu",
        spectral_norm: bool = False,
    ) -> None:
        super().__init__()
        if latent_dim < 1 or hidden_dim < 1:
            raise ValueError(f"latent_dim and hidden_dim must be positive, got {latent_dim}, {hidden_dim}")
        if depth < 1:
            raise ValueError(f"depth must be at least 1 (the output layer), got {depth}")
        if activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {activation!r}; choose one of {sorted(ACTIVATIONS)}")
        self.latent_dim = latent_dim
        widths = [latent_dim] + [hidden_dim] * (depth - 1) + [1]
        layers: list[nn.Module] = []
        for i, (n_in, n_out) in enumerate(zip(widths[:-1], widths[1:])):
            linear = nn.Linear(n_in, n_out)
            layers.append(nn.utils.parametrizations.spectral_norm(linear) if spectral_norm else linear)
            if i < depth - 1:
                layers.append(ACTIVATIONS[activation]())
        self.net = nn.Sequential(*layers)

    def forward(self, z: Tensor) -> Tensor:
        """Return ``f_α(z)`` with shape ``z.shape[:-1]``."""
        if z.shape[-1] != self.latent_dim:
            raise ValueError(
                f"energy network expects latents of dimension {self.latent_dim}, got shape {tuple(z.shape)}"
            )
        return self.net(z).squeeze(-1)


class BoundedEnergy(nn.Module):
    r"""An energy network ``h`` bounded above, so that the tilted prior is normalisable whatever ``h``:

    .. math::

        f(z) = m - \operatorname{softplus}(m - h(z)) < m, \qquad m = M + \delta,

    with ``M`` a running mean of the largest ``h`` (or its ``quantile``) among the posterior draws that
    each training ``log_prob`` of the prior scores (:meth:`observe`; once per step, or once per stratum
    where the objective scores the strata apart) and ``δ`` the ``margin``. Then
    ``Z(α) = E_{p0}[e^{f}] < e^m`` for every ``α``, and far from the data ``p_α`` falls as ``p0`` does.
    An MLP left unbounded grows linearly, and where it grows faster than ``−log p0`` (along a cone,
    :func:`~pyro_mmebm.ebm.tail_growth`) the tilted "prior" has infinite mass. Where the data lie,
    ``h ≤ M`` mostly and ``f`` is ``h`` up to ``softplus(−δ)`` (0.13 nats for ``δ = 2``); a draw above
    the ceiling raises ``M`` for the steps after it, so the bound follows the data's largest ``h``
    rather than holding it down.

    ``M`` is a buffer: a checkpoint saves it, and under data parallelism each process keeps its own,
    from its own shard's draws (as :class:`~pyro_mmebm.ebm.noise.BaseAndFittedGaussian` does).

    :param energy: ``h``, e.g. an :class:`EnergyMLP`.
    :param margin: ``δ``, nats above the posterior draws' running largest ``h``.
    :param decay: ``ρ`` of the running mean ``M ← ρ M + (1 − ρ) max h`` (0.99: about 100 updates).
    :param quantile: which of the draws' ``h`` the running mean follows: 1 (the default) the largest,
        below 1 that quantile of them, for a ceiling nearer the bulk of the data.
    """

    def __init__(self, energy: nn.Module, margin: float = 2.0, decay: float = 0.99, quantile: float = 1.0) -> None:
        super().__init__()
        if margin <= 0:
            raise ValueError(f"need a positive margin above the posterior draws' largest energy, got {margin}")
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"need decay in [0, 1), got {decay}")
        if not 0.0 < quantile <= 1.0:
            raise ValueError(f"need a quantile in (0, 1], got {quantile}")
        self.energy, self.margin, self.decay, self.quantile = energy, margin, decay, quantile
        self.register_buffer("running_max", torch.zeros(()))
        self.register_buffer("observed", torch.zeros((), dtype=torch.bool))

    @property
    def ceiling(self) -> Tensor:
        """``m = M + δ``, the bound of :meth:`forward`."""
        return self.running_max + self.margin

    @torch.no_grad()
    def observe(self, z: Tensor) -> None:
        """Move ``M`` towards the largest ``h`` (or its ``quantile``) among the posterior draws ``z`` of
        shape ``(..., d)`` (the first call sets it)."""
        h = self.energy(z.detach()).to(self.running_max.dtype)
        largest = h.max() if self.quantile == 1.0 else h.flatten().quantile(self.quantile)
        moved = self.running_max.lerp(largest, 1.0 - self.decay)
        self.running_max.copy_(torch.where(self.observed, moved, largest))  # no host sync on a GPU
        self.observed.fill_(True)

    def forward(self, z: Tensor) -> Tensor:
        """``f(z) = m − softplus(m − h(z))``, shape ``z.shape[:-1]``."""
        ceiling = self.ceiling.to(z.dtype)
        return ceiling - nn.functional.softplus(ceiling - self.energy(z))


def energy_parameters_require_grad(energy: Callable[[Tensor], Tensor]) -> bool:
    """Whether any parameter of ``energy`` (when it is a module) is being trained."""
    return isinstance(energy, nn.Module) and any(p.requires_grad for p in energy.parameters())


__all__ = ["ACTIVATIONS", "BoundedEnergy", "EnergyMLP", "energy_parameters_require_grad"]
