"""Diagnostics of the EBM prior's sampler and of the guide, in ArviZ, with their figures.

- :mod:`~pyro_mmebm.diagnostics.prior`: Langevin chains as :class:`arviz.InferenceData`, R-hat/ESS
  flags, a NUTS reference and short-run-versus-reference sweeps.
- :mod:`~pyro_mmebm.diagnostics.posterior`: guide draws as posterior draws, expert spread and
  agreement, Pareto k̂.
- :mod:`~pyro_mmebm.diagnostics.figures`: the Markov chain transition figure, histograms of ``f_α``.

The normaliser ``log Z(α)`` is in :mod:`pyro_mmebm.ebm.ais`, test log-likelihoods in
:mod:`pyro_mmebm.evaluation.log_likelihood`.
"""

from pyro_mmebm.diagnostics.figures import plot_energy_histograms, plot_transitions
from pyro_mmebm.diagnostics.posterior import (
    KHAT_BAD,
    KHAT_GOOD,
    expert_agreement,
    expert_spread,
    posterior_proposal,
    pairwise_kl,
    pairwise_wasserstein,
    posterior_inference_data,
    psis_khat,
)
from pyro_mmebm.diagnostics.prior import (
    ESS_PER_CHAIN,
    RHAT_FAIL,
    RHAT_WARN,
    compare_marginals,
    langevin_inference_data,
    langevin_sweep,
    mixing_summary,
    nuts_reference,
    pooled_draws,
    prior_chains,
)

__all__ = [
    "ESS_PER_CHAIN",
    "KHAT_BAD",
    "KHAT_GOOD",
    "RHAT_FAIL",
    "RHAT_WARN",
    "compare_marginals",
    "expert_agreement",
    "expert_spread",
    "langevin_inference_data",
    "langevin_sweep",
    "mixing_summary",
    "nuts_reference",
    "pairwise_kl",
    "pairwise_wasserstein",
    "plot_energy_histograms",
    "plot_transitions",
    "pooled_draws",
    "posterior_inference_data",
    "posterior_proposal",
    "prior_chains",
    "psis_khat",
]
