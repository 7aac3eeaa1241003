"""PolyMNIST (five modalities): the EBM prior against the Laplace prior of MMVAE, coherence and probe.

    python examples/polymnist.py --prior ebm --epochs 10 --out runs/polymnist_ebm
    python examples/polymnist.py --prior laplace --out runs/polymnist_laplace
    python examples/polymnist.py --two-stage-from runs/polymnist_laplace --out runs/polymnist_two_stage
    python examples/polymnist.py --smoke --out /tmp/polymnist_smoke

The data set is generated from MNIST and the five backgrounds (``--source-root``) into
``--data-root`` on first use (or read from the official PNG release there). The model and the guide
are written out below; the data, training (:func:`pyro_mmebm.fit`, a checkpoint every epoch, or the
two-stage fit), evaluation and report are the shared runner's (:func:`pyro_mmebm.experiment.run`).
"""

import argparse

import pyro
from torch import nn

from models import MultimodalVAE, PrivateLatentVAE
from pyro_mmebm import EnergyBasedPrior, Likelihood
from pyro_mmebm.data import PolyMNIST
from pyro_mmebm.experiment import ExperimentConfig, add_arguments, build_prior, config_from_args, run
from pyro_mmebm.networks import PolyMNISTDecoder, PolyMNISTEncoder
from pyro_mmebm.run_folder import exit_cleanly_on_interrupt

DEFAULTS = {
    "data_root": "./data/PolyMNIST",
    "source_root": "../shared/data",
    "out": "runs/polymnist",
    "latent_dim": 32,
    "batch_size": 64,
    "epochs": 10,
    "ebm_warmup_epochs": 2,  # the EBM prior's recipe: two epochs with p0 before the tilt (see the README)
}


def model_and_guide(config: ExperimentConfig) -> tuple[MultimodalVAE, nn.Module]:
    """MoPoE's networks, the prior, the model and the guide of PolyMNIST, as ``config`` sets them."""
    d, w = config.latent_dim, config.guide.private_latent_dim  # z, and w_i with --private-latent-dim
    pyro.set_rng_seed(config.train.seed)
    encoders, decoders = {}, {}
    for name in PolyMNIST.modalities:  # m0..m4: the same digit on five backgrounds, a conv net each
        encoders[name] = PolyMNISTEncoder(latent_dim=d + w, scale_activation=config.guide.encoder_scale)
        decoders[name] = PolyMNISTDecoder(latent_dim=d + w)
    likelihoods = {name: Likelihood("laplace", 0.75) for name in PolyMNIST.modalities}  # MMVAE's, for images
    # The prior of z, the one line to edit to try another: the EBM prior, or --prior laplace (MMVAE's).
    prior = EnergyBasedPrior(d, config.ebm) if config.prior == "ebm" else build_prior(config)
    if w:  # MMVAE+: a private latent w_i per modality beside z
        model = PrivateLatentVAE(decoders, likelihoods, prior, w)
    else:  # p(X, z) = p(z) Π_i p(x_i | z)
        model = MultimodalVAE(decoders, likelihoods, prior)
    guide = config.guide.build(encoders, d)  # --guide moe (MMVAE), poe (MVAE), mopoe (MoPoE)
    return model, guide


def main(args: argparse.Namespace) -> dict:
    # The data, pyro_mmebm.fit with this model and guide (or the two-stage fit), evaluation, the report.
    return run(config_from_args("polymnist", args), model_and_guide=model_and_guide)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(parser, dataset_defaults=DEFAULTS)
    args = parser.parse_args()
    with exit_cleanly_on_interrupt(args.out):  # Ctrl-C: one line on what is saved, no traceback
        main(args)
