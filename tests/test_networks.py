"""Shapes, positivity, gradients, parameter counts and input checks of the baseline networks."""

from __future__ import annotations

import pytest
import torch

from pyro_mmebm.networks import (
    ARCHITECTURES,
    CAPTION_LENGTH,
    SCALE_ACTIVATIONS,
    CUBCaptionDecoder,
    CUBCaptionEncoder,
    MLPDecoder,
    MLPEncoder,
    MNISTDecoder,
    MNISTEncoder,
    PolyMNISTDecoder,
    PolyMNISTEncoder,
    SVHNDecoder,
    SVHNEncoder,
)

VOCAB_SIZE = 50
LATENT_DIM = 8


def make_pair(kind: str) -> tuple[torch.nn.Module, torch.nn.Module]:
    encoder_cls, decoder_cls = ARCHITECTURES[kind]
    kwargs = {"vocab_size": VOCAB_SIZE} if kind == "cub_caption" else {}
    return encoder_cls(latent_dim=LATENT_DIM, **kwargs), decoder_cls(latent_dim=LATENT_DIM, **kwargs)


def make_batch(encoder: torch.nn.Module, batch_size: int) -> torch.Tensor:
    if encoder.token_input:
        return torch.randint(0, VOCAB_SIZE, (batch_size, *encoder.event_shape))
    return torch.rand(batch_size, *encoder.event_shape)


def n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_registry_keys():
    assert set(ARCHITECTURES) == {"mnist", "svhn", "polymnist", "cub_image", "cub_caption"}


@pytest.mark.parametrize("batch_size", [1, 3])
@pytest.mark.parametrize("kind", sorted(ARCHITECTURES))
def test_shapes_and_positive_scale(kind, batch_size):
    torch.manual_seed(0)
    encoder, decoder = make_pair(kind)
    loc, scale = encoder(make_batch(encoder, batch_size))
    assert loc.shape == scale.shape == (batch_size, LATENT_DIM)
    assert (scale > 0).all()
    out = decoder(torch.randn(batch_size, LATENT_DIM))
    if kind == "cub_caption":
        assert out.shape == (batch_size, CAPTION_LENGTH, VOCAB_SIZE)
    else:
        assert out.shape == (batch_size, *encoder.event_shape) == (batch_size, *decoder.event_shape)
        if kind != "polymnist":  # MoPoE's PolyMNIST decoder leaves its output unbounded
            assert (out >= 0).all() and (out <= 1).all()


def test_polymnist_decoder_output_and_encoder_hidden_layer_options():
    torch.manual_seed(0)
    z = 10 * torch.randn(16, LATENT_DIM)
    bounded = PolyMNISTDecoder(LATENT_DIM, output="sigmoid")(z)
    assert (bounded >= 0).all() and (bounded <= 1).all()
    unbounded = PolyMNISTDecoder(LATENT_DIM)(z)
    assert (unbounded < 0).any() or (unbounded > 1).any()
    assert len(PolyMNISTEncoder(LATENT_DIM).body) == 7  # three conv+ReLU pairs and the flatten
    assert len(PolyMNISTEncoder(LATENT_DIM, hidden_dim=512).body) == 9  # plus Linear 512 → ReLU
    with pytest.raises(ValueError, match="decoder output"):
        PolyMNISTDecoder(LATENT_DIM, output="tanh")
    with pytest.raises(ValueError, match="hidden_dim"):
        PolyMNISTEncoder(LATENT_DIM, hidden_dim=-1)


@pytest.mark.parametrize("kind", sorted(ARCHITECTURES))
def test_gradient_reaches_every_parameter(kind):
    torch.manual_seed(0)
    encoder, decoder = make_pair(kind)
    loc, scale = encoder(make_batch(encoder, 4))
    out = decoder(loc + scale * torch.randn_like(loc))
    out.square().mean().backward()
    for module in (encoder, decoder):
        for name, p in module.named_parameters():
            assert p.grad is not None and torch.isfinite(p.grad).all(), name
            assert p.grad.abs().sum() > 0, name


@pytest.mark.parametrize("activation", sorted(SCALE_ACTIVATIONS))
def test_scale_activations_stay_positive(activation):
    encoder = MLPEncoder((2,), LATENT_DIM, hidden=(), scale_activation=activation)
    with torch.no_grad():
        encoder.head.bias.fill_(-1e4)
    _, scale = encoder(torch.zeros(5, 2))
    assert (scale > 0).all()


def test_softmax_scales_sum_to_latent_dim():
    _, scale = MNISTEncoder(latent_dim=LATENT_DIM)(torch.rand(4, 1, 28, 28))
    assert torch.allclose(scale.sum(-1), torch.full((4,), float(LATENT_DIM)), atol=1e-4)


def test_parameter_counts_match_published_architectures():
    # Hand counts: MNIST 784-400-(20+20) and 20-400-784; SVHN convs 3-32-64-128 (4x4) and a 4x4 head.
    assert n_params(MNISTEncoder()) == (784 * 400 + 400) + (400 * 40 + 40)
    assert n_params(MNISTDecoder()) == (20 * 400 + 400) + (400 * 784 + 784)
    svhn_body = (3 * 32 + 32 * 64 + 64 * 128) * 16 + (32 + 64 + 128)
    assert n_params(SVHNEncoder()) == svhn_body + 128 * 40 * 16 + 40
    assert n_params(SVHNDecoder()) == (20 * 128 + 128 * 64 + 64 * 32 + 32 * 3) * 16 + (128 + 64 + 32 + 3)
    for kind in ARCHITECTURES:
        encoder, decoder = make_pair(kind)
        assert 1e4 < n_params(encoder) < 1e7 and 1e4 < n_params(decoder) < 1e7, kind


def test_caption_decoder_gives_logits_per_position():
    decoder = CUBCaptionDecoder(VOCAB_SIZE, latent_dim=LATENT_DIM).eval()
    logits = decoder(torch.randn(2, LATENT_DIM))
    assert torch.distributions.Categorical(logits=logits).sample().shape == (2, CAPTION_LENGTH)


def test_mlp_pair_on_any_shape():
    encoder = MLPEncoder((2, 5), LATENT_DIM, hidden=(16, 16))
    decoder = MLPDecoder(LATENT_DIM, (2, 5), hidden=(16,), output="identity")
    loc, scale = encoder(torch.randn(3, 2, 5))
    assert loc.shape == scale.shape == (3, LATENT_DIM)
    with torch.no_grad():
        decoder.net[-2].bias.fill_(-10.0)
    out = decoder(loc)
    assert out.shape == (3, 2, 5) and (out < 0).any()


def test_encoder_rejects_wrong_image_shape():
    expected = r"MNISTEncoder expects a batch of shape \(B, 1, 28, 28\), got \(4, 3, 32, 32\)"
    with pytest.raises(ValueError, match=expected):
        MNISTEncoder()(torch.rand(4, 3, 32, 32))
    with pytest.raises(ValueError, match=r"SVHNEncoder expects a batch of shape \(B, 3, 32, 32\)"):
        SVHNEncoder()(torch.rand(3, 32, 32))


def test_encoder_rejects_wrong_dtype():
    with pytest.raises(ValueError, match="floating-point"):
        MNISTEncoder()(torch.zeros(2, 1, 28, 28, dtype=torch.uint8))
    with pytest.raises(ValueError, match="integer token ids"):
        CUBCaptionEncoder(VOCAB_SIZE)(torch.zeros(2, CAPTION_LENGTH))
    with pytest.raises(ValueError, match=rf"token ids in \[0, {VOCAB_SIZE}\)"):
        CUBCaptionEncoder(VOCAB_SIZE)(torch.full((2, CAPTION_LENGTH), VOCAB_SIZE))


def test_decoder_rejects_wrong_latent_shape():
    with pytest.raises(ValueError, match=r"SVHNDecoder expects latents of shape \(N, 20\), got \(2, 5, 20\)"):
        SVHNDecoder()(torch.randn(2, 5, 20))
    with pytest.raises(ValueError, match=r"expects latents of shape \(N, 20\), got \(2, 8\)"):
        MNISTDecoder()(torch.randn(2, 8))


def test_bad_settings_are_named():
    with pytest.raises(ValueError, match="unknown scale_activation 'relu'"):
        MNISTEncoder(scale_activation="relu")
    with pytest.raises(ValueError, match="unknown output 'tanh'"):
        MLPDecoder(2, (3,), output="tanh")
    with pytest.raises(ValueError, match="latent_dim must be positive"):
        MLPEncoder((3,), 0)
