"""MNIST-SVHN (two modalities, MMVAE's setting): the EBM prior against MMVAE's Laplace prior.

    python examples/mnist_svhn.py --prior ebm --epochs 30 --out runs/mnist_svhn_ebm
    python examples/mnist_svhn.py --prior laplace --out runs/mnist_svhn_laplace
    python examples/mnist_svhn.py --smoke --out /tmp/mnist_svhn_smoke

``--data-root`` holds ``MNIST/raw/*-ubyte`` (torchvision's layout) and ``SVHN/{train,test}_32x32.mat``.
The model and the guide are written out below; the data, training (:func:`pyro_mmebm.fit`, a
checkpoint every epoch), evaluation and report are the shared runner's (:func:`pyro_mmebm.experiment.run`).
"""

import argparse

import pyro
from torch import nn

from models import MultimodalVAE, PrivateLatentVAE
from pyro_mmebm import EnergyBasedPrior, Likelihood
from pyro_mmebm.experiment import ExperimentConfig, add_arguments, build_prior, config_from_args, run
from pyro_mmebm.networks import MNISTDecoder, MNISTEncoder, SVHNDecoder, SVHNEncoder
from pyro_mmebm.run_folder import exit_cleanly_on_interrupt

DEFAULTS = {
    "data_root": "../shared/data",
    "out": "runs/mnist_svhn",
    "latent_dim": 20,
    "batch_size": 128,
    "epochs": 30,
}


def model_and_guide(config: ExperimentConfig) -> tuple[MultimodalVAE, nn.Module]:
    """MMVAE's networks, the prior, the model and the guide of MNIST-SVHN, as ``config`` sets them."""
    d, w = config.latent_dim, config.guide.private_latent_dim  # z, and w_i with --private-latent-dim
    scale = config.guide.encoder_scale  # the encoders' scale map that the guide's experts need
    pyro.set_rng_seed(config.train.seed)
    encoders, decoders = {}, {}
    encoders["mnist"], decoders["mnist"] = MNISTEncoder(d + w, scale_activation=scale), MNISTDecoder(d + w)  # MLPs
    encoders["svhn"], decoders["svhn"] = SVHNEncoder(d + w, scale_activation=scale), SVHNDecoder(d + w)  # CNNs
    likelihoods = {"mnist": Likelihood("laplace", 0.75), "svhn": Likelihood("laplace", 0.75)}
    scales = {"mnist": 3 * 32 * 32 / (1 * 28 * 28)}  # MMVAE weighs MNIST by the ratio of the data sizes
    # The prior of z, the one line to edit to try another: the EBM prior, or --prior laplace (MMVAE's).
    prior = EnergyBasedPrior(d, config.ebm) if config.prior == "ebm" else build_prior(config)
    if w:  # MMVAE+: a private latent w_i per modality beside z
        model = PrivateLatentVAE(decoders, likelihoods, prior, w, scales)
    else:  # MMVAE: p(X, z) = p(z) p(x_mnist | z) p(x_svhn | z)
        model = MultimodalVAE(decoders, likelihoods, prior, scales)
    guide = config.guide.build(encoders, d)  # --guide moe (MMVAE), poe (MVAE), mopoe (MoPoE)
    return model, guide


def main(args: argparse.Namespace) -> dict:
    # The data, pyro_mmebm.fit with this model and guide, evaluation and the report (results.json, PNGs).
    return run(config_from_args("mnist_svhn", args), model_and_guide=model_and_guide)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(parser, dataset_defaults=DEFAULTS)
    args = parser.parse_args()
    with exit_cleanly_on_interrupt(args.out):  # Ctrl-C: one line on what is saved, no traceback
        main(args)
