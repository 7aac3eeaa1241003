"""The one place that imports torchvision.

Some torchvision wheels (for example a CUDA build installed beside a CPU build of torch) ship compiled
operators that fail to load. torchvision then dies at import time in ``_meta_registrations``, which
registers fake kernels for those operators (``nms``, ``roi_align``, ...). This library uses none of
them, only ``datasets``, ``transforms`` and ``utils``; so when, and only when, that import fails for
that reason, we import torchvision again with the registrations skipped. Where the operators load,
nothing is changed. ``import pyro_mmebm`` runs this first, so user code can ``import torchvision``
afterwards as usual.
"""

from __future__ import annotations

import sys
import types


def _import_torchvision() -> types.ModuleType:
    try:
        import torchvision
    except RuntimeError as error:
        if "torchvision::" not in str(error):
            raise
        for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
            del sys.modules[name]
        sys.modules["torchvision._meta_registrations"] = types.ModuleType("torchvision._meta_registrations")
        import torchvision
    return torchvision


torchvision = _import_torchvision()
datasets = torchvision.datasets
transforms = torchvision.transforms
utils = torchvision.utils

__all__ = ["datasets", "torchvision", "transforms", "utils"]
