"""CUB image-caption: two-stage training as in the paper, a Laplace-prior model first, then an EBM
prior fitted to its aggregate posterior.

    python examples/cub.py --prior laplace --epochs 50 --out runs/cub_laplace
    python examples/cub.py --two-stage-from runs/cub_laplace --out runs/cub_two_stage
    python examples/cub.py --smoke --out /tmp/cub_smoke

``--data-root`` holds MMVAE's CUB release (``cub/text_*classes.txt`` and ``cub/{train,test}/<class>/*.jpg``).
There are no digit classifiers for CUB: the results are the test objective and the sample grids
(captions written beside them as text).
"""

import argparse

from pyro_mmebm.experiment import add_arguments, config_from_args, run
from pyro_mmebm.run_folder import exit_cleanly_on_interrupt

DEFAULTS = {
    "data_root": "../shared/data",
    "out": "runs/cub",
    "latent_dim": 64,
    "batch_size": 128,
    "epochs": 50,
}


def main(args: argparse.Namespace) -> dict:
    return run(config_from_args("cub", args))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(parser, dataset_defaults=DEFAULTS)
    args = parser.parse_args()
    with exit_cleanly_on_interrupt(args.out):  # Ctrl-C: one line on what is saved, no traceback
        main(args)
