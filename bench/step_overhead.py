"""Time one Pyro training step against a hand-written PyTorch step computing the same loss.

Both steps use the same networks (MMVAE's MNIST MLP and SVHN CNN, latent 20), the same batch, the same
prior object and an Adam update. The hand-written loss is the stratified mixture-of-experts objective
written out with torch.distributions. Steps alternate, so background load affects both equally; the
median of each is reported with their ratio. Run: ``python bench/step_overhead.py [--device cuda]``.
"""

from __future__ import annotations

import argparse
import math
import statistics
import time

import torch
from pyro.infer import Trace_ELBO
from torch.distributions import Laplace

from guides import MixtureOfExpertsGuide
from models import MultimodalVAE
from models.multimodal_vae import decode_batched
from pyro_mmebm import EnergyBasedPrior, LaplacePrior, Likelihood
from pyro_mmebm.device import select_device
from pyro_mmebm.networks import MNISTDecoder, MNISTEncoder, SVHNDecoder, SVHNEncoder

LIKELIHOOD_SCALES = {"mnist": 3 * 32 * 32 / (28 * 28), "svhn": 1.0}


def build(prior_name: str, latent_dim: int, device: torch.device):
    prior = EnergyBasedPrior(latent_dim) if prior_name == "ebm" else LaplacePrior(latent_dim)
    decoders = {"mnist": MNISTDecoder(latent_dim), "svhn": SVHNDecoder(latent_dim)}
    likelihoods = {name: Likelihood("laplace", 0.75) for name in decoders}
    model = MultimodalVAE(decoders, likelihoods, prior, LIKELIHOOD_SCALES).to(device)
    guide = MixtureOfExpertsGuide({"mnist": MNISTEncoder(latent_dim), "svhn": SVHNEncoder(latent_dim)}, latent_dim)
    return model, guide.to(device)


def hand_written_loss(model: MultimodalVAE, guide: MixtureOfExpertsGuide, batch: dict) -> torch.Tensor:
    """The negative stratified MoE objective, without Pyro."""
    locs, scales = zip(*(guide.encoders[name](batch[name]) for name in guide.modalities))
    loc, scale = torch.stack(locs), torch.stack(scales)  # (m, B, d)
    m = loc.shape[0]
    z = Laplace(loc, scale).rsample()
    log_q = Laplace(loc, scale).log_prob(z.unsqueeze(1)).sum(-1).logsumexp(1) - math.log(m)
    log_p = model.prior().log_prob(z)
    for name, decoder in model.decoders.items():
        mean = decode_batched(decoder, z)
        log_p = log_p + LIKELIHOOD_SCALES[name] * Laplace(mean, 0.75).log_prob(batch[name]).flatten(2).sum(-1)
    return -(log_p - log_q).sum() / m


def timed_step(loss_fn, optimizer, device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    optimizer.zero_grad(set_to_none=True)
    loss = loss_fn()
    loss.backward()
    optimizer.step()
    float(loss.detach())  # both paths read the loss back, as fit() does
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def main(args: argparse.Namespace) -> None:
    device = select_device(args.device)
    torch.manual_seed(0)
    batch = {
        "mnist": torch.rand(args.batch_size, 1, 28, 28, device=device),
        "svhn": torch.rand(args.batch_size, 3, 32, 32, device=device),
    }
    print(f"device={device} batch={args.batch_size} threads={torch.get_num_threads()} steps={args.steps}")
    print("| prior | Pyro step (ms) | hand-written step (ms) | ratio |")
    print("|---|---|---|---|")
    for prior_name in args.priors:
        model, guide = build(prior_name, args.latent_dim, device)
        params = list(model.parameters()) + list(guide.parameters())
        optimizer = torch.optim.Adam(params, lr=1e-4)
        elbo = Trace_ELBO(max_plate_nesting=2)(model, guide)
        pyro_step = lambda: elbo(batch, num_draws=guide.num_draws)  # noqa: E731
        hand_step = lambda: hand_written_loss(model, guide, batch)  # noqa: E731
        # The two losses agree in distribution; check they agree in value for one shared draw.
        torch.manual_seed(1)
        with torch.no_grad():
            pyro_value = float(pyro_step())
        torch.manual_seed(1)
        with torch.no_grad():
            hand_value = float(hand_step())
        assert math.isclose(pyro_value, hand_value, rel_tol=1e-4), (pyro_value, hand_value)
        for _ in range(args.warmup):
            timed_step(pyro_step, optimizer, device)
            timed_step(hand_step, optimizer, device)
        pyro_times, hand_times = [], []
        for _ in range(args.steps):
            pyro_times.append(timed_step(pyro_step, optimizer, device))
            hand_times.append(timed_step(hand_step, optimizer, device))
        pyro_ms, hand_ms = 1e3 * statistics.median(pyro_times), 1e3 * statistics.median(hand_times)
        print(f"| {prior_name} | {pyro_ms:.1f} | {hand_ms:.1f} | {pyro_ms / hand_ms:.3f} |")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--latent-dim", type=int, default=20)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--priors", nargs="+", default=["laplace", "ebm"], choices=["laplace", "ebm"])
    main(parser.parse_args())
