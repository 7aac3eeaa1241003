"""Checking a multimodal batch: a dict ``{modality name: tensor}`` with a shared batch size."""

from __future__ import annotations

from typing import Any, Iterable, Mapping, Optional

import torch
from torch import Tensor


def _all_finite(x: Tensor) -> bool:
    # One reduction propagates any NaN or inf; only a non-finite sum (which finite values can also
    # give, by overflow) needs the element-wise check.
    return bool(torch.isfinite(x.sum())) or bool(torch.isfinite(x).all())


def split_batch(item: Any) -> tuple[dict[str, Tensor], Optional[Tensor]]:
    """``(modalities, labels)`` from a data loader item: a dict, or a ``(dict, labels)`` pair."""
    if isinstance(item, Mapping):
        return dict(item), None
    if isinstance(item, (tuple, list)) and len(item) == 2 and isinstance(item[0], Mapping):
        return dict(item[0]), item[1]
    raise TypeError(
        "a batch must be a dict {modality: tensor} or a pair (dict, labels), got " f"{type(item).__name__}"
    )


def prepare_batch(batch: Mapping[str, Any], device: torch.device) -> dict[str, Tensor]:
    """A data loader's batch moved to ``device``, checked once where it enters training or evaluation.

    Floating-point tensors are converted to torch's default dtype (float32 unless changed), so that
    float64 data works as it is; other dtypes (token ids, ``uint8``) are kept.

    :raises TypeError: naming the modality, for a value that is not a tensor (a list, a numpy array:
        convert it with ``torch.as_tensor``).
    :raises ValueError: for float images (items of three or more dimensions) that are non-negative
        with values above 1, i.e. pixel values in 0..255: the networks expect images in [0, 1].
    """
    moved = {}
    for name, x in batch.items():
        if not isinstance(x, Tensor):
            raise TypeError(
                f"modality {name!r} is a {type(x).__name__}, not a tensor: batches hold tensors "
                "(convert with torch.as_tensor)"
            )
        dtype = torch.get_default_dtype() if x.is_floating_point() else None
        moved[name] = x.to(device, dtype=dtype, non_blocking=True)
    images = [name for name, x in moved.items() if x.is_floating_point() and x.dim() >= 4 and x.numel()]
    if images:
        ranges = torch.stack([torch.stack(torch.aminmax(moved[name])) for name in images]).tolist()
        for name, (low, high) in zip(images, ranges):
            if low >= 0 and high > 1:
                raise ValueError(
                    f"modality {name!r} holds images with values up to {high:g}, pixel values in 0..255? "
                    "Images must be floats in [0, 1]: divide them by 255."
                )
    return moved


def validate_batch(
    batch: Mapping[str, Tensor],
    modalities: Iterable[str],
    *,
    event_dims: Optional[Mapping[str, int]] = None,
    require_all: bool = True,
) -> int:
    """Check a batch and return its batch size.

    Raises ``ValueError`` naming the problem: an unknown or (with ``require_all``) missing modality,
    an empty batch, tensors whose batch sizes differ, a tensor with too few dimensions, or NaN/inf
    values; ``TypeError`` for a value that is not a tensor.
    """
    if not isinstance(batch, Mapping):
        raise TypeError(f"batch must be a dict {{modality: tensor}}, got {type(batch).__name__}")
    expected = list(modalities)
    unknown = sorted(set(batch) - set(expected))
    if unknown:
        raise ValueError(f"unknown modality {unknown} in batch; the model has modalities {expected}")
    missing = [name for name in expected if name not in batch]
    if require_all and missing:
        raise ValueError(f"missing modality {missing} in batch; the model needs all of {expected}")
    if not batch:
        raise ValueError(f"batch has none of the modalities {expected}")
    sizes = {}
    for name, x in batch.items():
        if not isinstance(x, Tensor):
            raise TypeError(f"modality {name!r} must be a tensor, got {type(x).__name__}")
        needed = 1 + (event_dims[name] if event_dims and name in event_dims else 0)
        if x.dim() < needed:
            raise ValueError(
                f"modality {name!r} has shape {tuple(x.shape)}; expected (batch, ...) with {needed} dimensions"
            )
        if x.is_floating_point() and not _all_finite(x):
            raise ValueError(f"modality {name!r} contains NaN or infinite values")
        sizes[name] = x.shape[0]
    if len(set(sizes.values())) > 1:
        raise ValueError(f"modalities have different batch sizes: {sizes}")
    size = next(iter(sizes.values()))
    if size == 0:
        raise ValueError("batch is empty")
    return size
