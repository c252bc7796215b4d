"""Suite files: a suite's sizes and tuned settings as YAML (`configs/`), read into its dataclasses.

A suite reads its own file, then its quick file for ``--quick``, then a user's ``--config`` file and ``--field value``
flags; each later source sets only the fields it names. (`config.apply_overrides` checks training configs, whose
rules — batch size divisible by gradient accumulation — a suite's fields do not have, hence this small reader.)
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

from preftune.config import ConfigError, load_yaml

CONFIGS = Path(__file__).parent / "configs"


def load_settings(classes: Sequence[type], files: Sequence[Path], flags: dict | None = None) -> list:
    """One instance of each dataclass in ``classes``, its fields read from ``files`` in order and then from ``flags``
    (``--field value``), a later value replacing an earlier one. Each key is a field of one of the classes; numbers
    must be > 0 and text one of a ``Literal``'s values; every field must be set. An error names the file and field."""
    owner = {f.name: cls for cls in classes for f in dataclasses.fields(cls)}
    values: dict[str, object] = {}
    sources = [(str(path), load_yaml(path)) for path in files] + [("command line", flags or {})]
    for source, data in sources:
        for key, value in data.items():
            name = key.replace("-", "_")
            if name not in owner:
                raise ConfigError(f"{source}: unknown field {key!r}; fields: {', '.join(owner)}")
            values[name] = _typed(owner[name], name, value, source)
    missing = [name for name in owner if name not in values]
    if missing:
        raise ConfigError(f"{', '.join(map(str, files))}: no value for {', '.join(missing)}")
    return [cls(**{f.name: values[f.name] for f in dataclasses.fields(cls)}) for cls in classes]


def _typed(cls: type, name: str, value: object, source: str) -> object:
    """``value`` as field ``name``'s type: YAML gives numbers and text, flags give text."""
    hint = typing.get_type_hints(cls)[name]
    if typing.get_origin(hint) is Literal:
        if value not in typing.get_args(hint):
            raise ConfigError(f"{source}: field {name!r} must be one of {list(typing.get_args(hint))}, got {value!r}")
        return value
    if hint is str:
        return str(value)
    try:
        if isinstance(value, bool) or (hint is int and isinstance(value, float)):  # int(2.5) would round
            raise ValueError
        number = hint(value)
    except (TypeError, ValueError):
        number = None
    if number is None or number <= 0:
        kind = "an integer" if hint is int else "a number"
        raise ConfigError(f"{source}: field {name!r} must be {kind} > 0, got {value!r}")
    return number
