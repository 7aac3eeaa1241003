"""The EBM prior as a module, and its settings: ``f_α``, its penalty and its Langevin sampler, returning a
:class:`TiltedLaplace`."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import ClassVar, Optional

import torch
from pyro.distributions import TorchDistribution
from torch import nn

from pyro_mmebm.distributions.families import LOCATION_SCALE_FAMILIES
from pyro_mmebm.ebm.energy import ACTIVATIONS, BoundedEnergy, EnergyMLP
from pyro_mmebm.ebm.langevin import LangevinConfig, PersistentChains
from pyro_mmebm.ebm.monitoring import EnergyGapMonitor, NoiseContrastMonitor
from pyro_mmebm.ebm.noise import NCE_NOISES, BaseAndFittedGaussian
from pyro_mmebm.ebm.tilted_laplace import ESTIMATORS, GENERATION_STARTS, TiltedLaplace
from pyro_mmebm.settings import (
    at_least, check_settings, fraction, non_negative, positive, positive_fraction, positive_or_infinite, setting,
)


BOUNDED_GENERATION = {"steps": 1000, "step_size": 0.3, "metropolis": True}
"""Generation's sampler for a bounded ``f_α`` where no setting says otherwise: Metropolis-adjusted
Langevin chains from ``p0``, long enough to settle on ``p_α``. Measured on the bounded Ours+ prior of
the 12-epoch PolyMNIST protocol (``bench/generation_chains.py``): ``E f`` of the samples 11.3, 12.3 and
12.6 at 500, 1,000 and 2,000 steps of 0.3 (acceptance 0.83), where 500 unadjusted steps of 0.1 stay
3.0 below the posterior draws'; joint coherence over m1–m3 0.726, the aggregate posterior's 0.727.
They cost about twice as much as those 500 steps (13 s against 6.3 s per 1,000 samples on one core)."""


@dataclass(frozen=True)
class EBMPriorConfig:
    """The settings of :class:`EnergyBasedPrior`.

    The defaults are the recipe that beat MMVAE's Laplace prior on real PolyMNIST (see "Results on
    PolyMNIST" in the README and ``bench/RESULTS.md``): ``f_α`` (400 wide) learned by noise-contrastive
    estimation against half ``p0``, half a Gaussian fitted to the posterior draws, with a tenth of
    ``∇_z f_α`` reaching the encoders, no magnitude penalty, ``f_α`` bounded above 2 nats over the
    posterior draws' largest (``ceiling_margin``, so that ``p_α`` is normalisable), and generation by
    Metropolis-adjusted chains long enough to settle on ``p_α`` (:data:`BOUNDED_GENERATION`). With
    :class:`~pyro_mmebm.training.TrainConfig`'s ``prior_lr = 1e-3`` and two warm-up epochs with ``p0``
    (``prior_warmup_epochs``, the PolyMNIST example's default), this recipe reached joint coherence
    0.441 against MMVAE's 0.275 over all five modalities after 12 epochs with generation by 500
    unadjusted Langevin steps of 0.1 (gap ``E_q[f] − E_{p_α}[f]`` 3.0), and 0.477 by the settled chains
    (unbounded: 0.435, gap 3.4).

    Maximum likelihood (``estimator="ml"``, the paper's estimator) was measured with
    ``encoder_gradient=0``, ``hidden=200``, ``prior_lr=1e-4``, unbounded, and generation by the training
    sampler (the generation settings ``None``): the energy gap then stays near 0, but the prior learned
    is close to ``p0`` and generation no better than MMVAE's. With the full encoder
    gradient and no penalty it runs away; ``encoder_gradient = 1`` (the exact ELBO gradient) needs the
    penalty (``regularisation = 0.1``). Langevin: step size 0.3 (suited to a unit-scale base), 50 steps.

    :param hidden, depth, activation, spectral_norm: the energy network, an :class:`EnergyMLP` of
        ``depth`` linear layers of width ``hidden``.
    :param regularisation: ``λ`` of the penalty ``λ (f(z)² + E f(z⁻)²)`` on ``f_α``'s magnitude.
    :param ceiling_margin: with a value ``δ``, ``f_α`` is a :class:`~pyro_mmebm.ebm.energy.BoundedEnergy`,
        bounded above ``δ`` nats over the running largest ``f_α`` of the posterior draws, so that
        ``p_α`` is normalisable by construction; ``inf``: the MLP unbounded, whose tails may grow
        faster than ``p0`` falls (:func:`~pyro_mmebm.ebm.tail_growth`). ``None`` (the default): 2 for
        ``"nce"``, measured on PolyMNIST; unbounded for ``"ml"``, which was measured unbounded and
        on the synthetic clusters of ``tests/test_training.py`` loses half its gain with the bound
        (joint coherence 0.35 against about 0.6). See :attr:`ceiling`.
    :param ceiling_quantile: which of the energy network's values on each step's posterior draws the
        bound follows: 1, the largest; below 1, that quantile (measured on PolyMNIST: a lower one
        brings ``E_{p_α} f`` down to ``E_q f`` and costs coherence; ``bench/RESULTS.md``).
    :param persistent: continue the negative chains across training steps (``"ml"`` only).
    :param encoder_gradient: how much of ``∇_z f_α`` reaches the encoders through the posterior samples
        (1: all of it, the model's exact ELBO gradient; 0: none, so the encoders see the base ``p0``
        only and cannot be pulled to where ``f_α`` is high, while ``f_α`` still learns their
        aggregate posterior). Values, and ``α``'s gradient, are unchanged.
    :param generation_steps: Langevin steps when sampling the prior for generation: short-run chains
        that suffice for the gradient may not reach the prior's modes. ``None`` (the default), like
        ``generation_step_size`` and ``generation_metropolis``: :data:`BOUNDED_GENERATION`'s where
        ``f_α`` is bounded (:attr:`ceiling`), the training sampler's (``langevin``) where it is not,
        since an unbounded ``p_α`` need not be normalisable and exact chains may then run off. See
        :attr:`generation`.
    :param generation_step_size: their step size: a prior with narrow modes needs a smaller step than the
        short-run negatives use.
    :param estimator: how training learns ``f_α`` (:data:`~pyro_mmebm.ebm.tilted_laplace.ESTIMATORS`):
        ``"ml"``, maximum likelihood with Langevin negatives (the paper's), or ``"nce"``,
        noise-contrastive estimation against draws of ``p0``, which runs no chain while training (see
        :class:`~pyro_mmebm.ebm.TiltedLaplace`). With ``"ml"`` training watches the energy gap, with
        ``"nce"`` the classifier's loss, accuracy and ``log Z(α)``.
    :param nce_noise: what ``"nce"`` classifies posterior draws against
        (:data:`~pyro_mmebm.ebm.noise.NCE_NOISES`): ``"base"``, ``p0``; or ``"base+gaussian"``, half
        ``p0`` and half a Gaussian moment-matched to the posterior draws
        (:class:`~pyro_mmebm.ebm.noise.BaseAndFittedGaussian`), for an aggregate posterior far from
        ``p0``. ``None`` (the default): ``"base+gaussian"`` for ``"nce"``, nothing for ``"ml"``; see
        :attr:`contrast_noise`.
    :param generation_metropolis: whether generation's steps are Metropolis-adjusted (MALA): the chains
        then sample the prior exactly at any step size, so long chains may take larger steps without the
        step-size bias of unadjusted ones.
    :param generation_start: where generation's chains start: ``"base"``, ``p0``; ``"noise"``, the
        Gaussian of ``nce_noise="base+gaussian"``, fitted to the posterior draws.
    :param langevin: the sampler of the training negatives (``"ml"``) and of generation.
    """

    settings_prefix: ClassVar[str] = "ebm"

    hidden: int = setting(400, "width of the energy network", check=at_least(1))
    depth: int = setting(4, "linear layers of the energy network", check=at_least(1))
    activation: str = setting("gelu", "activation of the energy network", choices=ACTIVATIONS)
    spectral_norm: bool = setting(False, "spectral normalisation of the energy network's layers")
    regularisation: float = setting(0.0, "penalty on the energy's magnitude", check=non_negative)
    ceiling_margin: Optional[float] = setting(
        None, "bound f above, this many nats over the posterior draws' running largest f, so that the "
        "prior is normalisable (None: 2 for nce, unbounded for ml; inf: unbounded)", check=positive_or_infinite,
    )
    ceiling_quantile: float = setting(
        1.0, "the quantile of the energy network's values on each step's posterior draws that the ceiling "
        "follows (1: the largest)",
        check=positive_fraction,
    )
    persistent: bool = setting(False, "persistent Langevin chains")
    encoder_gradient: float = setting(
        0.1, "fraction of f's gradient in z that reaches the encoders (0: none)", check=fraction
    )
    estimator: str = setting(
        "nce", "how f is trained: nce (against noise) or ml (Langevin negatives)", choices=ESTIMATORS
    )
    nce_noise: Optional[str] = setting(
        None, "what nce classifies posterior draws against: base (p0) or base+gaussian (None: base+gaussian)",
        choices=NCE_NOISES,
    )
    generation_steps: Optional[int] = setting(
        None, "Langevin steps for generation (None: 1000 with f bounded, else --langevin-steps)", check=at_least(0)
    )
    generation_step_size: Optional[float] = setting(
        None, "Langevin step size for generation (None: 0.3 with f bounded, else --langevin-step-size)",
        check=positive,
    )
    generation_metropolis: Optional[bool] = setting(
        None, "Metropolis-adjusted (MALA) steps for generation (None: yes with f bounded, else "
        "--langevin-metropolis)",
    )
    generation_start: str = setting(
        "base", "where generation's Langevin chains start: base (p0) or noise (the fitted Gaussian of nce)",
        choices=GENERATION_STARTS,
    )
    langevin: LangevinConfig = field(default_factory=LangevinConfig)

    def __post_init__(self) -> None:
        check_settings(self)
        if self.nce_noise not in (None, "base") and self.estimator != "nce":
            raise ValueError(f"nce_noise {self.nce_noise!r} is for the 'nce' estimator; this one is {self.estimator!r}")
        if self.persistent and self.estimator != "ml":
            raise ValueError(f"persistent chains are the 'ml' estimator's negatives; {self.estimator!r} runs no chain in training")
        if self.generation_start == "noise" and self.contrast_noise != "base+gaussian":
            raise ValueError("generation_start 'noise' starts from the Gaussian of nce_noise 'base+gaussian'")

    @property
    def contrast_noise(self) -> Optional[str]:
        """What ``"nce"`` classifies posterior draws against (``nce_noise``, ``"base+gaussian"`` when
        ``None``); ``None`` for ``"ml"``, which draws no noise."""
        if self.estimator != "nce":
            return None
        return self.nce_noise or "base+gaussian"

    @property
    def ceiling(self) -> Optional[float]:
        """The margin ``δ`` of the bound above ``f_α`` (:class:`~pyro_mmebm.ebm.energy.BoundedEnergy`),
        or ``None`` when ``f_α`` is unbounded: ``ceiling_margin``, with ``None`` read as 2 for
        ``"nce"`` and unbounded for ``"ml"``, and ``inf`` as unbounded."""
        if self.ceiling_margin is None:
            return 2.0 if self.estimator == "nce" else None
        return self.ceiling_margin if math.isfinite(self.ceiling_margin) else None

    @property
    def generation(self) -> LangevinConfig:
        """The sampler that generates: ``generation_steps`` steps, ``generation_step_size`` and
        ``generation_metropolis`` where set; where not, :data:`BOUNDED_GENERATION`'s with ``f_α``
        bounded (:attr:`ceiling`), else :attr:`langevin`'s."""
        sampler = self.langevin if self.ceiling is None else dataclasses.replace(self.langevin, **BOUNDED_GENERATION)
        changes = {
            "steps": self.generation_steps,
            "step_size": self.generation_step_size,
            "metropolis": self.generation_metropolis,
        }
        return dataclasses.replace(sampler, **{name: value for name, value in changes.items() if value is not None})


class EnergyBasedPrior(nn.Module):
    """The EBM prior ``p_α(z) ∝ exp(f_α(z)) p0(z)`` with ``f_α`` an :class:`EnergyMLP`, bounded above
    by a :class:`~pyro_mmebm.ebm.energy.BoundedEnergy` where ``config.ceiling`` says so (by default
    with NCE).

    Returns a :class:`~pyro_mmebm.ebm.TiltedLaplace`.

    :param latent_dim: ``d``.
    :param config: the energy network, its penalty and its Langevin sampler.
    :param base: ``"laplace"`` or ``"normal"`` for ``p0``.

    Setting :attr:`tilted` to ``False`` makes the prior its base ``p0`` (``f_α`` unused and untrained):
    :func:`~pyro_mmebm.fit` does so for ``TrainConfig.prior_warmup_epochs`` epochs.
    """

    def __init__(self, latent_dim: int, config: EBMPriorConfig = EBMPriorConfig(), *, base: str = "laplace") -> None:
        super().__init__()
        self.config = config
        energy: nn.Module = EnergyMLP(  # checks latent_dim
            latent_dim, config.hidden, config.depth, config.activation, spectral_norm=config.spectral_norm
        )
        if config.ceiling is not None:
            energy = BoundedEnergy(energy, config.ceiling, quantile=config.ceiling_quantile)
        self.energy = energy
        self.latent_dim = latent_dim
        # The standard base p0: buffers, so that they follow the module to its device.
        self.register_buffer("loc", torch.zeros(latent_dim))
        self.register_buffer("scale", torch.ones(latent_dim))
        self.base = base
        self.persistent_chains = PersistentChains() if config.persistent else None
        self.monitor = NoiseContrastMonitor() if config.estimator == "nce" else EnergyGapMonitor()
        self.noise = BaseAndFittedGaussian(latent_dim) if config.contrast_noise == "base+gaussian" else None
        self.tilted = True
        self.forward()  # checks the base now rather than at the first training step

    def forward(self) -> TorchDistribution:
        """``p_α`` as a :class:`TiltedLaplace` of event shape ``(d,)``; the base ``p0`` when not :attr:`tilted`."""
        if not self.tilted:
            return LOCATION_SCALE_FAMILIES[self.base](self.loc, self.scale).to_event(1)
        return TiltedLaplace(
            self.energy,
            self.loc,
            self.scale,
            base=self.base,
            langevin=self.config.langevin,
            generation=self.config.generation,
            regularisation=self.config.regularisation,
            encoder_gradient=self.config.encoder_gradient,
            estimator=self.config.estimator,
            noise=self.noise,
            generation_start=self.config.generation_start,
            persistent_chains=self.persistent_chains,
            monitor=self.monitor,
        )


__all__ = ["BOUNDED_GENERATION", "EBMPriorConfig", "EnergyBasedPrior"]
