"""How fast MMVAE learns the digit on real PolyMNIST, per network and optimiser setting.

One setting per process (two run side by side, one thread each): train the MoE guide with the
Laplace prior for ``--steps`` steps of ``--batch-size`` and, every ``--eval-every`` steps, measure on
a strided test subset the single-source cross coherence (``m_i → m_j``, ``i ≠ j``), the
self-reconstruction coherence (``m_i → m_i``) and a linear probe of the digit on the posterior mean.
The curve is written after every evaluation to ``<out>/<name>.json``, so nothing measured is lost.

    OMP_NUM_THREADS=1 python bench/learning_speed.py --name today --encoder-hidden 512 --decoder-output sigmoid
    OMP_NUM_THREADS=1 python bench/learning_speed.py --name mopoe_nets --encoder-hidden 0 --decoder-output identity
    OMP_NUM_THREADS=1 python bench/learning_speed.py --name mmvae_plus_bs32 --private-latent-dim 32 --batch-size 32 --steps 6000
    OMP_NUM_THREADS=1 python bench/learning_speed.py --name unimodal_m0_bs32 --modalities m0 --batch-size 32 --steps 4000
    python bench/learning_speed.py --table    # the table of every curve measured
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import pyro
import torch
from pyro.infer import Trace_ELBO

from guides import MixtureOfExpertsGuide, PrivateLatentGuide
from models import MultimodalVAE, PrivateLatentVAE
from pyro_mmebm.atomic import atomic_path
from pyro_mmebm.data import InMemoryBatches, PolyMNIST, strided_tensors
from pyro_mmebm.evaluation import load_or_train_classifier
from pyro_mmebm.evaluation.coherence import cross_coherence, generate_from, linear_probe_accuracy
from pyro_mmebm.likelihoods import Likelihood
from pyro_mmebm.networks import PolyMNISTDecoder, PolyMNISTEncoder
from pyro_mmebm.priors import PRIORS


def load_classifiers(cache_dir: str, train_x: dict, train_y, test_x: dict, test_y) -> dict:
    """The cached digit classifiers of the five modalities (trained first when missing)."""
    return {
        name: load_or_train_classifier(
            name, lambda: InMemoryBatches(train_x, train_y, 128), lambda: InMemoryBatches(test_x, test_y, 1000, shuffle=False),
            cache_dir, architecture="polymnist", epochs=4, progress=False,
        )[0]
        for name in train_x
    }


@torch.no_grad()
def self_coherence(model, guide, classifiers, loader) -> float:
    """Fraction of ``m_i → m_i`` reconstructions classified as the example's label, over all ``i``."""
    correct = total = 0
    for batch, labels in loader:
        for name, classifier in classifiers.items():
            generated = generate_from(model, guide, {name: batch[name]})[name]
            correct += int((classifier(generated).argmax(-1) == labels).sum())
            total += labels.numel()
    return correct / total


def main(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    pyro.set_rng_seed(args.seed)
    train_set = PolyMNIST(args.data_root, train=True, generate_from=(args.source_root, f"{args.source_root}/PolyMNIST/backgrounds"))
    test_set = PolyMNIST(args.data_root, train=False, generate_from=(args.source_root, f"{args.source_root}/PolyMNIST/backgrounds"))
    train_x, train_y = train_set.tensors()
    test_x, test_y = test_set.tensors()
    modalities = args.modalities or list(train_set.modalities)
    train_x = {name: train_x[name] for name in modalities}
    test_x = {name: test_x[name] for name in modalities}
    eval_x, eval_y = strided_tensors(test_x, test_y, args.eval_size)
    probe_x, probe_y = strided_tensors(train_x, train_y, 2000)
    eval_loader = InMemoryBatches(eval_x, eval_y, 250, shuffle=False)
    probe_loader = InMemoryBatches(probe_x, probe_y, 250, shuffle=False)

    d, w = args.latent_dim, args.private_latent_dim
    encoders = {name: PolyMNISTEncoder(d + w, hidden_dim=args.encoder_hidden, scale_activation=args.scale_activation) for name in modalities}
    decoders = {name: PolyMNISTDecoder(d + w, output=args.decoder_output) for name in modalities}
    likelihoods = {name: Likelihood(args.likelihood, args.likelihood_scale) for name in modalities}
    if w:  # MMVAE+: a private latent per modality beside z
        model = PrivateLatentVAE(decoders, likelihoods, PRIORS[args.prior](d), w)
        guide = PrivateLatentGuide(encoders, d, w)
    else:
        model = MultimodalVAE(decoders, likelihoods, PRIORS[args.prior](d))
        guide = MixtureOfExpertsGuide(encoders, d)
    params = list(model.parameters()) + list(guide.parameters())
    optimizer = torch.optim.Adam(params, lr=args.lr, amsgrad=args.amsgrad)
    loss_fn = Trace_ELBO(max_plate_nesting=2)(model, guide)
    batches = InMemoryBatches(train_x, train_y, args.batch_size, drop_last=True)

    classifiers = None  # loaded at the first evaluation: they may still be training in another process
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    curve, losses, step, started = [], [], 0, time.perf_counter()
    checkpoint = out / f"{args.name}.pt"
    if args.resume and checkpoint.exists():
        # The weights, optimiser and step of the last evaluation, and the curve up to it; the order of
        # the batches after it is drawn afresh. A checkpoint of weights only (older --save) continues
        # with a fresh optimiser, and the curve says so at the step where it did.
        state = torch.load(checkpoint, weights_only=True)
        model.load_state_dict(state["model"]), guide.load_state_dict(state["guide"])
        curve = json.loads((out / f"{args.name}.json").read_text())["curve"]
        step = state.get("step", curve[-1]["step"])
        if "optimizer" in state:
            optimizer.load_state_dict(state["optimizer"])
        else:
            curve[-1]["optimizer_reset_after"] = True
        started -= curve[-1]["seconds"]
        print(f"resumed at step {step}", flush=True)
    while step < args.steps:
        for batch, _ in batches:
            optimizer.zero_grad(set_to_none=True)
            loss = loss_fn(batch, num_draws=guide.num_draws) / args.batch_size
            loss.backward()
            optimizer.step()
            losses.append(float(loss.detach()))
            step += 1
            if step % args.eval_every == 0 or step == args.steps:
                model.eval(), guide.eval()
                classifiers = classifiers or load_classifiers(args.classifier_dir, train_x, train_y, test_x, test_y)
                cross = cross_coherence(model, guide, classifiers, eval_loader, max_source_size=1) if len(modalities) > 1 else None
                point = {
                    "step": step,
                    "seconds": time.perf_counter() - started,
                    "loss": sum(losses) / len(losses),
                    "cross": cross.mean if cross is not None else None,
                    "self": self_coherence(model, guide, classifiers, eval_loader),
                    "probe": linear_probe_accuracy(guide, probe_loader, eval_loader)["all"],
                }
                model.train(), guide.train()
                curve.append(point)
                losses = []
                print(json.dumps(point), flush=True)
                (out / f"{args.name}.json").write_text(json.dumps({"settings": vars(args), "curve": curve}, indent=2))
                if args.save:
                    state = {"model": model.state_dict(), "guide": guide.state_dict(),
                             "optimizer": optimizer.state_dict(), "step": step}
                    with atomic_path(checkpoint) as tmp:
                        torch.save(state, tmp)
            if step == args.steps:
                break


NOT_SETTINGS = ("name", "steps", "eval_every", "save", "resume", "table", "out", "threads", "classifier_dir")


def table(out: str) -> str:
    """A markdown table of every curve in ``out``: the settings that differ from the defaults, then the
    cross, self-reconstruction and probe accuracy at each evaluation, and the last training loss."""
    rows = []
    for path in sorted(Path(out).glob("*.json")):
        run = json.loads(path.read_text())
        settings = run["settings"]
        curve = " · ".join(
            f"{p['step']}: {'–' if p['cross'] is None else format(p['cross'], '.3f')}/{p['self']:.3f}/"
            f"{'–' if p.get('probe') is None else format(p['probe'], '.2f')}"
            for p in run["curve"]
        )
        if "name" in settings:
            changed = {k: v for k, v in settings.items() if k in DEFAULTS and k not in NOT_SETTINGS and v != DEFAULTS[k]}
            name, label = settings["name"], ", ".join(f"{k}={v}" for k, v in changed.items()) or "defaults"
        else:  # a curve of bench/reference_mmvae.py: no probe
            name, label = path.stem, f"independent plain-PyTorch MMVAE, objective={settings['objective']}"
        rows.append(f"| {name} | {label} | {curve} | {run['curve'][-1]['loss']:.0f} |")
    header = "| run | settings (others: defaults) | step: cross/self/probe | last loss |\n|---|---|---|---|"
    return "\n".join([header, *rows])


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--table", action="store_true", help="print the table of the curves in --out and stop")
    parser.add_argument("--name")
    parser.add_argument("--data-root", default="../data/polymnist")
    parser.add_argument("--source-root", default="../shared/data")
    parser.add_argument("--classifier-dir", default="../runs/classifiers")
    parser.add_argument("--out", default="bench/results/learning_speed")
    parser.add_argument("--encoder-hidden", type=int, default=0)
    parser.add_argument("--decoder-output", default="identity", choices=["identity", "sigmoid"])
    parser.add_argument("--scale-activation", default="softmax", choices=["softmax", "softplus", "exp"])
    parser.add_argument("--likelihood", default="laplace", choices=["laplace", "normal"])
    parser.add_argument("--likelihood-scale", type=float, default=0.75, help="scale of the likelihood")
    parser.add_argument("--prior", default="laplace")
    parser.add_argument("--latent-dim", type=int, default=32)
    parser.add_argument("--private-latent-dim", type=int, default=0, help="MMVAE+'s private latent per modality (0: none)")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--amsgrad", action="store_true")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--eval-every", type=int, default=250)
    parser.add_argument("--eval-size", type=int, default=500)
    parser.add_argument("--modalities", nargs="+", help="train on these modalities only (default: all five)")
    parser.add_argument("--save", action="store_true", help="save the model, guide and optimiser at every evaluation")
    parser.add_argument("--resume", action="store_true", help="continue from the last --save of this --name")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    DEFAULTS = {action.dest: action.default for action in parser._actions}
    args = parser.parse_args()
    if args.table:
        print(table(args.out))
    elif args.name is None:
        parser.error("--name is required to train")
    else:
        main(args)
