"""The multimodal VAE with one shared latent: ``p(X, z) = p(z) Π_i p_β_i(x_i | z)``."""

from __future__ import annotations

from typing import Mapping, Optional, Sequence

import pyro
import torch
from pyro import poutine
from torch import Tensor, nn

from pyro_mmebm.batch import check_modalities
from pyro_mmebm.likelihoods import Likelihood


def decode_batched(decoder: nn.Module, z: Tensor) -> Tensor:
    """Apply a decoder of ``(N, d)`` latents to ``z`` of shape ``(*batch, d)``: ``(*batch, *out)``."""
    out = decoder(z.reshape(-1, z.shape[-1]))
    return out.reshape(z.shape[:-1] + out.shape[1:])


class MultimodalVAE(nn.Module):
    """The generative model: a shared latent ``z`` from ``prior``, then every modality from its decoder.

    .. code-block:: none

        z ~ p(z)                          (EnergyBasedPrior, LaplacePrior, ...)
        x_i ~ p_β_i(x_i | z)   for each modality i (likelihood from the decoder's output)

    Calling the model (as Pyro's ``model``) runs the story inside ``pyro.plate("data")`` over the batch
    and ``pyro.plate("draws")`` over ``num_draws`` latent draws per example, scaled by ``1/num_draws``:
    a guide that draws several latents per example (the stratified mixture of experts: one per
    modality) passes its ``num_draws`` so that the ELBO averages over them. Modality sites are named
    ``x_<name>``; each is scaled by its likelihood scale (MMVAE balances modalities of different sizes
    this way, e.g. MNIST by 3072/784 against SVHN).

    It is a plain ``nn.Module`` (its parameters never enter Pyro's global param store, so several
    models live side by side); train it with an ELBO used as a module, ``Trace_ELBO()(model, guide)``,
    as :func:`pyro_mmebm.fit` does.

    :param decoders: ``{modality: decoder}``, each mapping ``(N, d)`` to the likelihood's parameter.
    :param likelihoods: ``{modality: Likelihood}``.
    :param prior: a module returning the prior of ``z`` with event shape ``(d,)``.
    :param likelihood_scales: optional ``{modality: scale}`` (default 1 for each).
    """

    def __init__(
        self,
        decoders: Mapping[str, nn.Module],
        likelihoods: Mapping[str, Likelihood],
        prior: nn.Module,
        likelihood_scales: Optional[Mapping[str, float]] = None,
    ) -> None:
        super().__init__()
        if len(decoders) < 1:
            raise ValueError("need at least one modality decoder")
        if set(likelihoods) != set(decoders):
            raise ValueError(
                f"decoders {sorted(decoders)} and likelihoods {sorted(likelihoods)} name different modalities"
            )
        unknown = set(likelihood_scales or {}) - set(decoders)
        if unknown:
            raise ValueError(f"likelihood_scales names unknown modalities {sorted(unknown)}")
        self.decoders = nn.ModuleDict(decoders)
        self.likelihoods = dict(likelihoods)
        self.prior = prior
        self.likelihood_scales = {name: 1.0 for name in decoders} | dict(likelihood_scales or {})

    @property
    def modalities(self) -> list[str]:
        return list(self.decoders)

    def forward(
        self,
        batch: Optional[Mapping[str, Tensor]] = None,
        *,
        num_draws: int = 1,
        batch_size: Optional[int] = None,
        partial: bool = False,
    ) -> Tensor:
        """Run the model on observed ``batch`` (all modalities), or generate ``batch_size`` examples.

        With ``partial=True`` the batch may hold any non-empty subset of the modalities, and only
        those enter the model (the others have no site at all, so they are neither observed nor
        sampled): the joint ``p(X_S, z)`` that MVAE's sub-sampled objective scores
        (:class:`pyro_mmebm.objectives.SubsampledELBO`).

        Returns ``z`` of shape ``(num_draws, batch, d)``.
        """
        if batch is None:
            if batch_size is None:
                raise ValueError("give either a batch to condition on or a batch_size to generate")
            data: Mapping[str, Tensor] = {}
            names = self.modalities
        else:
            batch_size = check_modalities(batch, self.modalities, require_all=not partial)
            data = batch
            names = [name for name in self.modalities if name in batch]
        with pyro.plate("draws", num_draws, dim=-2), pyro.plate("data", batch_size, dim=-1):
            with poutine.scale(scale=1.0 / num_draws):
                z = pyro.sample("z", self.prior())
                for name in names:
                    params = decode_batched(self.decoders[name], z)
                    likelihood = self.likelihoods[name]
                    x = data.get(name)
                    if x is not None:
                        self._check_data_shape(name, x, likelihood.data_shape(params, z.dim() - 1))
                    with poutine.scale(scale=self.likelihood_scales[name]):
                        pyro.sample(f"x_{name}", likelihood(params, z.dim() - 1), obs=x)
        return z

    def _check_data_shape(self, name: str, x: Tensor, expected: tuple[int, ...]) -> None:
        if tuple(x.shape[1:]) != expected:
            raise ValueError(
                f"modality {name!r} has item shape {tuple(x.shape[1:])}, but its decoder produces {expected}"
            )

    @torch.no_grad()
    def decode(self, z: Tensor, modalities: Optional[Sequence[str]] = None) -> dict[str, Tensor]:
        """The likelihood mean of every modality (or of ``modalities`` only) at latents ``z`` of shape
        ``(*batch, d)``."""
        return {
            name: self.likelihoods[name].mean(decode_batched(self.decoders[name], z))
            for name in self._chosen_modalities(modalities)
        }

    def _chosen_modalities(self, modalities: Optional[Sequence[str]]) -> list[str]:
        """``modalities`` in the model's order (default: all), checked to be the model's."""
        if modalities is None:
            return list(self.modalities)
        unknown = sorted(set(modalities) - set(self.modalities))
        if unknown:
            raise ValueError(f"cannot decode unknown modalities {unknown}; the model has {list(self.modalities)}")
        return [name for name in self.modalities if name in modalities]

    @torch.no_grad()
    def generate(self, num_samples: int) -> tuple[Tensor, dict[str, Tensor]]:
        """``num_samples`` latents from the prior (Langevin for the EBM) and their decoded means."""
        z = self.prior().sample((num_samples,))
        return z, self.decode(z)
