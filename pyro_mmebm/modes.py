"""Running modules in eval mode for a while, and putting back what they were."""

from __future__ import annotations

import contextlib
from typing import Iterator

from torch import nn


@contextlib.contextmanager
def eval_mode(*modules: nn.Module) -> Iterator[None]:
    """Put ``modules`` (dropout, batch norm, spectral normalisation's power iteration) in eval mode
    inside the block, and restore every submodule's own ``training`` flag after it, even on error."""
    flags = [(sub, sub.training) for module in modules for sub in module.modules()]
    for module in modules:
        module.eval()
    try:
        yield
    finally:
        for sub, training in flags:
            sub.training = training


__all__ = ["eval_mode"]
