"""Short-run Langevin dynamics for an unnormalised log density, unadjusted or Metropolis-adjusted.

One step proposes

.. math::

    z' = z_k + \\frac{s^2}{2} \\nabla_z \\log \\tilde p(z_k) + s \\, \\epsilon_k,
    \\qquad \\epsilon_k \\sim \\mathcal N(0, I),

run for ``K`` steps from an initial state (for the EBM prior: draws from the base ``p0``). ``K`` and
``s`` are a :class:`LangevinConfig`, checked when it is made.

The unadjusted chain (ULA, the default, the sampler of [1]) takes every proposal, ``z_{k+1} = z'``.
Its stationary law is not the target but one biased by ``O(s²)``: on a standard Normal it has variance
``1 / (1 − s²/4)``. The Metropolis-adjusted chain (MALA [3], ``metropolis=True``) accepts ``z'`` with
probability

.. math::

    \\min\\Bigl(1, \\frac{\\tilde p(z') \\, q(z_k \\mid z')}{\\tilde p(z_k) \\, q(z' \\mid z_k)}\\Bigr),
    \\qquad q(b \\mid a) = \\mathcal N\\bigl(b;\\, a + \\tfrac{s^2}{2} \\nabla \\log \\tilde p(a),\\, s^2 I\\bigr),

and stays at ``z_k`` otherwise, so the target is its stationary law exactly whatever ``s``: a step
too large shows as a low acceptance rate, not as samples of another distribution. It costs the same
gradient evaluations as ULA (a proposal's gradient is the next step's when it is accepted) and one
more evaluation of the log density per step. It needs a drift of bounded growth: where the gradient is
huge (tails lighter than a Gaussian's, e.g. quartic) a chain proposes far beyond the target's mass and
rejects every move, so chains started there stay (acceptance 0) [3]. The EBM prior, a Laplace base
tilted by an energy MLP whose slope is bounded, has no such tails.

The chain never builds an autograd graph through its states: every step differentiates the log density
with respect to the current state only (``torch.autograd.grad`` with ``inputs=z``), so parameters
receive no gradient and no memory is held across steps. It runs under ``torch.no_grad()`` too (Pyro's
``Predictive`` and ``SVI.evaluate_loss`` evaluate models that way), but not under
``torch.inference_mode()``, whose tensors cannot be differentiated.

References:
    [1] Pang, Han, Nijkamp, Zhu, Wu (2020) "Learning Latent Space Energy-Based Prior Model".
    [2] Nijkamp, Hill, Zhu, Wu (2019) "Learning Non-Convergent Non-Persistent Short-Run MCMC
        Toward Energy-Based Model".
    [3] Roberts, Tweedie (1996) "Exponential convergence of Langevin distributions and their discrete
        approximations".
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, ClassVar, Optional

import torch
from torch import Tensor, nn

from pyro_mmebm.settings import at_least, check_settings, positive, setting

LogDensity = Callable[[Tensor], Tensor]


@dataclass(frozen=True)
class LangevinConfig:
    """The settings of a short-run Langevin sampler: ``steps`` (``K``) steps of size ``step_size`` (``s``),
    unadjusted or, with ``metropolis``, Metropolis-adjusted (MALA).

    Impossible values (negative steps, a step size that is not a positive finite number) are refused
    here, when the settings are made; the sampler takes them as they are.
    """

    settings_prefix: ClassVar[str] = "langevin"

    steps: int = setting(50, "short-run Langevin steps K", check=at_least(0))
    step_size: float = setting(0.3, "Langevin step size s", check=positive)
    metropolis: bool = setting(
        False, "Metropolis-adjusted Langevin (MALA): accept or reject each step, so the chains sample the target exactly"
    )

    def __post_init__(self) -> None:
        check_settings(self)


class LangevinDivergenceError(FloatingPointError):
    """Raised when a Langevin chain produces non-finite states."""


@dataclass
class LangevinRun:
    """The outcome of :func:`langevin_run`.

    ``samples`` has the shape of the initial state. With ``record=True``, ``states`` has shape
    ``(K + 1, *init.shape)`` (the initial state first), ``log_density`` shape ``(K + 1, *batch)`` and
    ``grad_norm`` (Euclidean norm of the drift's gradient over the last dimension) the same; otherwise
    they are ``None``. A Metropolis-adjusted run has ``acceptance``, each chain's share of accepted
    proposals, shape ``(*batch,)`` (``None`` for an unadjusted run, or with no step).
    """

    samples: Tensor
    step_size: float
    acceptance: Optional[Tensor] = None
    states: Optional[Tensor] = None
    log_density: Optional[Tensor] = None
    grad_norm: Optional[Tensor] = None


def log_density_and_grad(log_density: LogDensity, z: Tensor) -> tuple[Tensor, Tensor]:
    """``(log_density(z), ∇_z log_density(z))``, both detached; works under ``torch.no_grad()``."""
    with torch.enable_grad():
        z = z.detach().requires_grad_(True)
        value = log_density(z)
        if value.shape != z.shape[:-1]:
            raise ValueError(
                f"log density must return one value per state: expected shape {tuple(z.shape[:-1])}, "
                f"got {tuple(value.shape)}"
            )
        (grad,) = torch.autograd.grad(value.sum(), z)
    return value.detach(), grad


def langevin_run(
    log_density: LogDensity,
    init: Tensor,
    langevin: LangevinConfig,
    *,
    record: bool = False,
    generator: Optional[torch.Generator] = None,
    base_score: Optional[Callable[[Tensor], Tensor]] = None,
    base_log_prob: Optional[Callable[[Tensor], Tensor]] = None,
) -> LangevinRun:
    """Run ``langevin.steps`` Langevin steps on every row of ``init`` (shape ``(*batch, d)``).

    :param log_density: ``z ↦ log p̃(z)``, mapping ``(*batch, d)`` to ``(*batch,)``; with
        ``base_score``, the log of the target's other factor only (e.g. ``f_α``).
    :param init: initial states; they are not modified.
    :param langevin: the number of steps ``K`` (0 returns ``init``), the step size ``s`` (the noise
        has standard deviation ``s``) and whether the steps are Metropolis-adjusted.
    :param record: keep every state and the per-step statistics (for diagnostics).
    :param generator: optional random generator for the noise (and the acceptance draws).
    :param base_score: ``z ↦ ∇_z log p0(z)`` in closed form, for a target ``exp(log_density) · p0``:
        added to the autograd gradient of ``log_density``, it spares differentiating ``p0`` at every
        step (for the EBM prior, a fifth of a step). Recorded log densities then omit ``log p0``.
    :param base_log_prob: ``z ↦ log p0(z)``, shape ``(*batch,)``: with ``base_score`` the
        Metropolis-adjusted chain needs it to weigh its proposals; unused otherwise.
    :raises LangevinDivergenceError: when a state of the unadjusted chain becomes non-finite (NaN or
        ±inf), naming the step size and the first bad step. (The adjusted chain rejects such proposals.)
    :raises ValueError: for a Metropolis-adjusted chain given only one of ``base_score`` and
        ``base_log_prob``.
    """
    if langevin.metropolis and (base_score is None) != (base_log_prob is None):
        raise ValueError(
            "a Metropolis-adjusted chain needs both base_score (for its drift) and base_log_prob (to weigh "
            "its proposals), or neither"
        )
    if langevin.metropolis:
        return _metropolis_adjusted_run(log_density, init, langevin, record, generator, base_score, base_log_prob)
    steps, step_size = langevin.steps, langevin.step_size
    z = init.detach()
    half_step_sq = 0.5 * step_size**2
    trace = _Trace() if record else None
    finite = []
    for _ in range(steps):
        value, grad = _value_and_drift(log_density, z, base_score)
        if trace is not None:
            trace.add(z, value, grad)
        noise = torch.randn(z.shape, dtype=z.dtype, device=z.device, generator=generator)
        # Two fused operations instead of four (a chain's step is otherwise dominated by them on a
        # small f_α); ``torch.add`` makes a new tensor, so the previous state, maybe ``init``, is kept.
        z = torch.add(z, grad, alpha=half_step_sq).add_(noise, alpha=step_size)
        finite.append(torch.isfinite(z).all())
    if finite:
        finite_steps = torch.stack(finite)
        if not bool(finite_steps.all()):
            first_bad = int((~finite_steps).nonzero()[0]) + 1
            raise LangevinDivergenceError(
                f"Langevin chain diverged: non-finite state at step {first_bad} of {steps} with "
                f"step size {step_size}. The step size is too large for this target (or the energy "
                f"function has exploded); reduce the step size."
            )
    if trace is None:
        return LangevinRun(samples=z, step_size=step_size)
    trace.add(z, *_value_and_drift(log_density, z, base_score))
    return trace.run(z, step_size)


class _Trace:
    """What a run with ``record=True`` keeps: every state, its log density and its drift's norm."""

    def __init__(self) -> None:
        self.states: list[Tensor] = []
        self.log_densities: list[Tensor] = []
        self.grad_norms: list[Tensor] = []

    def add(self, z: Tensor, value: Tensor, grad: Tensor) -> None:
        self.states.append(z)
        self.log_densities.append(value)
        self.grad_norms.append(grad.norm(dim=-1))

    def run(self, samples: Tensor, step_size: float, acceptance: Optional[Tensor] = None) -> LangevinRun:
        """The :class:`LangevinRun` of the chains ending at ``samples``, with the recorded steps stacked."""
        return LangevinRun(
            samples=samples,
            step_size=step_size,
            acceptance=acceptance,
            states=torch.stack(self.states),
            log_density=torch.stack(self.log_densities),
            grad_norm=torch.stack(self.grad_norms),
        )


def _value_and_drift(
    log_density: LogDensity, z: Tensor, base_score: Optional[Callable[[Tensor], Tensor]]
) -> tuple[Tensor, Tensor]:
    """``log_density(z)`` and the gradient of the whole target's log density (with ``base_score``)."""
    value, grad = log_density_and_grad(log_density, z)
    return value, grad if base_score is None else grad + base_score(z)


def _metropolis_adjusted_run(
    log_density: LogDensity,
    init: Tensor,
    langevin: LangevinConfig,
    record: bool,
    generator: Optional[torch.Generator],
    base_score: Optional[Callable[[Tensor], Tensor]],
    base_log_prob: Optional[Callable[[Tensor], Tensor]],
) -> LangevinRun:
    """:func:`langevin_run` with every proposal accepted or rejected by the Metropolis–Hastings rule.

    A state carries its log density and drift, so each step evaluates the network once, at the proposal.
    """
    steps, step_size = langevin.steps, langevin.step_size
    half_step_sq = 0.5 * step_size**2

    def evaluate(z: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        value, grad = _value_and_drift(log_density, z, base_score)
        target = value if base_log_prob is None else value + base_log_prob(z)
        return value, target, grad

    z = init.detach()
    value, target, grad = evaluate(z)
    accepted = torch.zeros(z.shape[:-1], dtype=z.dtype, device=z.device)
    trace = _Trace() if record else None
    if trace is not None:
        trace.add(z, value, grad)
    for _ in range(steps):
        noise = torch.randn(z.shape, dtype=z.dtype, device=z.device, generator=generator)
        proposal = torch.add(z, grad, alpha=half_step_sq).add_(noise, alpha=step_size)
        proposed_value, proposed_target, proposed_grad = evaluate(proposal)
        log_ratio = metropolis_log_ratio(z, proposal, noise, target, proposed_target, proposed_grad, step_size)
        accept = metropolis_accept(log_ratio, generator)
        accepted += accept
        z = torch.where(accept.unsqueeze(-1), proposal, z)
        value = torch.where(accept, proposed_value, value)
        target = torch.where(accept, proposed_target, target)
        grad = torch.where(accept.unsqueeze(-1), proposed_grad, grad)
        if trace is not None:
            trace.add(z, value, grad)
    acceptance = accepted / steps if steps else None
    if trace is None:
        return LangevinRun(samples=z, step_size=step_size, acceptance=acceptance)
    return trace.run(z, step_size, acceptance)


def metropolis_log_ratio(
    z: Tensor,
    proposal: Tensor,
    noise: Tensor,
    log_target: Tensor,
    proposed_log_target: Tensor,
    proposed_drift: Tensor,
    step_size: float,
) -> Tensor:
    """The log Metropolis–Hastings ratio of the Langevin proposal ``z' = z + s²/2 ∇log p̃(z) + s ε``:
    ``log p̃(z') − log p̃(z) + log q(z | z') − log q(z' | z)``, shape ``z.shape[:-1]``.

    :param noise: the proposal's ``ε`` (the forward move's standardised noise, so that
        ``log q(z' | z) = −|ε|²/2`` up to a constant shared by the backward move).
    :param proposed_drift: ``∇ log p̃(z')``, which centres the backward move.
    """
    back = (z - proposal - 0.5 * step_size**2 * proposed_drift) / step_size
    return proposed_log_target - log_target + 0.5 * (noise.square().sum(-1) - back.square().sum(-1))


def metropolis_accept(log_ratio: Tensor, generator: Optional[torch.Generator] = None) -> Tensor:
    """Which proposals are accepted: ``log u < log_ratio`` for ``u ~ U(0, 1)``; a non-finite proposal
    (a NaN or −inf ratio) never is."""
    uniform = torch.rand(log_ratio.shape, dtype=log_ratio.dtype, device=log_ratio.device, generator=generator)
    return torch.nan_to_num(log_ratio, nan=-torch.inf) > uniform.log()


def langevin_sample(
    log_density: LogDensity,
    init: Tensor,
    langevin: LangevinConfig,
    *,
    generator: Optional[torch.Generator] = None,
    base_score: Optional[Callable[[Tensor], Tensor]] = None,
    base_log_prob: Optional[Callable[[Tensor], Tensor]] = None,
) -> Tensor:
    """The final states of :func:`langevin_run`, shape ``init.shape``."""
    return langevin_run(
        log_density, init, langevin, generator=generator, base_score=base_score, base_log_prob=base_log_prob
    ).samples


class PersistentChains(nn.Module):
    """A buffer of Langevin chain states, for persistent contrastive divergence.

    Each call to :meth:`initial_states` returns the states the previous chains ended in, except that
    each chain restarts from the base distribution with probability ``reinit_prob`` (and all of them
    when the number of chains changes), which keeps the chains from collapsing onto a few modes [3].

    The states are a buffer (``states``, ``None`` before the first update), so they are part of the
    owning prior's ``state_dict``: a checkpoint saves them, and a resumed run continues the same chains.

    [3] Du, Mordatch (2019) "Implicit Generation and Modeling with Energy-Based Models".
    """

    states: Optional[Tensor]

    def __init__(self, reinit_prob: float = 0.05) -> None:
        super().__init__()
        if not 0.0 <= reinit_prob <= 1.0:
            raise ValueError(f"reinit_prob must lie in [0, 1], got {reinit_prob}")
        self.reinit_prob = reinit_prob
        self.register_buffer("states", None)

    def initial_states(self, fresh: Tensor) -> Tensor:
        """Chain starts of the shape of ``fresh`` (draws from the base), reusing stored states."""
        if self.states is None or self.states.shape != fresh.shape or self.states.device != fresh.device:
            return fresh
        restart = torch.rand(fresh.shape[:-1], device=fresh.device) < self.reinit_prob
        return torch.where(restart.unsqueeze(-1), fresh, self.states)

    def update(self, states: Tensor) -> None:
        self.states = states.detach()

    def _load_from_state_dict(
        self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
    ) -> None:
        # The number of chains, hence the buffer's shape, is known only once chains have run: a loaded
        # state replaces the buffer whatever its shape, and a state saved before any chain ran clears it.
        key = prefix + "states"
        self.states = state_dict[key].detach().clone() if key in state_dict else None
