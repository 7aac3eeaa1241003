"""How much the digit alone is worth to a PolyMNIST decoder: the reconstruction gain of knowing the class.

PolyMNIST draws a digit by inverting the colours of a random background crop where the MNIST digit
is. A decoder that knows the digit but not the background therefore gains little: inverting a
colour it does not know changes its best guess little. Under MMVAE's ``Laplace(·, b)`` likelihood
the best background-blind prediction of each pixel is a median, so this script measures, per
modality, on every ``--stride``-th training tuple,

    E|x − median(x)|   against   E|x − median(x | digit)|,

summed over the 3×28×28 pixels, and the gain between them in nats at scale ``b`` (gain / b). Encoding
the digit costs at least ``log 10 ≈ 2.3`` nats of KL; a modality whose gain is not far above that gives
the latent little reason to carry the digit until its decoder knows the background.

    OMP_NUM_THREADS=1 python bench/digit_information.py
"""

from __future__ import annotations

import argparse
import math

import torch

from pyro_mmebm.data import PolyMNIST


def l1_to_median(x: torch.Tensor) -> torch.Tensor:
    """``Σ_pixels |x − median(x)|`` per image, the median taken per pixel over the images: ``(N,)``."""
    return (x - x.median(0).values).abs().flatten(1).sum(-1)


def digit_gain(x: torch.Tensor, labels: torch.Tensor) -> tuple[float, float]:
    """Mean L1 to the overall median and to the median of the image's digit class."""
    given_digit = torch.empty(len(x))
    for digit in labels.unique():
        given_digit[labels == digit] = l1_to_median(x[labels == digit])
    return float(l1_to_median(x).mean()), float(given_digit.mean())


def main(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    data = PolyMNIST(args.data_root, train=True, generate_from=(args.source_root, f"{args.source_root}/PolyMNIST/backgrounds"))
    images, labels = data.tensors()
    index = torch.arange(0, len(labels), args.stride)
    print(f"{len(index)} training tuples (every {args.stride}th), Laplace scale {args.scale}, log 10 = {math.log(10):.1f} nats\n")
    print("| modality | E\\|x − median\\| | given the digit | gain | gain in nats |")
    print("|---|---|---|---|---|")
    for name, x in images.items():
        x = x[index].float() / 255  # PolyMNIST.tensors() gives uint8 images
        blind, given = digit_gain(x, labels[index])
        print(f"| {name} | {blind:.1f} | {given:.1f} | {blind - given:.1f} | {(blind - given) / args.scale:.1f} |")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-root", default="../data/polymnist")
    parser.add_argument("--source-root", default="../shared/data")
    parser.add_argument("--stride", type=int, default=6, help="use every stride-th training tuple")
    parser.add_argument("--scale", type=float, default=0.75, help="scale b of the Laplace likelihood")
    parser.add_argument("--threads", type=int, default=1)
    main(parser.parse_args())
