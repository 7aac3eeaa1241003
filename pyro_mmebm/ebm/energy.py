"""The energy network ``f_α``: an MLP from the latent space to a scalar.

``f_α`` is the *negative* energy of the prior, ``p_α(z) ∝ exp(f_α(z)) p0(z)``, so larger values of
``f_α`` mean more prior mass.
"""

from __future__ import annotations

from typing import Callable


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


def energy_parameters_require_grad(energy: Callable[[Tensor], Tensor]) -> bool:
    """Whether any parameter of ``energy`` (when it is a module) is being trained."""
    return isinstance(energy, nn.Module) and any(p.requires_grad for p in energy.parameters())


__all__ = ["ACTIVATIONS", "EnergyMLP", "energy_parameters_require_grad"]
