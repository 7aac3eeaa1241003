"""Settings as dataclasses: checked once, saved as JSON with a run, offered on the command line.

Each component owns its settings, a frozen dataclass beside it: the EBM prior's
:class:`~pyro_mmebm.ebm.EBMPriorConfig`, its sampler's :class:`~pyro_mmebm.ebm.LangevinConfig`, the
guide's :class:`guides.GuideConfig`, the optimisation's :class:`~pyro_mmebm.training.TrainConfig`. A
run's :class:`~pyro_mmebm.experiment.ExperimentConfig` composes them as fields. A setting is a field
declared with :func:`setting` (its default, a line of help, the values it takes); from the fields
alone:

- a configuration checks its own settings when it is made (``__post_init__`` calls
  :func:`check_settings`), naming the setting and its command-line option; nothing downstream
  checks them again;
- every setting has one *flat name* among all the settings of a run: ``<prefix>_<field>``, where
  ``settings_prefix`` is the class's prefix (``EBMPriorConfig.hidden`` is ``ebm_hidden``), or the
  name the field gives; its command-line option is the flat name with hyphens (``--ebm-hidden``),
  or the option the field gives (``-K``);
- :func:`add_arguments` offers every setting on an ``argparse`` parser, its type, choices, check and
  default taken from the field, and :func:`from_flat` builds the configuration from the parsed
  options (or from any settings by flat name: :func:`replace_settings`);
- :func:`to_dict` and :func:`from_dict` write and read the JSON, nested as the classes compose;
  :func:`from_dict` also reads the flat layout (every setting by its flat name) that earlier
  versions wrote.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import functools
import math
import typing
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import MISSING, Field
from typing import Any, Optional, Union

Check = Callable[[Any], Optional[str]]
"""What makes a value impossible for a setting (``"must be ..., got ..."``), or ``None`` when it is possible."""


def setting(
    default: Any = MISSING,
    help: Optional[str] = None,
    *,
    check: Optional[Check] = None,
    choices: Optional[Collection[str]] = None,
    name: Optional[str] = None,
    flag: Optional[str] = None,
) -> Any:
    """A dataclass field that is a setting.

    :param default: its default (none: the setting must be given).
    :param help: one line for ``--help``; ``None``: not offered on the command line.
    :param check: e.g. :func:`at_least` or :func:`positive`; ``None`` passes unchecked (for any
        setting whose default is ``None``, ``None`` is always allowed).
    :param choices: the values it takes (the keys of a table of names).
    :param name: its flat name, when not ``<settings_prefix>_<field>`` (kept from an earlier layout).
    :param flag: its command-line option, when not the flat name with hyphens.
    """
    metadata = {"help": help, "check": check, "choices": choices, "name": name, "flag": flag}
    return dataclasses.field(default=default, metadata=metadata)


def at_least(bound: int) -> Check:
    """A whole number of at least ``bound``."""

    def check(value: Any) -> Optional[str]:
        return None if value >= bound else f"must be at least {bound}, got {value}"

    return check


def positive(value: Any) -> Optional[str]:
    """A finite number above zero."""
    return None if value > 0 and math.isfinite(value) else f"must be a positive number, got {value}"


def positive_or_infinite(value: Any) -> Optional[str]:
    """A number above zero, ``inf`` included (a bound that is never reached)."""
    return None if value > 0 else f"must be a positive number, got {value}"


def non_negative(value: Any) -> Optional[str]:
    """A finite number of at least zero."""
    return None if value >= 0 and math.isfinite(value) else f"must be a non-negative number, got {value}"


def fraction(value: Any) -> Optional[str]:
    """A number in ``[0, 1]``."""
    return None if 0 <= value <= 1 else f"must lie in [0, 1], got {value}"


def positive_fraction(value: Any) -> Optional[str]:
    """A number in ``(0, 1]``."""
    return None if 0 < value <= 1 else f"must lie in (0, 1], got {value}"


def _is_config(kind: Any) -> bool:
    return isinstance(kind, type) and dataclasses.is_dataclass(kind)


def _unwrap_optional(kind: Any) -> Any:
    """``int`` for ``Optional[int]``; ``kind`` itself otherwise."""
    if typing.get_origin(kind) is Union:
        (kind,) = [arg for arg in typing.get_args(kind) if arg is not type(None)]
    return kind


@dataclasses.dataclass(frozen=True)
class Setting:
    """One setting of a configuration class: where it sits, what it holds and its names.

    :param path: the field names from the outermost configuration down to the setting.
    :param field: its dataclass field (default and :func:`setting` metadata).
    :param kind: its type, e.g. ``int`` or ``Optional[float]``.
    :param name: its flat name.
    """

    path: tuple[str, ...]
    field: Field
    kind: Any
    name: str

    @property
    def flag(self) -> str:
        """Its command-line option."""
        return self.field.metadata.get("flag") or "--" + self.name.replace("_", "-")

    @property
    def offered(self) -> bool:
        """Whether it is offered on the command line."""
        return self.field.metadata.get("help") is not None

    @property
    def default(self) -> Any:
        """The field's default (``dataclasses.MISSING`` when the setting must be given)."""
        if self.field.default_factory is not MISSING:
            return self.field.default_factory()
        return self.field.default

    def problem(self, value: Any) -> Optional[str]:
        """What makes ``value`` impossible for this setting, or ``None``."""
        if value is None:
            return None
        choices = self.field.metadata.get("choices")
        if choices is not None and value not in choices:
            return f"must be one of {sorted(choices)}, got {value!r}"
        check = self.field.metadata.get("check")
        return check(value) if check is not None else None


@functools.cache
def settings_of(cls: type) -> tuple[Setting, ...]:
    """Every setting of the configuration class ``cls``, those of the configurations it composes included.

    :raises TypeError: when two settings would share a flat name.
    """
    hints = typing.get_type_hints(cls)
    prefix = vars(cls).get("settings_prefix", "")
    found: list[Setting] = []
    for field in dataclasses.fields(cls):
        kind = hints[field.name]
        if _is_config(kind):
            found += [dataclasses.replace(inner, path=(field.name, *inner.path)) for inner in settings_of(kind)]
        else:
            name = field.metadata.get("name") or (f"{prefix}_{field.name}" if prefix else field.name)
            found.append(Setting((field.name,), field, kind, name))
    names = [s.name for s in found]
    shared = sorted({name for name in names if names.count(name) > 1})
    if shared:
        raise TypeError(f"{cls.__name__} has settings sharing a flat name: {shared}")
    return tuple(found)


def check_settings(config: Any) -> None:
    """Refuse impossible values of ``config``'s own settings (composed configurations check theirs
    when they are made): for a configuration's ``__post_init__``.

    :raises ValueError: ``"<flat name> (<option>) must be ..., got ..."``.
    """
    for s in settings_of(type(config)):
        if len(s.path) == 1:
            problem = s.problem(getattr(config, s.path[0]))
            if problem is not None:
                raise ValueError(f"{s.name} ({s.flag}) {problem}")


def to_dict(config: Any) -> dict[str, Any]:
    """``config`` as JSON-ready data, nested as its classes compose."""
    return dataclasses.asdict(config)


def to_flat(config: Any) -> dict[str, Any]:
    """Every setting of ``config`` by its flat name."""
    flat = {}
    for s in settings_of(type(config)):
        value = config
        for key in s.path:
            value = getattr(value, key)
        flat[s.name] = value
    return flat


def _coerce(kind: Any, value: Any) -> Any:
    """``value`` as read from JSON, in the type of the setting (JSON has no tuples)."""
    if typing.get_origin(_unwrap_optional(kind)) is tuple and isinstance(value, list):
        return tuple(value)
    return value


def _from_nested(cls: type, data: Mapping[str, Any]) -> Any:
    hints = typing.get_type_hints(cls)
    names = {field.name for field in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ValueError(f"unknown settings of {cls.__name__}: {unknown}")
    values = {}
    for name, value in data.items():
        kind = hints[name]
        values[name] = _from_nested(kind, value) if _is_config(kind) else _coerce(kind, value)
    return cls(**values)


def from_flat(cls: type, values: Mapping[str, Any], *, ignore: Collection[str] = ()) -> Any:
    """A ``cls`` from settings by flat name (parsed options, a flat JSON layout); the others keep their defaults.

    :param ignore: names to drop (settings that no longer exist).
    :raises ValueError: naming any name that is not a setting of ``cls``.
    """
    known = {s.name: s for s in settings_of(cls)}
    unknown = sorted(set(values) - set(known) - set(ignore))
    if unknown:
        raise ValueError(f"unknown settings of {cls.__name__}: {unknown}")
    tree: dict[str, Any] = {}
    for name, value in values.items():
        if name in known:
            node, key = _holder(tree, known[name].path)
            node[key] = value
    return _from_nested(cls, tree)


def _holder(tree: dict[str, Any], path: tuple[str, ...]) -> tuple[dict[str, Any], str]:
    """The dict of the nested ``tree`` that holds the setting at ``path`` (made where missing), and its key there."""
    *outer, last = path
    for key in outer:
        tree = tree.setdefault(key, {})
    return tree, last


def from_dict(
    cls: type, data: Mapping[str, Any], *, retired: Collection[str] = (), added: Optional[Mapping[str, Any]] = None
) -> Any:
    """A ``cls`` from its JSON form: nested, as :func:`to_dict` writes it, or flat (every setting by its
    flat name), as earlier versions wrote it. Settings missing from ``data`` take their defaults, or
    their value in ``added``.

    :param retired: flat names of settings that no longer exist, dropped from a flat layout.
    :param added: by flat name, values for settings that ``data`` lacks because it was written before
        they existed, where what that version did differs from today's default.
    """
    fields = {field.name: field for field in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    flat = any(
        name not in fields or (_is_config(hints[name]) and not isinstance(value, Mapping))
        for name, value in data.items()
    )
    added = added or {}
    if flat:
        return from_flat(cls, {**added, **data}, ignore=retired)
    paths = {s.name: s.path for s in settings_of(cls)}
    tree = copy.deepcopy(dict(data))
    for name, value in added.items():
        node, key = _holder(tree, paths[name])
        node.setdefault(key, value)
    return _from_nested(cls, tree)


def replace_settings(config: Any, **changes: Any) -> Any:
    """``config`` with settings changed by flat name: ``replace_settings(c, epochs=2, langevin_step_size=0.1)``."""
    return from_flat(type(config), {**to_flat(config), **changes})


def _parser_type(s: Setting, kind: type) -> Callable[[str], Any]:
    """An ``argparse`` type: ``kind``, refusing values impossible for the setting when parsed."""

    def parse(text: str) -> Any:
        value = kind(text)
        problem = s.problem(value)
        if problem is not None:
            raise argparse.ArgumentTypeError(problem)
        return value

    parse.__name__ = kind.__name__  # argparse names the type in its "invalid int value" message
    return parse


def add_arguments(
    parser: argparse.ArgumentParser,
    cls: type,
    defaults: Optional[Mapping[str, Any]] = None,
    *,
    exclusive: Sequence[Sequence[str]] = (),
) -> None:
    """Offer every setting of ``cls`` on ``parser``: the option :attr:`Setting.flag`, stored under the
    flat name, with the field's type, choices and check, and its default (shown in ``--help``).

    :param defaults: defaults by flat name that replace the fields' own (an example's sizes).
    :param exclusive: groups of flat names of which at most one may be given (``--resume``, ``--overwrite``).
    """
    home: dict[str, Any] = {}
    for group in exclusive:
        container = parser.add_mutually_exclusive_group()
        home.update({name: container for name in group})
    for s in settings_of(cls):
        if not s.offered:
            continue
        default = (defaults or {}).get(s.name, s.default)
        options: dict[str, Any] = {"dest": s.name, "help": s.field.metadata["help"].replace("%", "%%")}
        if default is MISSING:
            options["required"] = True
        else:
            options["default"] = default
            options["help"] += " (default: %(default)s)"
        kind = _unwrap_optional(s.kind)
        if kind is bool:  # one that may be None has three states: --no-FLAG sets False
            options["action"] = "store_true" if s.kind is bool else argparse.BooleanOptionalAction
        elif typing.get_origin(kind) is tuple:
            element_types = typing.get_args(kind)
            options.update(nargs=len(element_types), type=element_types[0])
        else:
            options["type"] = _parser_type(s, kind)
            if s.field.metadata.get("choices") is not None:
                options["choices"] = sorted(s.field.metadata["choices"])
        home.get(s.name, parser).add_argument(s.flag, **options)


__all__ = [
    "Check",
    "Setting",
    "add_arguments",
    "at_least",
    "check_settings",
    "fraction",
    "from_dict",
    "from_flat",
    "non_negative",
    "positive",
    "positive_fraction",
    "positive_or_infinite",
    "replace_settings",
    "setting",
    "settings_of",
    "to_dict",
    "to_flat",
]
