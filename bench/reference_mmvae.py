"""An independent MMVAE in plain PyTorch, to tell a slow library from a slow recipe on real PolyMNIST.

Issue 12 reported that an independent PyTorch MMVAE learned the digit within 1,500 steps of batch
128 where this library stayed at chance. This script is such a model written without the library's
model, guide, networks, likelihoods or objective (only its data set and the cached coherence
classifiers are shared, so that both are measured alike): MoPoE's PolyMNIST conv stack with the loc
and scale heads straight from the 2,048 conv features, softmax-scaled Laplace experts (MMVAE), a
``Laplace(·, 0.75)`` likelihood, a ``Laplace(0, 1)`` prior, and MMVAE's stratified mixture-of-experts
objective with one draw per expert [Shi et al. 2019, Eqs. 8–9],

    (1/M) Σ_m [ log p(z_m) + Σ_j log p(x_j | z_m) − log (1/M) Σ_i q_i(z_m | x_i) ],  z_m ~ q_m(z | x_m),

averaged over the batch and maximised with Adam. ``--objective dreg`` stops the gradient through
the experts' parameters in ``log q`` (DReG with one sample, as MMVAE+ trains), and ``analytic_kl``
replaces the log-density ratio by each expert's own ``KL(q_m ‖ p)`` (MMVAE's simpler bound).

Every ``--eval-every`` steps it writes, to ``--out`` (JSON, the same curve format as
``bench/learning_speed.py``), the single-source cross coherence (``m_i → m_j``, ``i ≠ j``) and
self-reconstruction coherence (``m_i → m_i``) on 500 strided test tuples, each from a posterior
draw of ``z`` (``cross``, ``self``) and from the posterior mean (``cross_mean``, ``self_mean``).

    OMP_NUM_THREADS=1 python bench/reference_mmvae.py --out bench/results/learning_speed/reference_mmvae.json
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.distributions import Laplace
from torch.nn import functional as F

from learning_speed import load_classifiers
from pyro_mmebm.data import InMemoryBatches, PolyMNIST, strided_tensors

LIKELIHOOD_SCALE = 0.75


class Encoder(nn.Module):
    """MoPoE's PolyMNIST conv stack; loc and a softmax scale (the ``d`` scales sum to ``d``)."""

    def __init__(self, latent_dim: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, 32, 3, 2, 1), nn.ReLU(), nn.Conv2d(32, 64, 3, 2, 1), nn.ReLU(),
            nn.Conv2d(64, 128, 3, 2, 1), nn.ReLU(), nn.Flatten(),
        )
        self.loc, self.raw_scale = nn.Linear(2048, latent_dim), nn.Linear(2048, latent_dim)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        h = self.body(x)
        raw_scale = self.raw_scale(h)
        return self.loc(h), F.softmax(raw_scale, -1) * raw_scale.shape[-1] + 1e-6


class Decoder(nn.Module):
    """MoPoE's PolyMNIST decoder, unbounded output (the Laplace likelihood's location)."""

    def __init__(self, latent_dim: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(latent_dim, 2048), nn.ReLU(), nn.Unflatten(1, (128, 4, 4)),
            nn.ConvTranspose2d(128, 64, 3, 2, 1), nn.ReLU(),
            nn.ConvTranspose2d(64, 32, 3, 2, 1, 1), nn.ReLU(),
            nn.ConvTranspose2d(32, 3, 3, 2, 1, 1),
        )

    def forward(self, z: Tensor) -> Tensor:
        return self.net(z)


def negative_objective(encoders: nn.ModuleDict, decoders: nn.ModuleDict, batch: dict, objective: str) -> Tensor:
    """MMVAE's stratified objective (or its ``dreg``/``analytic_kl`` variant), negated and batch-averaged."""
    experts = [encoders[name](batch[name]) for name in encoders]
    loc, scale = torch.stack([e[0] for e in experts]), torch.stack([e[1] for e in experts])  # (M, B, d)
    num_experts = loc.shape[0]
    z = Laplace(loc, scale).rsample()  # z[m]: one draw of expert m per example
    if objective == "analytic_kl":
        # KL(Laplace(μ, s) ‖ Laplace(0, 1)) = s·exp(−|μ|/s) + |μ| − log s − 1, per dimension
        value = -(scale * torch.exp(-loc.abs() / scale) + loc.abs() - scale.log() - 1).sum(-1)
    else:
        q_loc, q_scale = (loc.detach(), scale.detach()) if objective == "dreg" else (loc, scale)
        log_q_each = Laplace(q_loc.unsqueeze(1), q_scale.unsqueeze(1)).log_prob(z.unsqueeze(0)).sum(-1)  # (i, m, B)
        log_q = log_q_each.logsumexp(0) - math.log(num_experts)
        value = Laplace(0.0, 1.0).log_prob(z).sum(-1) - log_q
    for name, decoder in decoders.items():
        mean = decoder(z.reshape(-1, z.shape[-1])).reshape(num_experts, -1, *batch[name].shape[1:])
        value = value + Laplace(mean, LIKELIHOOD_SCALE).log_prob(batch[name]).flatten(2).sum(-1)
    return -value.mean()


@torch.no_grad()
def coherence(encoders, decoders, classifiers, images: dict, labels: Tensor, use_mean: bool) -> tuple[float, float]:
    """Single-source cross coherence and self-reconstruction coherence."""
    cross = self_ = cross_total = self_total = 0
    for source, encoder in encoders.items():
        loc, scale = encoder(images[source])
        z = loc if use_mean else Laplace(loc, scale).sample()
        for target, decoder in decoders.items():
            correct = int((classifiers[target](decoder(z)).argmax(-1) == labels).sum())
            if source == target:
                self_, self_total = self_ + correct, self_total + len(labels)
            else:
                cross, cross_total = cross + correct, cross_total + len(labels)
    return cross / max(cross_total, 1), self_ / self_total


def main(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    sources = (args.source_root, f"{args.source_root}/PolyMNIST/backgrounds")
    train_x, train_y = PolyMNIST(args.data_root, train=True, generate_from=sources).tensors()
    test_x, test_y = PolyMNIST(args.data_root, train=False, generate_from=sources).tensors()
    names = args.modalities
    eval_x, eval_y = strided_tensors({name: test_x[name] for name in names}, test_y, args.eval_size)
    eval_x = {name: x.float() / 255 for name, x in eval_x.items()}
    encoders = nn.ModuleDict({name: Encoder(args.latent_dim) for name in names})
    decoders = nn.ModuleDict({name: Decoder(args.latent_dim) for name in names})
    optimizer = torch.optim.Adam([*encoders.parameters(), *decoders.parameters()], lr=args.lr, amsgrad=args.amsgrad)
    batches = InMemoryBatches({name: train_x[name] for name in names}, train_y, args.batch_size, drop_last=True)
    classifiers = None  # loaded at the first evaluation (trained first, into the cache, when missing)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    step, losses, curve, started = 0, [], [], time.perf_counter()
    while step < args.steps:
        for batch, _ in batches:
            optimizer.zero_grad()
            loss = negative_objective(encoders, decoders, batch, args.objective)
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
            step += 1
            if step % args.eval_every == 0 or step == args.steps:
                encoders.eval(), decoders.eval()
                if classifiers is None:
                    classifiers = load_classifiers(args.classifier_dir, train_x, train_y, test_x, test_y)
                    for classifier in classifiers.values():
                        classifier.eval()
                cross, self_ = coherence(encoders, decoders, classifiers, eval_x, eval_y, use_mean=False)
                cross_mean, self_mean = coherence(encoders, decoders, classifiers, eval_x, eval_y, use_mean=True)
                encoders.train(), decoders.train()
                point = {
                    "step": step, "seconds": time.perf_counter() - started, "loss": sum(losses) / len(losses),
                    "cross": cross, "self": self_, "cross_mean": cross_mean, "self_mean": self_mean,
                }
                losses = []
                curve.append(point)
                print(json.dumps(point), flush=True)
                out.write_text(json.dumps({"settings": vars(args), "curve": curve}, indent=2))
            if step == args.steps:
                break


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="JSON file of the curve")
    parser.add_argument("--data-root", default="../data/polymnist")
    parser.add_argument("--source-root", default="../shared/data")
    parser.add_argument("--classifier-dir", default="../data/cache/classifiers/polymnist")
    parser.add_argument("--modalities", nargs="+", default=list(PolyMNIST.modalities))
    parser.add_argument("--objective", default="mixture", choices=["mixture", "dreg", "analytic_kl"])
    parser.add_argument("--latent-dim", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--amsgrad", action="store_true")
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--eval-every", type=int, default=250)
    parser.add_argument("--eval-size", type=int, default=500)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    main(parser.parse_args())
