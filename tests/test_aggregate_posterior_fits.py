"""The density fits of ``bench/aggregate_posterior_fits.py``: k-means and its mixture of diagonal
Gaussians recover well-separated clusters exactly and their spreads within Monte Carlo error."""

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import aggregate_posterior_fits  # noqa: E402

CENTRES = torch.tensor([[-20.0, 0.0, 5.0], [0.0, 20.0, -5.0], [20.0, -20.0, 0.0]])
SPREADS = torch.tensor([[1.0, 0.5, 2.0], [0.3, 1.0, 1.0], [2.0, 2.0, 0.5]])


def clusters(sizes: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    labels = torch.cat([torch.full((n,), i) for i, n in enumerate(sizes)])
    return CENTRES[labels] + SPREADS[labels] * torch.randn(len(labels), 3), labels


def test_kmeans_recovers_well_separated_clusters():
    torch.manual_seed(0)
    z, labels = clusters([300, 200, 100])
    found = aggregate_posterior_fits.kmeans(z, 3)
    # The same partition up to the clusters' names: each true cluster maps to one found cluster.
    pairs = {(int(a), int(b)) for a, b in zip(labels, found)}
    assert len(pairs) == 3 and len({b for _, b in pairs}) == 3


def test_diagonal_mixture_samples_have_the_clusters_weights_means_and_spreads():
    torch.manual_seed(0)
    z, _ = clusters([3000, 2000, 1000])
    n = 60000
    samples = aggregate_posterior_fits.diagonal_mixture_samples(z, aggregate_posterior_fits.kmeans(z, 3), n)
    nearest = torch.cdist(samples, CENTRES).argmin(1)
    weights = torch.bincount(nearest, minlength=3) / n
    # Binomial standard error of a weight is at most sqrt(0.25 / n) = 0.002; 5 of them.
    assert torch.allclose(weights, torch.tensor([0.5, 1 / 3, 1 / 6]), atol=0.01)
    for i in range(3):
        own = samples[nearest == i]
        # Fitted on 1,000 draws or more: a mean's standard error is at most 2 / sqrt(1000) = 0.063
        # (atol 0.3: about 5 of them), a spread's about 1 / sqrt(2 * 1000) = 2.2 % relative (rtol
        # 10 %: about 4.5 of them); the 10,000 samples or more per cluster add less.
        assert torch.allclose(own.mean(0), CENTRES[i], atol=0.3)
        assert torch.allclose(own.std(0), SPREADS[i], rtol=0.1)


def test_noise_contrastive_energy_fit_climbs_to_the_mode_of_the_draws():
    # Draws of N((2, -1), 0.3² I): the fitted tilt exp(f) p0 has its mode where q has, and climbing
    # f + log p0 without noise from p0 ends there. What is left is the fit's error in the gradient of
    # the log ratio near the mode: measured 0.035 on this seed (0.078 after 800 steps at 1e-2); the
    # bound, 0.1, is a third of q's spread.
    torch.manual_seed(0)
    centre = torch.tensor([2.0, -1.0])
    draws = centre + 0.3 * torch.randn(20000, 2)
    prior = aggregate_posterior_fits.fit_energy(draws, "nce", 3e-3, steps=1500, batch_size=512, hidden=32)
    ends = aggregate_posterior_fits.climbed(prior, 200, steps=300, rate=0.02)
    assert (ends - centre).norm(dim=1).median() < 0.1
