"""Where a PolyMNIST training step spends its time, and what makes it cheaper.

    OMP_NUM_THREADS=1 python bench/step_speed.py                 # CPU, one thread (as the figures)
    python bench/step_speed.py --device cuda                     # adds bf16 autocast

In one run, on random PolyMNIST-shaped data (five 3×28×28 modalities, MoPoE's networks, latent 32,
the Laplace prior, batch ``--batch-size``):

1. **data**: one batch through a ``DataLoader`` over items against ``InMemoryBatches``;
2. **step**: the Pyro step (``Trace_ELBO`` on model and guide, forward, backward, Adam) against
   the same loss written by hand in PyTorch, and against the step with each variant: networks in
   ``channels_last``, networks compiled with ``torch.compile``, and (CUDA) bf16 autocast. Steps
   alternate, so background load hits all alike; medians are reported. The loss of every variant is
   first checked equal to the Pyro step's for one shared draw (bf16 within its rounding);
3. **GFLOP/s**: the step's floating-point operations (``torch.utils.flop_counter``) over its time;
4. **Langevin**: ``K`` steps of the EBM prior's sampler (an MLP ``f_α``, 200 wide, 4 layers, on 256
   chains) against its floor, ``K`` forward-and-gradient passes of ``f_α`` alone;
5. **shape**: step time against batch size and number of modalities (the MMVAE objective decodes
   ``m²`` times), as a PNG.

Results go to ``--out`` (JSON and PNG). The thread count is set (``--threads``, default 1) and printed.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from pathlib import Path
from typing import Callable

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from pyro.infer import Trace_ELBO  # noqa: E402
from torch.distributions import Laplace  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

from guides import MixtureOfExpertsGuide  # noqa: E402
from models import MultimodalVAE  # noqa: E402
from models.multimodal_vae import decode_batched  # noqa: E402
from pyro_mmebm import LaplacePrior, Likelihood  # noqa: E402
from pyro_mmebm.data import InMemoryBatches  # noqa: E402
from pyro_mmebm.device import select_device  # noqa: E402
from pyro_mmebm.ebm import EnergyMLP  # noqa: E402
from pyro_mmebm.distributions.families import score  # noqa: E402
from pyro_mmebm.ebm.langevin import LangevinConfig, langevin_sample, log_density_and_grad  # noqa: E402
from pyro_mmebm.networks import PolyMNISTDecoder, PolyMNISTEncoder  # noqa: E402

LATENT = 32
LIKELIHOOD = Likelihood("laplace", 0.75)


def build(modalities: int, device: torch.device) -> tuple[MultimodalVAE, MixtureOfExpertsGuide]:
    torch.manual_seed(0)
    names = [f"m{i}" for i in range(modalities)]
    model = MultimodalVAE(
        {name: PolyMNISTDecoder(LATENT) for name in names}, {name: LIKELIHOOD for name in names}, LaplacePrior(LATENT)
    )
    guide = MixtureOfExpertsGuide({name: PolyMNISTEncoder(LATENT, scale_activation="softmax") for name in names}, LATENT)
    return model.to(device), guide.to(device)


def random_batch(modalities: int, batch_size: int, device: torch.device) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    return {f"m{i}": torch.rand(batch_size, 3, 28, 28, generator=generator).to(device) for i in range(modalities)}


def hand_written_loss(model: MultimodalVAE, guide: MixtureOfExpertsGuide, batch: dict) -> torch.Tensor:
    """MMVAE's stratified mixture-of-experts objective (negated), in PyTorch without Pyro."""
    locs, scales = zip(*(guide.encoders[name](batch[name]) for name in guide.modalities))
    loc, scale = torch.stack(locs), torch.stack(scales)  # (m, B, d)
    m = loc.shape[0]
    z = Laplace(loc, scale).rsample()
    log_q = Laplace(loc, scale).log_prob(z.unsqueeze(1)).sum(-1).logsumexp(1) - math.log(m)
    log_p = model.prior().log_prob(z)
    for name, decoder in model.decoders.items():
        mean = decode_batched(decoder, z)
        log_p = log_p + Laplace(mean, 0.75).log_prob(batch[name]).flatten(2).sum(-1)
    return -(log_p - log_q).sum() / m


class Variant:
    """One way to run the step: a model and guide (prepared by ``prepare``) and a loss closure."""

    def __init__(self, name: str, model, guide, loss: Callable[[], torch.Tensor], autocast: bool = False) -> None:
        self.name, self.model, self.guide, self.loss, self.autocast = name, model, guide, loss, autocast
        params = list(model.parameters()) + list(guide.parameters())
        self.optimizer = torch.optim.Adam(params, lr=1e-4)
        self.times: list[float] = []

    def value(self, seed: int) -> float:
        torch.manual_seed(seed)
        with torch.no_grad(), self._precision():
            return float(self.loss())

    def _precision(self):
        device_type = next(self.model.parameters()).device.type
        return torch.autocast(device_type, dtype=torch.bfloat16, enabled=self.autocast)

    def step(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        with self._precision():
            loss = self.loss()
        loss.backward()
        self.optimizer.step()
        float(loss.detach())  # the loss read back, as fit() does


def variants(args: argparse.Namespace, device: torch.device, batch: dict) -> list[Variant]:
    out = []

    def pyro_loss(model, guide):
        elbo = Trace_ELBO(max_plate_nesting=2)(model, guide)
        return lambda: elbo(batch, num_draws=guide.num_draws)

    model, guide = build(args.modalities, device)
    out.append(Variant("Pyro step (today)", model, guide, pyro_loss(model, guide)))
    model, guide = build(args.modalities, device)
    out.append(Variant("hand-written PyTorch step", model, guide, lambda m=model, g=guide: hand_written_loss(m, g, batch)))
    model, guide = build(args.modalities, device)
    model.to(memory_format=torch.channels_last)
    guide.to(memory_format=torch.channels_last)
    out.append(Variant("channels_last networks", model, guide, pyro_loss(model, guide)))
    if args.compile:
        model, guide = build(args.modalities, device)
        for networks in (model.decoders, guide.encoders):
            for name in list(networks):
                networks[name] = torch.compile(networks[name])
        out.append(Variant("torch.compile networks", model, guide, pyro_loss(model, guide)))
    if device.type == "cuda":
        model, guide = build(args.modalities, device)
        out.append(Variant("bf16 autocast", model, guide, pyro_loss(model, guide), autocast=True))
    return out


def time_it(fn: Callable[[], None], device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - started


def compare_steps(args: argparse.Namespace, device: torch.device) -> dict:
    batch = random_batch(args.modalities, args.batch_size, device)
    candidates = variants(args, device, batch)
    reference = candidates[0].value(seed=3)
    checks = {}
    for variant in candidates:
        value = variant.value(seed=3)
        tolerance = 2e-2 if variant.autocast else 1e-4
        assert math.isclose(value, reference, rel_tol=tolerance), (variant.name, value, reference)
        checks[variant.name] = value
    compile_seconds = {}
    for variant in candidates:
        started = time.perf_counter()
        for _ in range(args.warmup):
            variant.step()
        compile_seconds[variant.name] = time.perf_counter() - started
    for _ in range(args.steps):
        for variant in candidates:
            variant.times.append(time_it(variant.step, device))
    with FlopCounterMode(display=False) as counter:
        candidates[0].step()
    flops = counter.get_total_flops()
    today = statistics.median(candidates[0].times)
    rows = []
    for variant in candidates:
        median = statistics.median(variant.times)
        rows.append({
            "variant": variant.name, "ms": 1e3 * median, "speed_up": today / median,
            "gflop_per_s": flops / median / 1e9, "loss_for_shared_draw": checks[variant.name],
            "warmup_seconds": compile_seconds[variant.name],
        })
    return {"gflop_per_step": flops / 1e9, "rows": rows}


def compare_loading(args: argparse.Namespace) -> dict:
    generator = torch.Generator().manual_seed(0)
    images = {f"m{i}": torch.randint(0, 256, (4096, 3, 28, 28), dtype=torch.uint8, generator=generator)
              for i in range(args.modalities)}
    labels = torch.arange(4096) % 10

    class Items(torch.utils.data.Dataset):  # a data set handing out one item at a time, as PolyMNIST does
        def __len__(self):
            return len(labels)

        def __getitem__(self, i):
            return {name: x[i].float() / 255 for name, x in images.items()}, labels[i]

    def ms_per_batch(batches) -> float:
        iterator = iter(batches)
        next(iterator)
        started = time.perf_counter()
        for _ in range(args.loading_batches):
            next(iterator)
        return 1e3 * (time.perf_counter() - started) / args.loading_batches

    return {
        "DataLoader over items": ms_per_batch(DataLoader(Items(), batch_size=args.batch_size, shuffle=True)),
        "InMemoryBatches": ms_per_batch(InMemoryBatches(images, labels, args.batch_size)),
    }


def compare_langevin(args: argparse.Namespace, device: torch.device) -> dict:
    torch.manual_seed(0)
    energy = EnergyMLP(LATENT, 200, 4).to(device)
    base = Laplace(torch.zeros(LATENT, device=device), torch.ones(LATENT, device=device))
    base_score = score("laplace", base.loc, base.scale)  # as the EBM prior's chains run
    init = base.sample((256,))

    def floor() -> None:
        z = init
        for _ in range(args.langevin_steps):
            log_density_and_grad(lambda x: energy(x), z)

    langevin = LangevinConfig(steps=args.langevin_steps, step_size=0.4)
    sampler, bare = [], []
    for _ in range(args.steps):
        sampler.append(time_it(lambda: langevin_sample(energy, init, langevin, base_score=base_score), device))
        bare.append(time_it(floor, device))
    sampler_ms, floor_ms = 1e3 * statistics.median(sampler), 1e3 * statistics.median(bare)
    return {"steps": args.langevin_steps, "sampler_ms": sampler_ms, "floor_ms": floor_ms, "ratio": sampler_ms / floor_ms}


def step_shape(args: argparse.Namespace, device: torch.device) -> list[dict]:
    points = []
    for modalities in args.shape_modalities:
        for batch_size in args.shape_batch_sizes:
            model, guide = build(modalities, device)
            batch = random_batch(modalities, batch_size, device)
            elbo = Trace_ELBO(max_plate_nesting=2)(model, guide)
            variant = Variant("", model, guide, lambda e=elbo, b=batch, g=guide: e(b, num_draws=g.num_draws))
            variant.step()
            seconds = statistics.median(time_it(variant.step, device) for _ in range(args.shape_steps))
            points.append({"modalities": modalities, "batch_size": batch_size, "ms": 1e3 * seconds})
    return points


def plot_shape(points: list[dict], path: Path) -> None:
    figure, axis = plt.subplots(figsize=(5, 3.5))
    for modalities in sorted({p["modalities"] for p in points}):
        row = [p for p in points if p["modalities"] == modalities]
        axis.plot([p["batch_size"] for p in row], [p["ms"] for p in row], marker="o", label=f"{modalities} modalities")
    axis.set_xlabel("batch size")
    axis.set_ylabel("step time (ms)")
    axis.set_title("PolyMNIST MMVAE step (m² decoder passes)")
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def main(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    device = select_device(args.device)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    print(f"device {device}, {torch.get_num_threads()} thread(s), batch {args.batch_size}, {args.modalities} modalities")
    results: dict = {"settings": vars(args)}
    results["loading_ms"] = compare_loading(args)
    print("| data | ms per batch |\n|---|---|")
    for name, ms in results["loading_ms"].items():
        print(f"| {name} | {ms:.1f} |")
    results["step"] = compare_steps(args, device)
    print(f"\nstep: {results['step']['gflop_per_step']:.1f} GFLOP")
    print("| step | ms | speed-up | GFLOP/s |\n|---|---|---|---|")
    for row in results["step"]["rows"]:
        print(f"| {row['variant']} | {row['ms']:.0f} | {row['speed_up']:.2f}x | {row['gflop_per_s']:.1f} |")
    results["langevin"] = compare_langevin(args, device)
    lang = results["langevin"]
    print(f"\nLangevin, K={lang['steps']}: sampler {lang['sampler_ms']:.1f} ms, floor {lang['floor_ms']:.1f} ms, "
          f"ratio {lang['ratio']:.2f}")
    if args.shape_steps:
        results["shape"] = step_shape(args, device)
        plot_shape(results["shape"], out / "step_time.png")
    (out / f"{device.type}.json").write_text(json.dumps(results, indent=1))
    print(f"\nwritten to {out}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--modalities", type=int, default=5)
    parser.add_argument("--steps", type=int, default=5, help="timed steps per variant")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps per variant (compilation included)")
    parser.add_argument("--compile", action="store_true", help="include torch.compile (minutes of compilation on CPU)")
    parser.add_argument("--langevin-steps", type=int, default=60)
    parser.add_argument("--loading-batches", type=int, default=20)
    parser.add_argument("--shape-modalities", type=int, nargs="*", default=[2, 3, 5])
    parser.add_argument("--shape-batch-sizes", type=int, nargs="*", default=[32, 64, 128])
    parser.add_argument("--shape-steps", type=int, default=2, help="timed steps per shape point (0: skip)")
    parser.add_argument("--out", default="bench/results/step_speed")
    main(parser.parse_args())
