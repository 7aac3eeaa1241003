"""The examples' command line, derived from :class:`~pyro_mmebm.experiment.ExperimentConfig`'s fields.

Every setting of a run, its components' included, is an option named after its flat name
(``--ebm-hidden``, ``--langevin-step-size``, ``--ebm-warmup-epochs``, ``-K``, ...), with the field's
type, choices and check (an impossible value is refused when parsed) and its default shown in
``--help`` (see :mod:`pyro_mmebm.settings`).
"""

from __future__ import annotations

import argparse
from typing import Any, Mapping

from pyro_mmebm import settings
from pyro_mmebm.experiment.config import ExperimentConfig


def add_arguments(parser: argparse.ArgumentParser, *, dataset_defaults: Mapping[str, Any]) -> None:
    """Add an option for every setting of :class:`ExperimentConfig` to ``parser``, with an example's
    defaults by flat name (``{"data_root": ..., "latent_dim": 32}``); ``--resume`` and ``--overwrite``
    exclude each other."""
    settings.add_arguments(parser, ExperimentConfig, dataset_defaults, exclusive=[("resume", "overwrite")])


def config_from_args(dataset: str, args: argparse.Namespace) -> ExperimentConfig:
    """The :class:`ExperimentConfig` of ``dataset`` from the options :func:`add_arguments` parsed."""
    return settings.from_flat(ExperimentConfig, {"dataset": dataset, **vars(args)})


__all__ = ["add_arguments", "config_from_args"]
