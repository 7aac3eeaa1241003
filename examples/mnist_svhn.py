"""MNIST-SVHN (two modalities, MMVAE's setting): the EBM prior against MMVAE's Laplace prior.

    python examples/mnist_svhn.py --prior ebm --epochs 30 --out runs/mnist_svhn_ebm
    python examples/mnist_svhn.py --prior laplace --out runs/mnist_svhn_laplace
    python examples/mnist_svhn.py --smoke --out /tmp/mnist_svhn_smoke

``--data-root`` holds ``MNIST/raw/*-ubyte`` (torchvision's layout) and ``SVHN/{train,test}_32x32.mat``.
"""

import argparse

from pyro_mmebm.experiment import add_arguments, config_from_args, run
from pyro_mmebm.run_folder import exit_cleanly_on_interrupt

DEFAULTS = {
    "data_root": "../shared/data",
    "out": "runs/mnist_svhn",
    "latent_dim": 20,
    "batch_size": 128,
    "epochs": 30,
}


def main(args: argparse.Namespace) -> dict:
    return run(config_from_args("mnist_svhn", args))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(parser, dataset_defaults=DEFAULTS)
    args = parser.parse_args()
    with exit_cleanly_on_interrupt(args.out):  # Ctrl-C: one line on what is saved, no traceback
        main(args)
