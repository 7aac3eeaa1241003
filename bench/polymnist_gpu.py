"""The paper's full PolyMNIST protocol on one GPU: MMVAE+ (private latents), 250 epochs, batch 128.

    python bench/polymnist_gpu.py --out runs/polymnist_gpu              # on a machine with a GPU
    python bench/polymnist_gpu.py --out runs/polymnist_gpu --resume     # continue after a stop
    python bench/polymnist_gpu.py --out /tmp/gpu_try --device cpu --epochs 1 --epoch-size 256 \
        --two-stage-epochs 1 --eval-size 200 --joint-samples 200 --parallel 1       # a dry run on CPU

Six runs share the one device, side by side (``--parallel``): MMVAE with the Laplace prior, the
jointly trained EBM prior and the two-stage EBM prior fitted to the Laplace run's posterior, and
their MMVAE+ counterparts with a private latent per modality. Each run keeps the
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
"""The default ``--run-options`` here; ``--compile`` adds ``--compile``. Every option of
:mod:`polymnist_protocol` is taken, with the defaults of this protocol."""


def main(args: argparse.Namespace) -> None:
    if args.compile:
        args.run_options += " --compile"
    started = time.perf_counter()
    polymnist_protocol.main(args)
    print(f"protocol wall time: {(time.perf_counter() - started) / 60:.1f} min ({args.epochs} epochs per run)")


if __name__ == "__main__":
    parser = polymnist_protocol.build_parser(__doc__.splitlines()[0])
    parser.set_defaults(
        out="runs/polymnist_gpu", device="cuda", runs=list(polymnist_protocol.RUNS), batch_size=128, epochs=250,
        two_stage_epochs=25, two_stage_batch_size=128,
        eval_size=10000, joint_samples=10000, parallel=5, run_options=GPU_SPEED_OPTIONS,
    )
    parser.add_argument("--compile", action="store_true", help="torch.compile the networks as well")
    main(parser.parse_args())
