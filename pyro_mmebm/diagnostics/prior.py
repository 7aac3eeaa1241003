r"""Diagnostics of the EBM prior's short-run Langevin sampler, in ArviZ.

Independent Langevin chains of ``p_α(z) ∝ exp(f_α(z)) p0(z)``, started from ``p0``, become an
:class:`arviz.InferenceData` whose ``posterior`` group holds the chains' states as draws (``z`` with
dims ``(chain, draw, z_dim)``; ArviZ calls the draws of any MCMC target "posterior", here the target
is the prior ``p_α``) and whose ``sample_stats`` group holds the per-step statistics. R-hat and ESS
per latent dimension then come from :func:`arviz.summary`; :func:`mixing_summary` flags poor mixing.

A reference sampler, Pyro's NUTS on the same unnormalised density (:func:`nuts_reference`), shows
how far *short-run* Langevin is from the prior it is meant to sample: :func:`compare_marginals`
compares marginals, :func:`langevin_sweep` does so over a grid of ``K`` and ``s``.

Seed with :func:`pyro.set_rng_seed` for reproducible draws.

References:
    [1] Vehtari, Gelman, Simpson, Carpenter, Bürkner (2021) "Rank-Normalization, Folding, and
        Localization: An Improved R-hat for Assessing Convergence of MCMC".
    [2] Hoffman, Gelman (2014) "The No-U-Turn Sampler".
    [3] Székely, Rizzo (2013) "Energy statistics: A class of statistics based on distances".
"""

from __future__ import annotations

from typing import Optional, Sequence, Union

import arviz as az
import numpy as np
import pandas as pd
import pyro
import torch
import xarray as xr
from pyro.infer.mcmc import MCMC, NUTS
from scipy import stats
from torch import Tensor

from pyro_mmebm.ebm import TiltedLaplace
from pyro_mmebm.ebm.langevin import LangevinConfig, LangevinDivergenceError, LangevinRun, langevin_run

ArrayLike = Union[Tensor, np.ndarray]

RHAT_WARN = 1.01
"""R-hat above this: do not trust the draws yet (the threshold recommended in [1])."""
RHAT_FAIL = 1.05
"""R-hat above this: the chains clearly disagree (the older, looser threshold)."""
ESS_PER_CHAIN = 100
"""Bulk and tail ESS should each reach 100 per chain (400 for four chains) [1]."""


def _check_unbatched(prior: TiltedLaplace) -> int:
    if prior.batch_shape != torch.Size():
        raise ValueError(f"expected a prior with batch shape (), got {tuple(prior.batch_shape)}")
    return prior.event_shape[0]


def prior_chains(
    prior: TiltedLaplace, num_chains: int = 4, *, langevin: Optional[LangevinConfig] = None
) -> LangevinRun:
    """Run ``num_chains`` independent Langevin chains of ``prior`` from ``p0``, keeping every state.

    :param prior: the EBM prior (``model.prior()``), batch shape ``()``.
    :param langevin: ``K`` and ``s``; default the sampler that generates (``prior.generation``, the
        training sampler ``prior.langevin`` unless generation has its own).
    :returns: a recorded :class:`~pyro_mmebm.ebm.langevin.LangevinRun`, ``states`` of shape
        ``(K + 1, num_chains, d)``.
    """
    _check_unbatched(prior)
    init = prior.base_dist.sample((num_chains,))
    return langevin_run(prior.unnormalized_log_prob, init, langevin or prior.generation, record=True)


def _langevin_groups(run: LangevinRun, steps: np.ndarray) -> tuple[xr.Dataset, xr.Dataset]:
    """The draws and the per-step statistics at Langevin steps ``steps``."""
    index = torch.as_tensor(steps, dtype=torch.long)

    def chain_first(x: Tensor) -> np.ndarray:  # (steps, chains, ...) -> (chains, kept steps, ...)
        return x[index].detach().cpu().transpose(0, 1).numpy()

    lp = chain_first(run.log_density)
    coords = {"draw": steps, "z_dim": np.arange(run.states.shape[-1])}
    draws = az.dict_to_dataset({"z": chain_first(run.states)}, coords=coords, dims={"z": ["z_dim"]})
    step_stats = az.dict_to_dataset(
        {"lp": lp, "grad_norm": chain_first(run.grad_norm), "step_size": np.full_like(lp, run.step_size)},
        coords={"draw": steps},
    )
    return draws, step_stats


def langevin_inference_data(
    run: LangevinRun, *, warmup: int = 0, thin: int = 1, save_warmup: bool = False
) -> az.InferenceData:
    r"""Convert a recorded Langevin run over chains to :class:`arviz.InferenceData`.

    Groups: ``posterior`` with ``z`` of dims ``(chain, draw, z_dim)``; ``sample_stats`` with ``lp``
    (``log p̃(z) = f_α(z) + log p0(z)``, the log density up to ``log Z``), ``grad_norm``
    (``‖∇_z log p̃(z)‖``) and ``step_size``, each ``(chain, draw)``. The ``draw`` coordinate is the
    Langevin step ``k`` (0 is the draw from ``p0``). With ``save_warmup``, the discarded steps go to
    ``warmup_posterior`` and ``warmup_sample_stats``.

    :param run: from ``langevin_run(..., record=True)`` on initial states of shape ``(chains, d)``
        (e.g. :func:`prior_chains`).
    :param warmup: discard steps ``0, …, warmup − 1``.
    :param thin: keep every ``thin``-th of the remaining steps.
    :param save_warmup: keep the discarded steps (thinned alike) in the warm-up groups.
    """
    if run.states is None:
        raise ValueError("the run holds no states: call langevin_run(..., record=True)")
    if run.states.dim() != 3:
        raise ValueError(f"expected states of shape (K + 1, chains, d), got {tuple(run.states.shape)}")
    num_states = run.states.shape[0]
    if not 0 <= warmup < num_states or thin < 1:
        raise ValueError(
            f"need 0 <= warmup < {num_states} (states in the run) and thin >= 1, got {warmup}, {thin}"
        )
    steps = np.arange(num_states)
    groups = dict(zip(("posterior", "sample_stats"), _langevin_groups(run, steps[warmup::thin])))
    if save_warmup and warmup > 0:
        groups.update(zip(("warmup_posterior", "warmup_sample_stats"), _langevin_groups(run, steps[:warmup:thin])))
    return az.InferenceData(**groups)


def mixing_summary(
    idata: az.InferenceData,
    var_names: Sequence[str] = ("z",),
    *,
    rhat_warn: float = RHAT_WARN,
    rhat_fail: float = RHAT_FAIL,
    min_ess_per_chain: float = ESS_PER_CHAIN,
) -> pd.DataFrame:
    """:func:`arviz.summary` of the posterior group (unrounded), with a ``mixing`` column per row.

    ``mixing`` is ``"poor"`` when rank-normalised split R-hat exceeds ``rhat_fail`` (or is undefined),
    ``"marginal"`` when it exceeds ``rhat_warn`` or the bulk or tail ESS is below
    ``min_ess_per_chain × chains``, else ``"ok"`` (thresholds of Vehtari et al. 2021 [1]). Short-run
    chains kept from step 0 are not stationary: a poor R-hat over the whole run says how far they
    still are from their common limit; discard a warm-up to judge the later steps.
    """
    table = az.summary(idata, var_names=list(var_names), round_to="none")
    min_ess = min_ess_per_chain * idata.posterior.sizes["chain"]
    poor = ~(table["r_hat"] <= rhat_fail)
    marginal = (table["r_hat"] > rhat_warn) | ~(np.minimum(table["ess_bulk"], table["ess_tail"]) >= min_ess)
    table["mixing"] = np.select([poor, marginal], ["poor", "marginal"], "ok")
    return table


def nuts_reference(
    prior: TiltedLaplace,
    num_samples: int = 500,
    *,
    num_chains: int = 2,
    warmup_steps: Optional[int] = None,
    max_tree_depth: int = 6,
) -> az.InferenceData:
    """Sample the EBM prior with NUTS [2], as a reference for short-run Langevin.

    The potential is ``U(z) = −f_α(z) − log p0(z)`` (``potential_fn``; same ``f_α`` and ``p0`` as the
    Langevin sampler). Chains run one after another, each started from a draw of ``p0``.

    :returns: ``posterior`` with ``z`` of dims ``(chain, draw, z_dim)``; ``sample_stats`` with ``lp``
        (``−U``) and ``diverging``, each ``(chain, draw)``.
    """
    _check_unbatched(prior)

    def potential_fn(params: dict[str, Tensor]) -> Tensor:
        return -prior.unnormalized_log_prob(params["z"])

    draws, diverging = [], np.zeros((num_chains, num_samples), dtype=bool)
    for chain in range(num_chains):
        kernel = NUTS(potential_fn=potential_fn, max_tree_depth=max_tree_depth)
        mcmc = MCMC(
            kernel,
            num_samples=num_samples,
            warmup_steps=num_samples if warmup_steps is None else warmup_steps,
            initial_params={"z": prior.base_dist.sample()},
            disable_progbar=True,
        )
        mcmc.run()
        draws.append(mcmc.get_samples()["z"].detach())
        diverging[chain, mcmc.diagnostics()["divergences"]["chain 0"]] = True
    z = torch.stack(draws)
    with torch.no_grad():
        lp = prior.unnormalized_log_prob(z)
    coords = {"z_dim": np.arange(z.shape[-1])}
    return az.InferenceData(
        posterior=az.dict_to_dataset({"z": z.cpu().numpy()}, coords=coords, dims={"z": ["z_dim"]}),
        sample_stats=az.dict_to_dataset({"lp": lp.cpu().numpy(), "diverging": diverging}),
    )


def pooled_draws(idata: az.InferenceData, var_name: str = "z") -> np.ndarray:
    """The posterior draws of ``var_name`` with chains pooled: shape ``(chain × draw, *dims)``."""
    values = idata.posterior[var_name].values
    return values.reshape(-1, *values.shape[2:])


def _numpy(x: ArrayLike) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, Tensor) else np.asarray(x)


def compare_marginals(samples: ArrayLike, reference: ArrayLike) -> pd.DataFrame:
    """Per-dimension distance between the marginals of ``samples`` ``(N, d)`` and ``reference`` ``(M, d)``.

    Columns: ``ks`` (two-sample Kolmogorov–Smirnov statistic, the largest gap between the empirical
    CDFs, in [0, 1]), ``ks_pvalue`` (valid only for independent draws; MCMC references are
    autocorrelated, so read the statistic), ``energy_distance`` (scipy's 1-D energy distance [3],
    in the units of ``z``). Index: ``z_dim``.
    """
    samples, reference = _numpy(samples), _numpy(reference)
    if samples.ndim != 2 or reference.ndim != 2 or samples.shape[1] != reference.shape[1]:
        raise ValueError(f"expected (N, d) and (M, d) arrays, got {samples.shape} and {reference.shape}")
    rows = []
    for j in range(samples.shape[1]):
        ks = stats.ks_2samp(samples[:, j], reference[:, j])
        rows.append(
            {
                "ks": ks.statistic,
                "ks_pvalue": ks.pvalue,
                "energy_distance": stats.energy_distance(samples[:, j], reference[:, j]),
            }
        )
    return pd.DataFrame(rows).rename_axis("z_dim")


def langevin_sweep(
    prior: TiltedLaplace,
    reference: ArrayLike,
    num_steps: Sequence[int],
    step_sizes: Sequence[float],
    *,
    num_samples: int = 1000,
) -> pd.DataFrame:
    """How close short-run Langevin gets to ``reference`` draws of the prior, for every ``(K, s)``.

    For each pair, ``num_samples`` chains run from ``p0`` and their final states are compared with
    :func:`compare_marginals`. Rows are indexed by ``(num_steps, step_size)``; columns ``ks_mean``,
    ``ks_max``, ``energy_distance_mean``, ``energy_distance_max`` (over latent dimensions) and
    ``diverged`` (the chains blew up; the distances are then NaN; Pyro's argument validation is off
    during the runs so that a blow-up is reported this way rather than as an error).

    :param reference: draws of the prior, ``(M, d)``, e.g. ``pooled_draws(nuts_reference(prior))``.
    """
    _check_unbatched(prior)
    rows = []
    for step_size in step_sizes:
        for steps in num_steps:
            row = {"num_steps": steps, "step_size": step_size, "diverged": False}
            try:
                # Without validation, a blown-up chain reaches langevin_run's divergence check instead of
                # failing p0's support check part-way.
                with pyro.validation_enabled(False):
                    init = prior.base_dist.sample((num_samples,))
                    run = langevin_run(prior.unnormalized_log_prob, init, LangevinConfig(steps, step_size))
            except LangevinDivergenceError:
                row["diverged"] = True  # the distance columns are left NaN
            else:
                table = compare_marginals(run.samples, reference)
                row.update(
                    ks_mean=table["ks"].mean(),
                    ks_max=table["ks"].max(),
                    energy_distance_mean=table["energy_distance"].mean(),
                    energy_distance_max=table["energy_distance"].max(),
                )
            rows.append(row)
    columns = ["ks_mean", "ks_max", "energy_distance_mean", "energy_distance_max", "diverged"]
    return pd.DataFrame(rows).set_index(["num_steps", "step_size"]).reindex(columns=columns)
