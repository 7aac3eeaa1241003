r"""Training objectives: the stratified ELBO, IWAE and DReG, and MVAE's sub-sampled ELBO, as Pyro ELBOs.

Each is used like :class:`~pyro.infer.Trace_ELBO`: ``IWAE(num_samples=K)(model, guide)`` is an
``nn.Module`` whose call returns the differentiable loss, and ``pyro_mmebm.fit(..., elbo=IWAE(K))``
trains with it. They follow the library's conventions: model and guide run inside
``pyro.plate("draws", D, dim=-2)`` (the ``D`` strata of a mixture guide: one draw per expert) and
``pyro.plate("data", B, dim=-1)``, every site scaled by ``1/D``, and the guide is reparameterised.

**Stratified importance weighting.** IWAE and DReG run guide and model once more under a vectorised
``pyro.plate("particles", K, dim=-3)``, so every stratum ``k`` (expert, or subset for MoPoE) gets
``K`` draws ``z_{jk} ~ q_k``, with log weights

.. math::

    \log w_{jk} = \log p(X, z_{jk}) - \log q(z_{jk} \mid X),

summed over the sites (modality terms with their likelihood scales; ``q`` the whole mixture). The
bound is MMVAE's "looser" stratified IWAE [1, Eq. 9], per example,

.. math::

    \mathcal L_K = \frac1D \sum_{k=1}^D \log \frac1K \sum_{j=1}^K w_{jk} \le \log p(X).

``K = 1`` is the stratified ELBO, and ``L_K`` increases with ``K``. With a single stratum (the PoE
guide) it tends to ``log p(X)``; with a mixture it tends to ``(1/D) Σ_k log E_{q_k}[p(X, z)/q(z|X)]``,
which is below ``log p(X)`` (Jensen) unless ``E_{q_k}[p(X, z)/q(z|X)]`` is the same for every stratum.

**The EBM prior.** ``TiltedLaplace.log_prob(z) = f_α(z) + log p0(z) = log p_α(z) + log Z(α)``, so
every log weight carries the same unknown ``+log Z(α)``: the bound is shifted by that constant (as
the ELBO is), while the normalised weights ``w̄_{jk} = w_{jk} / Σ_j w_{jk}`` and so every gradient are
unchanged. For ``α``, ``log_prob`` adds a zero-valued term whose gradient is ``−E_{p_α}[∇_α f(z⁻)]``
and which is *identical* for every sample; the gradient of ``L_K`` weights the per-sample gradients by
``w̄_{jk}``, and ``Σ_j w̄_{jk} = 1``, so each stratum and example gets exactly one
``−E_{p_α}[∇_α f]``:

.. math::

    \nabla_\alpha \mathcal L_K = \frac1D \sum_{k, j} \bar w_{jk} \nabla_\alpha f_\alpha(z_{jk})
        - \mathbb E_{p_\alpha}[\nabla_\alpha f_\alpha(z^-)] \quad \text{per example},

the importance-weighted form of ``∇_α log p(X) = E_{p(z|X)}[∇_α f] − E_{p_α}[∇_α f]``.

[1] Shi, Siddharth, Paige, Torr (2019) "Variational Mixture-of-Experts Autoencoders for Multi-Modal
    Deep Generative Models". [2] Burda, Grosse, Salakhutdinov (2016) "Importance Weighted
    Autoencoders". [3] Tucker, Lawson, Gu, Maddison (2019) "Doubly Reparameterized Gradient
    Estimators for Monte Carlo Objectives". [4] Wu, Goodman (2018) "Multimodal Generative Models for
    Scalable Weakly-Supervised Learning".
"""

from __future__ import annotations

import copy
import functools
import math
from typing import Any, Callable, Optional

import pyro
import torch
from pyro.distributions import Distribution
from pyro.distributions.util import scale_and_mask
from pyro.infer import ELBO, Trace_ELBO
from pyro.infer.util import torch_item
from pyro.poutine import Trace
from torch import Tensor


def stratified_elbo(num_samples: int = 1) -> Trace_ELBO:
    """The stratified ELBO (MMVAE's objective with the mixture-of-experts guide), averaged over
    ``num_samples`` vectorised draws per stratum: Pyro's :class:`~pyro.infer.Trace_ELBO`."""
    return Trace_ELBO(max_plate_nesting=2, num_particles=num_samples, vectorize_particles=True)


class _DifferentiableLossELBO(Trace_ELBO):
    """A ``Trace_ELBO`` defined by its :meth:`differentiable_loss`, from which ``loss`` and
    ``loss_and_grads`` (used by :class:`~pyro.infer.SVI`) follow."""

    def loss(self, model: Callable, guide: Callable, *args: Any, **kwargs: Any) -> float:
        with torch.no_grad():
            return torch_item(self.differentiable_loss(model, guide, *args, **kwargs))

    def loss_and_grads(self, model: Callable, guide: Callable, *args: Any, **kwargs: Any) -> float:
        loss = self.differentiable_loss(model, guide, *args, **kwargs)
        if loss.requires_grad:
            loss.backward(retain_graph=self.retain_graph)
        return torch_item(loss)


def _detach_parameters(fn: Distribution) -> Distribution:
    """A shallow copy of ``fn`` whose tensors, and those of the distributions it wraps, are detached."""
    new = copy.copy(fn)
    for key, value in vars(fn).items():
        if isinstance(value, Tensor):
            new.__dict__[key] = value.detach()
        elif isinstance(value, Distribution):
            new.__dict__[key] = _detach_parameters(value)
    return new


def _stratified_bound(log_weights: Tensor) -> Tensor:
    """``(1/D) Σ_k log (1/K) Σ_j w_jk`` from log weights of shape ``(K, D, B)``: shape ``(B,)``."""
    return (log_weights.logsumexp(0) - math.log(log_weights.shape[0])).mean(0)


class IWAE(_DifferentiableLossELBO):
    r"""The stratified importance-weighted bound ``L_K`` with ``K`` samples per stratum [1, 2].

    The loss is ``−Σ_b L_K(X_b)`` (summed over the batch, like ``Trace_ELBO``'s); its gradient is the
    reparameterised gradient of ``L_K``. ``K = 1`` is the stratified ELBO. See the module docstring
    for the bound and why the EBM prior's unknown ``log Z(α)`` leaves the gradients exact.

    :param num_samples: ``K``, importance samples per stratum and example.
    """

    def __init__(self, num_samples: int = 1) -> None:
        if num_samples < 1:
            raise ValueError(f"num_samples must be at least 1, got {num_samples}")
        # Three plates: the particles at dim -3 and the model's "draws" and "data".
        super().__init__(max_plate_nesting=3)
        self.num_samples = num_samples

    def log_weights(
        self,
        model: Callable,
        guide: Callable,
        args: tuple,
        kwargs: dict,
        *,
        detach_guide_parameters: bool = False,
    ) -> tuple[Tensor, Trace]:
        """Log weights ``log w_jk`` of shape ``(K, D, B)`` and the guide trace they were drawn in.

        With ``detach_guide_parameters``, ``log q`` is computed with the guide distributions'
        parameters detached, so that ``φ`` enters the weights only through the samples.
        """

        def with_particles(fn: Callable) -> Callable:
            return pyro.plate("particles", self.num_samples, dim=-3)(fn)

        model_trace, guide_trace = self._get_trace(with_particles(model), with_particles(guide), args, kwargs)
        log_weights = 0.0
        for site in model_trace.nodes.values():
            if site["type"] == "sample":
                log_weights = log_weights + site["log_prob"]
        for name, site in guide_trace.nodes.items():
            if site["type"] != "sample":
                continue
            if not site["fn"].has_rsample:
                raise ValueError(f"importance-weighted objectives need a reparameterised guide; site {name!r} is not")
            log_q = site["log_prob"]
            if detach_guide_parameters:
                log_q = scale_and_mask(
                    _detach_parameters(site["fn"]).log_prob(site["value"]), site["scale"], site["mask"]
                )
            log_weights = log_weights - log_q
        if not isinstance(log_weights, Tensor) or log_weights.dim() != 3:
            raise ValueError(
                "expected log weights of shape (particles, draws, data): every sample site must be inside "
                "pyro.plate('draws', dim=-2) and pyro.plate('data', dim=-1)"
            )
        # Every site is scaled by 1/D (the model averages over the strata); a weight is unscaled.
        return log_weights * log_weights.shape[-2], guide_trace

    def differentiable_loss(self, model: Callable, guide: Callable, *args: Any, **kwargs: Any) -> Tensor:
        log_weights, _ = self.log_weights(model, guide, args, kwargs)
        return -_stratified_bound(log_weights).sum()


class DReG(IWAE):
    r"""Doubly reparameterised gradients [3] of the stratified IWAE bound, MMVAE's ``m_dreg_looser`` [1].

    With ``w̄_{jk}`` the weights normalised over the ``K`` samples of stratum ``k`` and ``log q``
    evaluated with the guide's parameters detached (``φ`` enters only through ``z_{jk}(φ, ε)``),

    .. math::

        \hat\nabla_\theta = \frac1D \sum_{k, j} \bar w_{jk} \nabla_\theta \log w_{jk}, \qquad
        \hat\nabla_\phi = \frac1D \sum_{k, j} \bar w_{jk}^2 \,
            \frac{\partial \log w_{jk}}{\partial z_{jk}} \frac{\partial z_{jk}}{\partial \phi},

    for the decoders and the prior (``θ``, including the EBM's ``α``: IWAE's gradient) and the
    encoders (``φ``). The extra factor ``w̄`` on the encoder path is applied by a gradient hook on
    every guide sample, as in MMVAE. The loss *value* is ``−Σ_b L_K``, as for :class:`IWAE`.

    For a single stratum (the PoE guide) the encoder gradient is unbiased for ``∇_φ L_K``, and it is
    exactly zero when ``q`` is the true posterior (then ``log w`` does not depend on ``z``). For a
    mixture guide with ``K > 1`` the identity behind it does not hold exactly, since ``z_{jk}`` is
    drawn from ``q_k`` but weighted by the mixture ``q``; this is MMVAE's estimator as published.

    :param num_samples: ``K``, importance samples per stratum and example.
    """

    def differentiable_loss(self, model: Callable, guide: Callable, *args: Any, **kwargs: Any) -> Tensor:
        log_weights, guide_trace = self.log_weights(model, guide, args, kwargs, detach_guide_parameters=True)
        with torch.no_grad():
            normalised = log_weights.softmax(0)
        for site in guide_trace.nodes.values():
            if site["type"] == "sample" and site["value"].requires_grad:
                factor = normalised.reshape(normalised.shape + (1,) * site["fn"].event_dim)
                site["value"].register_hook(lambda grad, factor=factor: grad * factor)
        surrogate = (normalised * log_weights).sum(0).mean(0).sum()
        bound = _stratified_bound(log_weights).sum()
        return -(bound.detach() + (surrogate - surrogate.detach()))


class SubsampledELBO(_DifferentiableLossELBO):
    r"""MVAE's sub-sampled objective [4]: the ELBO of the joint plus that of every single modality,

    .. math::

        \mathrm{ELBO}(x_1, \dots, x_m) + \sum_{i=1}^m \mathrm{ELBO}(x_i),

    where ``ELBO(X_S)`` scores ``p(X_S, z)`` (the model called with ``partial=True``) under the
    guide given ``X_S`` only. The guide must accept a partial batch, as
    :class:`~guides.ProductOfExpertsGuide` does. With one modality it is the plain ELBO.

    :param elbo: the objective of each term (default ``Trace_ELBO(max_plate_nesting=2)``; e.g.
        :class:`IWAE`).
    """

    def __init__(self, elbo: Optional[ELBO] = None) -> None:
        super().__init__(max_plate_nesting=2)
        self.elbo = elbo if elbo is not None else Trace_ELBO(max_plate_nesting=2)

    def differentiable_loss(
        self, model: Callable, guide: Callable, batch: dict[str, Tensor], *args: Any, **kwargs: Any
    ) -> Tensor:
        subsets = [dict(batch)] + ([{name: x} for name, x in batch.items()] if len(batch) > 1 else [])
        observe_subset = functools.partial(model, partial=True)
        return sum(
            self.elbo.differentiable_loss(observe_subset, guide, subset, *args, **kwargs) for subset in subsets
        )


OBJECTIVES: dict[str, Callable[[int], ELBO]] = {"elbo": stratified_elbo, "iwae": IWAE, "dreg": DReG}
"""Objectives by name, each built as ``OBJECTIVES[name](K)`` with ``K`` samples per stratum."""

__all__ = ["DReG", "IWAE", "OBJECTIVES", "SubsampledELBO", "stratified_elbo"]
