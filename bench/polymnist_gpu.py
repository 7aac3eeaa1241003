"""The paper's full PolyMNIST protocol on one GPU: MMVAE+ (private latents), 250 epochs, batch 128.

    python bench/polymnist_gpu.py --out runs/polymnist_gpu              # on a machine with a GPU
    python bench/polymnist_gpu.py --out runs/polymnist_gpu --resume     # continue after a stop
    python bench/polymnist_gpu.py --out /tmp/gpu_try --device cpu --epochs 1 --epoch-size 256 \
        --two-stage-epochs 1 --eval-size 200 --joint-samples 200 --parallel 1       # a dry run on CPU

Five runs share the one device, side by side (``--parallel``): MMVAE with the Laplace prior, the
jointly trained EBM prior and the two-stage EBM prior fitted to the Laplace run's posterior, and
their MMVAE+ counterparts with a private latent per modality (Laplace and EBM). Each run keeps the
whole data set on the device, runs its networks in bfloat16 autocast (the likelihoods, posteriors,
energy and Langevin chains in float32) with weights in ``channels_last``, writes a checkpoint every
epoch and evaluates coherence at the end. This is :mod:`polymnist_protocol` with these settings; its
report (``<out>/protocol.md``) gives per run the coherences, the median epoch time and the peak GPU
memory, and this script prints the wall time of the whole protocol.

The goal (issue 11): all 250 epochs within 15 minutes on one H200.
"""

from __future__ import annotations

import argparse
import time

import polymnist_protocol

GPU_SPEED_OPTIONS = "--precision bf16 --channels-last"
"""What every run adds on the GPU; ``--compile`` too with ``--compile`` here."""


def main(args: argparse.Namespace) -> None:
    speed = GPU_SPEED_OPTIONS + (" --compile" if args.compile else "")
    protocol = argparse.Namespace(
        out=args.out, data_root=args.data_root, source_root=args.source_root, cache_dir=args.cache_dir, runs=None,
        private=True, latent_dim=32, batch_size=128, epochs=args.epochs, epoch_size=args.epoch_size,
        ebm_options=args.ebm_options, run_options=speed,
        two_stage_epochs=args.two_stage_epochs, eval_size=args.eval_size, joint_samples=args.joint_samples,
        seed=args.seed, device=args.device, parallel=args.parallel, resume=args.resume,
    )
    started = time.perf_counter()
    polymnist_protocol.main(protocol)
    print(f"protocol wall time: {(time.perf_counter() - started) / 60:.1f} min ({args.epochs} epochs per run)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/polymnist_gpu")
    parser.add_argument("--data-root", default="./data/PolyMNIST")
    parser.add_argument("--source-root", default="../shared/data")
    parser.add_argument("--cache-dir", default="./data/cache")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--epochs", type=int, default=250)
    parser.add_argument("--epoch-size", type=int, help="training tuples per epoch (default: all 60,000)")
    parser.add_argument("--two-stage-epochs", type=int, default=25)
    parser.add_argument("--ebm-options", default="", help="extra options of the EBM runs")
    parser.add_argument("--eval-size", type=int, default=10000)
    parser.add_argument("--joint-samples", type=int, default=10000)
    parser.add_argument("--parallel", type=int, default=5, help="runs side by side on the device")
    parser.add_argument("--compile", action="store_true", help="torch.compile the networks as well")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--resume", action="store_true")
    main(parser.parse_args())
