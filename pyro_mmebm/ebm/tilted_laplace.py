"""The energy-based prior: an exponential tilt of a Laplace (or Normal) base distribution."""

from __future__ import annotations

from typing import Callable, Optional

import torch
from pyro.distributions import TorchDistribution, constraints
from torch import Tensor, nn
from torch.distributions.utils import broadcast_all

from pyro_mmebm.distributions.families import LOCATION_SCALE_FAMILIES, score
from pyro_mmebm.ebm.energy import BoundedEnergy, energy_parameters_require_grad
from pyro_mmebm.ebm.langevin import (
    LangevinConfig,
    LangevinDivergenceError,
    LangevinRun,
    PersistentChains,
    langevin_run,
)
from pyro_mmebm.ebm.monitoring import EnergyGapMonitor, NoiseContrastMonitor
from pyro_mmebm.ebm.noise import BaseAndFittedGaussian

GENERATION_STARTS = ("base", "noise")
"""Where :meth:`TiltedLaplace.sample`'s Langevin chains start: draws of ``p0``, or of the Gaussian
fitted for noise-contrastive estimation (:class:`~pyro_mmebm.ebm.noise.BaseAndFittedGaussian`)."""

ESTIMATORS = ("ml", "nce")
"""How :class:`TiltedLaplace` trains ``f_α``: maximum likelihood with Langevin negatives, or
noise-contrastive estimation against draws of the base."""

MAX_BASE_SCALES = 50.0
"""How far (in base scales, per coordinate) a Langevin state may end from the base's centre.

The base puts mass ``e^{-50} ≈ 2·10⁻²²`` beyond 50 scales per coordinate (the Laplace; a Normal far
less), and the tilt moves mass that far only if ``f_α`` rises by some 50 nats there. An unadjusted chain
ending farther out is not sampling the prior: its step size is too large for the target (with the
Laplace base such chains stay finite but wander to ``|z|`` in the thousands). A Metropolis-adjusted
chain samples the prior exactly, so one ending there means the prior itself has that mass: ``f_α``
rises as fast as ``−log p0`` falls along some direction, and ``exp(f_α) p0`` is barely, or not,
normalisable."""


class TiltedLaplace(TorchDistribution):
    r"""A base distribution exponentially tilted by an energy network, the prior of [1]:

    .. math::

        p_\alpha(z) = \frac{1}{Z(\alpha)} \exp(f_\alpha(z)) \, p_0(z),
        \qquad p_0(z) = \prod_{j=1}^d \mathrm{Laplace}(z_j; \mu_j, b_j),

    where ``f_α`` is the *negative* energy and ``Z(α) = E_{p0}[exp f_α(z)]`` is unknown.

    :meth:`log_prob` returns ``f_α(z) + log p0(z)``, which is ``log p_α(z) + log Z(α)``: the log density
    up to the constant ``log Z(α)``. Its gradient with respect to ``z`` is exact. Its gradient with
    respect to the parameters ``α`` of ``f_α`` (when they require grad and grad mode is on) is that of
    the true log density,

    .. math::

        \nabla_\alpha \log p_\alpha(z) = \nabla_\alpha f_\alpha(z)
            - \mathbb E_{p_\alpha}[\nabla_\alpha f_\alpha(z^-)],

    with the expectation estimated on ``z⁻`` drawn by short-run Langevin dynamics started from ``p0``
    (or from persistent chains). This is done by adding ``m - m.detach()`` (value zero) with
    ``m = −mean f_α(z⁻)``. With ``regularisation = λ > 0`` the α-gradient also descends
    ``λ (f_α(z)² + E[f_α(z⁻)²])``, which bounds the magnitude of ``f_α`` (its value is not added, and it
    does not touch ``z``). :meth:`sample` runs the Langevin sampler; there is no ``rsample``.

    With ``estimator="nce"`` the α-gradient is instead that of noise-contrastive estimation against the
    base [3, 4]: ``f_α`` as the logit of a classifier of the scored ``z`` against as many draws
    ``z⁰ ~ p0``, each ``z`` ascending ``−log(1 + e^{−f_α(z)}) − mean log(1 + e^{f_α(z⁰)})``. Its
    optimum is ``f_α = log q − log p0`` for scored draws ``z ~ q``: the tilted prior is then ``q``
    itself, normalised (``Z(α) = 1``). With a ``noise`` ``ν`` other than ``p0`` (its draws in place of
    ``p0``'s), the classifier's logit is ``h = f_α + log p0 − log ν`` in place of ``f_α``, with the same
    optimum. No Langevin chain runs while training; the values of
    :meth:`log_prob` and its ``z``-gradient are as with maximum likelihood. A penalty (which this
    estimator does not need: its loss is bounded below) is taken on the scored ``z`` and the draws of ``p0``.

    [1] Yuan, Cui, Han, Zhu, Wu, Nijkamp et al. (2024) "Learning Multimodal Latent Generative Models
        with Energy-Based Prior". [2] Pang, Han, Nijkamp, Zhu, Wu (2020) "Learning Latent Space
        Energy-Based Prior Model". [3] Gutmann, Hyvärinen (2010) "Noise-contrastive estimation: A new
        estimation principle for unnormalized statistical models". [4] Aneja, Schwing, Kautz, Vahdat
        (2021) "A Contrastive Learning Approach for Training Variational Autoencoder Priors".

    :param energy: ``f_α``, mapping ``(*batch, d)`` to ``(*batch,)`` (e.g. an
        :class:`~pyro_mmebm.ebm.energy.EnergyMLP`).
    :param Tensor loc: location of the base, shape ``(*batch, d)``.
    :param Tensor scale: scale of the base, shape ``(*batch, d)``.
    :param str base: ``"laplace"`` (default) or ``"normal"``.
    :param LangevinConfig langevin: the sampler of the training negatives (and of :meth:`sample`, by
        default): ``K`` steps of size ``s``.
    :param LangevinConfig generation: the sampler of :meth:`sample` (generation), when it needs longer
        chains than the negatives; default ``langevin``.
    :param float regularisation: ``λ`` of the magnitude penalty on ``f_α`` (gradient only).
    :param float encoder_gradient: ``c ∈ [0, 1]``: in :meth:`log_prob` under training, ``f_α`` is
        evaluated at ``z.detach() + c (z − z.detach())``, the same point, so the gradient with respect
        to the scored ``z`` (and through it to an encoder) is ``c ∇_z f_α`` plus the base's; values and
        ``α``'s gradient are unchanged.
    :param str estimator: how :meth:`log_prob` trains ``α``, one of :data:`ESTIMATORS`: ``"ml"``
        (maximum likelihood, Langevin negatives) or ``"nce"`` (noise-contrastive, draws of ``p0``).
    :param noise: with ``"nce"``, a noise other than ``p0``
        (:class:`~pyro_mmebm.ebm.noise.BaseAndFittedGaussian`), updated with the scored latents at
        every training call; default ``p0``.
    :param str generation_start: where :meth:`sample`'s chains start, one of :data:`GENERATION_STARTS`:
        ``"base"``, draws of ``p0`` (the paper's short-run sampler); ``"noise"``, draws of the
        ``noise``'s Gaussian, moment-matched to the posterior draws: nearer a prior far from ``p0``.
        The chains target ``p_α`` either way.
    :param int num_negatives: number of negatives (Langevin samples, or draws of ``p0``) per
        :meth:`log_prob` call; default one per element of the value's batch.
    :param PersistentChains persistent_chains: when given, negatives continue these chains.
    :param monitor: when given, receives ``f_α`` on the scored latents and the estimator's negatives
        at every training call: an :class:`~pyro_mmebm.ebm.EnergyGapMonitor` with ``"ml"``, a
        :class:`~pyro_mmebm.ebm.NoiseContrastMonitor` with ``"nce"``.
    """

    arg_constraints = {"loc": constraints.real, "scale": constraints.positive}
    support = constraints.real_vector
    has_rsample = False

    def __init__(
        self,
        energy: Callable[[Tensor], Tensor],
        loc: Tensor,
        scale: Tensor,
        *,
        base: str = "laplace",
        langevin: LangevinConfig = LangevinConfig(),
        generation: Optional[LangevinConfig] = None,
        regularisation: float = 0.0,
        encoder_gradient: float = 1.0,
        estimator: str = "ml",
        noise: Optional[BaseAndFittedGaussian] = None,
        generation_start: str = "base",
        num_negatives: Optional[int] = None,
        persistent_chains: Optional[PersistentChains] = None,
        monitor: Optional[EnergyGapMonitor | NoiseContrastMonitor] = None,
        validate_args: Optional[bool] = None,
    ) -> None:
        if base not in LOCATION_SCALE_FAMILIES:
            raise ValueError(
                f"unknown base distribution {base!r}; choose one of {sorted(LOCATION_SCALE_FAMILIES)}"
            )
        if regularisation < 0:
            raise ValueError(f"need regularisation >= 0, got {regularisation}")
        self.loc, self.scale = broadcast_all(loc, scale)
        if self.loc.dim() < 1:
            raise ValueError("loc and scale need a last (event) dimension of size d")
        self.energy = energy
        self.base = base
        self.langevin = langevin
        self.generation = langevin if generation is None else generation
        self.regularisation = regularisation
        if not 0 <= encoder_gradient <= 1:
            raise ValueError(f"need encoder_gradient in [0, 1], got {encoder_gradient}")
        self.encoder_gradient = encoder_gradient
        if estimator not in ESTIMATORS:
            raise ValueError(f"unknown estimator {estimator!r} of the EBM prior; choose one of {ESTIMATORS}")
        self.estimator = estimator
        if monitor is not None and monitor.estimator != estimator:
            raise ValueError(
                f"{type(monitor).__name__} watches the {monitor.estimator!r} estimator; this prior's is {estimator!r}"
            )
        if noise is not None and estimator != "nce":
            raise ValueError(f"a noise other than p0 is for the 'nce' estimator; this prior's is {estimator!r}")
        self.noise = noise
        if generation_start not in GENERATION_STARTS:
            raise ValueError(f"unknown generation_start {generation_start!r}; choose one of {GENERATION_STARTS}")
        if generation_start == "noise" and noise is None:
            raise ValueError("generation_start 'noise' starts the chains from the noise's Gaussian, and there is no noise")
        self.generation_start = generation_start
        self.num_negatives = num_negatives
        self.persistent_chains = persistent_chains
        self.monitor = monitor
        super().__init__(self.loc.shape[:-1], self.loc.shape[-1:], validate_args=validate_args)

    def expand(self, batch_shape, _instance=None) -> "TiltedLaplace":
        new = self._get_checked_instance(TiltedLaplace, _instance)
        batch_shape = torch.Size(batch_shape)
        new.loc = self.loc.expand(batch_shape + self.event_shape)
        new.scale = self.scale.expand(batch_shape + self.event_shape)
        for name in ("energy", "base", "langevin", "generation", "regularisation", "encoder_gradient",
                     "estimator", "noise", "generation_start", "num_negatives", "persistent_chains", "monitor"):
            setattr(new, name, getattr(self, name))
        super(TiltedLaplace, new).__init__(batch_shape, self.event_shape, validate_args=False)
        new._validate_args = self._validate_args
        return new

    @property
    def base_dist(self) -> TorchDistribution:
        """The base ``p0`` with the same batch and event shape."""
        return LOCATION_SCALE_FAMILIES[self.base](self.loc, self.scale).to_event(1)

    def unnormalized_log_prob(self, value: Tensor) -> Tensor:
        """``f_α(z) + log p0(z)``, shape ``value.shape[:-1]``.

        Unvalidated: inside a Langevin chain a diverging state must reach the sampler's own check,
        which names the step size, rather than fail the base's support check.
        """
        base = LOCATION_SCALE_FAMILIES[self.base](self.loc, self.scale, validate_args=False).to_event(1)
        return self._energy(value) + base.log_prob(value)

    def _energy(self, z: Tensor) -> Tensor:
        """``f_α(z)``, checked to hold one value per latent (another shape would broadcast silently)."""
        value = self.energy(z)
        if not isinstance(value, Tensor) or value.shape != z.shape[:-1]:
            got = tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__
            raise ValueError(
                f"the energy network f_α ({type(self.energy).__name__}) must return one value per latent, "
                f"shape {tuple(z.shape[:-1])} for latents of shape {tuple(z.shape)}; it returned {got}"
            )
        return value

    def _check_energy_finite(self, evaluations: dict[str, tuple[Tensor, Tensor]]) -> None:
        """Raise ``ValueError`` naming the energy network when ``f_α`` is inf or NaN at finite latents.

        :param evaluations: ``{what the latents are: (z, f_α(z))}``, checked with one synchronisation.
        """
        bad = torch.stack(
            [(~torch.isfinite(f) & torch.isfinite(z).all(-1)).any() for z, f in evaluations.values()]
        ).tolist()
        for where, failed in zip(evaluations, bad):
            if failed:
                raise ValueError(
                    f"the energy network f_α ({type(self.energy).__name__}) returned inf or NaN on {where} "
                    "(finite latents)"
                )

    def _langevin(self, init: Tensor, langevin: LangevinConfig, loc: Tensor, scale: Tensor) -> LangevinRun:
        """Langevin chains targeting ``exp(f_α) p0`` (``p0`` of ``(loc, scale)``, its gradient in closed
        form) from ``init``; refused when ``f_α`` is not finite at the starts, or when the chains end
        farther than :data:`MAX_BASE_SCALES` from the base's centre."""
        with torch.no_grad():
            self._check_energy_finite({"the Langevin chains' starting points": (init, self._energy(init))})
        base = LOCATION_SCALE_FAMILIES[self.base](loc, scale, validate_args=False)
        run = langevin_run(
            self._energy,
            init,
            langevin,
            base_score=score(self.base, loc, scale),
            base_log_prob=(lambda z: base.log_prob(z).sum(-1)) if langevin.metropolis else None,
        )
        samples = run.samples
        distance = float(((samples - loc).abs() / scale).amax()) if samples.numel() else 0.0
        if distance > MAX_BASE_SCALES:
            raise LangevinDivergenceError(
                f"Langevin chains of the EBM prior ended {distance:.3g} base scales from the base's centre "
                f"after {langevin.steps} steps with step size {langevin.step_size}; chains sampling this prior "
                f"stay within {MAX_BASE_SCALES:g}. "
                + (
                    "These chains are Metropolis-adjusted, so the prior itself has mass there: f_α rises as fast "
                    "as -log p0 falls along some direction, where it was never fitted. Use fewer steps."
                    if langevin.metropolis
                    else "The step size is too large for this target: reduce it (0.3 suits a unit-scale base); or "
                    "f_α has run away (watch the energy gap)."
                )
            )
        return run

    def sample(self, sample_shape=torch.Size()) -> Tensor:
        """Langevin samples, started from ``p0`` (or, with ``generation_start="noise"``, from the
        Gaussian of the ``noise``), shape ``sample_shape + batch_shape + event_shape``.

        :raises LangevinDivergenceError: when the chains diverge, or end farther than
            :data:`MAX_BASE_SCALES` from the base's centre (a step size far too large).
        :raises ValueError: naming the energy network, when ``f_α`` returns the wrong shape, or inf or
            NaN where the chains start.
        """
        return self.generation_run(sample_shape).samples

    def generation_run(self, sample_shape=torch.Size()) -> LangevinRun:
        """:meth:`sample`'s chains as a :class:`~pyro_mmebm.ebm.langevin.LangevinRun`: the samples and,
        for a Metropolis-adjusted sampler, each chain's acceptance rate."""
        if self.generation_start == "noise":
            init = self.noise.gaussian().expand(self.batch_shape).sample(sample_shape)
        else:
            init = self.base_dist.sample(sample_shape)
        return self._langevin(init, self.generation, self.loc, self.scale)

    def _first_base(self) -> TorchDistribution:
        """The base of the first batch element, event shape ``(d,)``: a prior's base is shared by the batch."""
        d = self.event_shape[0]
        loc, scale = self.loc.reshape(-1, d)[0], self.scale.reshape(-1, d)[0]
        return LOCATION_SCALE_FAMILIES[self.base](loc, scale, validate_args=False).to_event(1)

    def _base_draws(self, num_samples: int) -> tuple[Tensor, Tensor, Tensor]:
        """``num_samples`` draws of the base of the first batch element, shape ``(num_samples, d)``,
        with its ``loc`` and ``scale``."""
        base = self._first_base()
        return base.sample((num_samples,)), base.base_dist.loc, base.base_dist.scale

    def noise_draws(self, num_samples: int) -> Tensor:
        """``num_samples`` draws of what noise-contrastive estimation classifies the scored latents
        against, shape ``(num_samples, d)``: ``p0``, or the ``noise`` given."""
        base = self._first_base()
        return base.sample((num_samples,)) if self.noise is None else self.noise.sample(base, num_samples)

    def negative_samples(self, num_samples: int) -> Tensor:
        """``num_samples`` Langevin negatives ``z⁻`` of shape ``(num_samples, d)``.

        They target the prior of the first batch element: a prior's base is shared by the batch.
        """
        fresh, loc, scale = self._base_draws(num_samples)
        init = fresh if self.persistent_chains is None else self.persistent_chains.initial_states(fresh)
        negatives = self._langevin(init, self.langevin, loc, scale).samples
        if self.persistent_chains is not None:
            self.persistent_chains.update(negatives)
        return negatives

    def log_prob(self, value: Tensor) -> Tensor:
        if self._validate_args:
            self._validate_sample(value)
        training = torch.is_grad_enabled() and energy_parameters_require_grad(self.energy)
        if training and isinstance(self.energy, BoundedEnergy):
            self.energy.observe(value)  # the bound follows the posterior draws' largest energy
        scored = value
        if training and self.encoder_gradient != 1:
            scored = value.detach() + self.encoder_gradient * (value - value.detach())  # the same point
        positive = self._energy(scored)
        log_prob = positive + self.base_dist.log_prob(value)
        if not training:
            self._check_energy_finite({"the latents scored": (value, positive)})
            return log_prob
        num_negatives = self.num_negatives or max(1, value.shape[:-1].numel())
        if self.estimator == "nce":
            if self.noise is not None:
                self.noise.update(value)
            negatives = self.noise_draws(num_negatives)
            negative = self._energy(negatives)
            self._check_energy_finite({
                "the latents scored (posterior samples)": (value, positive),
                "the draws of the noise": (negatives, negative),
            })
            at_value = self._energy(value.detach())
            positive_logit, negative_logit = at_value, negative  # the classifier's logits h
            if self.noise is not None:
                base = self._first_base()
                positive_logit = positive_logit + self.noise.log_ratio_to_base(base, value.detach())
                negative_logit = negative_logit + self.noise.log_ratio_to_base(base, negatives)
            if self.monitor is not None:
                self.monitor.record(positive, negative, positive_logit, negative_logit)
            # each scored z's α-gradient becomes σ(−h) ∇f, the logistic loss's, instead of ∇f
            correction = -nn.functional.softplus(-positive_logit) - at_value
            log_prob = log_prob + (correction - correction.detach())
            surrogate = -nn.functional.softplus(negative_logit).mean()
        else:
            negatives = self.negative_samples(num_negatives)
            negative = self._energy(negatives)
            self._check_energy_finite({
                "the latents scored (posterior samples)": (value, positive),
                "the Langevin negatives": (negatives, negative),
            })
            if self.monitor is not None:
                self.monitor.record(positive, negative)
            surrogate = -negative.mean()
        if self.regularisation > 0:
            surrogate = surrogate - self.regularisation * (
                self._energy(value.detach()).pow(2) + negative.pow(2).mean()
            )
        return log_prob + (surrogate - surrogate.detach())
