"""Making a training step cheaper without changing what it computes: memory layout, precision, compilation.

Each switch applies to the networks only (the encoders and decoders: :class:`~pyro_mmebm.networks.base.Encoder`
and :class:`~pyro_mmebm.networks.base.Decoder` inside a model and guide). The likelihoods, the
posterior, the prior, the EBM's energy network and its Langevin chains stay in full precision.
:func:`pyro_mmebm.fit` applies them from :class:`~pyro_mmebm.training.TrainConfig`
(``channels_last``, ``precision``, ``compile``); ``bench/step_speed.py`` measures each.

- :func:`use_channels_last`: convolution weights in NHWC order; oneDNN (CPU) and cuDNN (GPU) run
  convolutions faster in it. Same values, another summation order (float rounding).
- :func:`use_mixed_precision`: the networks' layers under ``torch.autocast`` to bfloat16, their
  outputs cast back, so every log-density is computed in float32. Pays on GPUs (tensor cores) and on
  CPUs with bfloat16 instructions (AVX-512 BF16, AMX); costs on others.
- :func:`compile_networks`: ``torch.compile`` of each network in place (``nn.Module.compile``), so
  parameter names, and so checkpoints, are unchanged. Compilation takes seconds to minutes at the
  first step and after every change of input shape.
"""

from __future__ import annotations

from typing import Iterator, Optional

import torch
from torch import nn

from pyro_mmebm.networks.base import Decoder, Encoder

PRECISIONS: dict[str, Optional[torch.dtype]] = {"fp32": None, "bf16": torch.bfloat16}
"""``{name: the networks' compute dtype}``; ``None``: the default dtype, no autocast."""


def networks(*modules: nn.Module) -> Iterator[Encoder | Decoder]:
    """Every encoder and decoder inside ``modules`` (each once)."""
    seen: set[int] = set()
    for module in modules:
        for sub in module.modules():
            if isinstance(sub, (Encoder, Decoder)) and id(sub) not in seen:
                seen.add(id(sub))
                yield sub


def use_channels_last(*modules: nn.Module) -> None:
    """Store the 4-D weights of the networks in ``modules`` in ``channels_last`` order."""
    for network in networks(*modules):
        network.to(memory_format=torch.channels_last)


def use_mixed_precision(*modules: nn.Module, precision: str = "bf16") -> None:
    """Run the layers of the networks in ``modules`` at ``precision`` (a key of :data:`PRECISIONS`)."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; choose one of {sorted(PRECISIONS)}")
    for network in networks(*modules):
        network.compute_dtype = PRECISIONS[precision]


def compile_networks(*modules: nn.Module) -> None:
    """``torch.compile`` every network in ``modules`` in place (their state dicts keep their keys)."""
    for network in networks(*modules):
        network.compile()


__all__ = ["PRECISIONS", "compile_networks", "networks", "use_channels_last", "use_mixed_precision"]
