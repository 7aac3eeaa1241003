"""Synthetic two-modality data for the diagnostics notebooks: 8×8 bar images and their captions.

Each example belongs to one of 8 classes (2 orientations × 4 positions). Its image is a bar two
pixels wide, horizontal or vertical, at that position, with 5% of the pixels flipped; its caption is
two words naming it ("vertical upper"). A small multimodal VAE learns it in seconds on a CPU, which is
all the notebooks need to show what the diagnostics look like.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn

from guides import MixtureOfExpertsGuide
from models import MultimodalVAE
from pyro_mmebm import EBMPriorConfig, EnergyBasedPrior, LangevinConfig, LaplacePrior, Likelihood
from pyro_mmebm.networks import Encoder, MLPDecoder, MLPEncoder

VOCABULARY = ("horizontal", "vertical", "top", "upper", "lower", "bottom")
IMAGE_SHAPE = (1, 8, 8)
CAPTION_LENGTH = 2


def make_bars(
    num_examples: int, *, flip: float = 0.05, generator: Optional[torch.Generator] = None
) -> dict[str, Tensor]:
    """``{"image": (N, 1, 8, 8) binary floats, "caption": (N, 2) token ids}``."""
    label = torch.randint(8, (num_examples,), generator=generator)
    vertical, position = label // 4, label % 4
    on_bar = (torch.arange(8) // 2 == position[:, None]).float()  # (N, 8): the bar's rows (or columns)
    bars = torch.where(vertical[:, None, None].bool(), on_bar[:, None, :], on_bar[:, :, None])
    noise = torch.rand(bars.shape, generator=generator) < flip
    image = (bars != noise.float()).float().unsqueeze(1)
    return {"image": image, "caption": torch.stack([vertical, 2 + position], -1)}


def decode_caption(tokens: Tensor) -> str:
    return " ".join(VOCABULARY[int(t)] for t in tokens)


def batches(data: dict[str, Tensor], batch_size: int) -> list[dict[str, Tensor]]:
    size = next(iter(data.values())).shape[0]
    return [{name: x[i : i + batch_size] for name, x in data.items()} for i in range(0, size, batch_size)]


class CaptionEncoder(Encoder):
    """Token ids ``(B, 2)`` → embeddings → an MLP → ``(loc, scale)``."""

    token_input = True

    def __init__(self, latent_dim: int, hidden: int = 64, embedding_dim: int = 8) -> None:
        super().__init__((CAPTION_LENGTH,), latent_dim, "softplus")
        self.embed = nn.Embedding(len(VOCABULARY), embedding_dim)
        self.net = nn.Sequential(
            nn.Linear(CAPTION_LENGTH * embedding_dim, hidden), nn.ReLU(), nn.Linear(hidden, 2 * latent_dim)
        )

    def loc_and_raw_scale(self, x: Tensor) -> tuple[Tensor, Tensor]:
        loc, raw_scale = self.net(self.embed(x).flatten(1)).chunk(2, dim=-1)
        return loc, raw_scale


SHORT_RUN_ML = EBMPriorConfig(
    hidden=64, depth=3, estimator="ml", encoder_gradient=0.0, generation_steps=None, generation_step_size=None,
    langevin=LangevinConfig(steps=20, step_size=0.3),
)
"""The EBM prior of the notebooks: trained by maximum likelihood with short-run Langevin negatives,
which also generate, so that the chains the prior notebook diagnoses are the ones training drew."""


def build_model(prior: str = "ebm", latent_dim: int = 4) -> tuple[MultimodalVAE, MixtureOfExpertsGuide]:
    """The model (``prior``: ``"ebm"`` or ``"laplace"``) and its mixture-of-experts guide."""
    priors = {
        "ebm": lambda: EnergyBasedPrior(latent_dim, SHORT_RUN_ML),
        "laplace": lambda: LaplacePrior(latent_dim),
    }
    decoders = {
        "image": MLPDecoder(latent_dim, IMAGE_SHAPE, hidden=(64,)),
        "caption": MLPDecoder(latent_dim, (CAPTION_LENGTH, len(VOCABULARY)), hidden=(64,), output="identity"),
    }
    likelihoods = {"image": Likelihood("bernoulli"), "caption": Likelihood("categorical")}
    encoders = {"image": MLPEncoder(IMAGE_SHAPE, latent_dim, hidden=(64,)), "caption": CaptionEncoder(latent_dim)}
    return MultimodalVAE(decoders, likelihoods, priors[prior]()), MixtureOfExpertsGuide(encoders, latent_dim)
