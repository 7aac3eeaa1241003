"""Checking a multimodal batch: a dict ``{modality name: tensor}`` with a shared batch size.

A batch is checked once, where it enters training or evaluation (:func:`prepare_batch`); models and
guides check only which modalities it holds (:func:`check_modalities`).
"""

from __future__ import annotations

import math
from typing import Any, Iterable, Mapping, Optional

import torch
from torch import Tensor


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
    float64 data works as it is; other dtypes (token ids, ``uint8``) are kept. The models and guides
    check only which modalities a batch holds (:func:`check_modalities`), not its values.

    :raises TypeError: for a batch that is not a dict, or naming the modality, for a value that is
        not a tensor (a list, a numpy array: convert it with ``torch.as_tensor``).
    :raises ValueError: naming the problem, for an empty batch, tensors without a batch dimension or
        whose batch sizes differ, NaN or infinite values, and float images (items of three or more
        dimensions) that are non-negative with values above 1, i.e. pixel values in 0..255: the
        networks expect images in [0, 1].
    """
    if not isinstance(batch, Mapping):
        raise TypeError(f"batch must be a dict {{modality: tensor}}, got {type(batch).__name__}")
    if not batch:
        raise ValueError("batch holds no modality")
    moved = {}
    for name, x in batch.items():
        if not isinstance(x, Tensor):
            raise TypeError(
                f"modality {name!r} is a {type(x).__name__}, not a tensor: batches hold tensors "
                "(convert with torch.as_tensor)"
            )
        if x.dim() < 1:
            raise ValueError(f"modality {name!r} is a scalar; expected a tensor of shape (batch, ...)")
        dtype = torch.get_default_dtype() if x.is_floating_point() else None
        moved[name] = x.to(device, dtype=dtype, non_blocking=True)
    sizes = {name: x.shape[0] for name, x in moved.items()}
    if len(set(sizes.values())) > 1:
        raise ValueError(f"modalities have different batch sizes: {sizes}")
    if next(iter(sizes.values())) == 0:
        raise ValueError("batch is empty")
    _check_values(moved)
    return moved


def _check_values(batch: Mapping[str, Tensor]) -> None:
    """Refuse NaN or infinite values and images in 0..255, with one device synchronisation."""
    floats = [name for name, x in batch.items() if x.is_floating_point() and x.numel()]
    if not floats:
        return
    # The sum propagates any NaN or inf; only a non-finite sum (which finite values can also give, by
    # overflow) needs the element-wise check.
    stats = torch.stack([torch.stack([batch[name].sum(), *torch.aminmax(batch[name])]) for name in floats])
    for name, (total, low, high) in zip(floats, stats.tolist()):
        x = batch[name]
        if not math.isfinite(total) and not bool(torch.isfinite(x).all()):
            raise ValueError(f"modality {name!r} contains NaN or infinite values")
        if x.dim() >= 4 and low >= 0 and high > 1:
            raise ValueError(
                f"modality {name!r} holds images with values up to {high:g}, pixel values in 0..255? "
                "Images must be floats in [0, 1]: divide them by 255."
            )


def present_modalities(batch: Mapping[str, Tensor], modalities: Iterable[str]) -> list[str]:
    """The modalities of ``modalities`` that ``batch`` holds, in that order.

    :raises ValueError: when ``batch`` holds none of them.
    """
    expected = list(modalities)
    present = [name for name in expected if name in batch]
    if not present:
        raise ValueError(f"batch has none of the modalities {expected}")
    return present


def check_modalities(batch: Mapping[str, Tensor], modalities: Iterable[str], *, require_all: bool = True) -> int:
    """Check which modalities ``batch`` holds and return its batch size.

    The cheap check a model or guide makes on every call, where it knows its modalities; the tensors
    themselves were checked once where the batch entered (:func:`prepare_batch`).

    :raises ValueError: naming the modality, for one the model does not have, one missing (with
        ``require_all``), or a batch with none of them.
    """
    expected = list(modalities)
    unknown = sorted(set(batch) - set(expected))
    if unknown:
        raise ValueError(f"unknown modality {unknown} in batch; the model has modalities {expected}")
    missing = [name for name in expected if name not in batch]
    if require_all and missing:
        raise ValueError(f"missing modality {missing} in batch; the model needs all of {expected}")
    return batch[present_modalities(batch, expected)[0]].shape[0]
