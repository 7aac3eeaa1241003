"""PolyMNIST (five modalities): the EBM prior against the Laplace prior of MMVAE, coherence and probe.

    python examples/polymnist.py --prior ebm --epochs 10 --out runs/polymnist_ebm
    python examples/polymnist.py --prior laplace --out runs/polymnist_laplace
    python examples/polymnist.py --two-stage-from runs/polymnist_laplace --out runs/polymnist_two_stage
    python examples/polymnist.py --smoke --out /tmp/polymnist_smoke

The data set is generated from MNIST and the five backgrounds (``--source-root``) into
``--data-root`` on first use (or read from the official PNG release there).
"""

import argparse

from pyro_mmebm.experiment import add_arguments, config_from_args, run
from pyro_mmebm.run_folder import exit_cleanly_on_interrupt

DEFAULTS = {
    "data_root": "./data/PolyMNIST",
    "source_root": "../shared/data",
    "out": "runs/polymnist",
    "latent_dim": 32,
    "batch_size": 64,
    "epochs": 10,
}


def main(args: argparse.Namespace) -> dict:
    return run(config_from_args("polymnist", args))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(parser, dataset_defaults=DEFAULTS)
    args = parser.parse_args()
    with exit_cleanly_on_interrupt(args.out):  # Ctrl-C: one line on what is saved, no traceback
        main(args)
