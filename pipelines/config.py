"""The one place where sdft_core's dataclass configs become Dagster run config (shown, with their defaults, in the
launchpad) and back."""

from __future__ import annotations

import dataclasses
import functools
import types
import typing
from typing import Any

import dagster as dg
import pydantic


@functools.cache
def config_class(cls: type, exclude: tuple[str, ...] = ()) -> type[dg.Config]:
    """A Dagster Config class with the dataclass's fields, types and defaults (nested dataclasses nest)."""
    hints = typing.get_type_hints(cls)
    fields: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if f.name in exclude:
            continue
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        annotation = _annotation(hints[f.name])
        if dataclasses.is_dataclass(default):
            default = config_class(type(default))(**dataclasses.asdict(default))
        elif isinstance(default, tuple):
            default = list(default)
        fields[f.name] = (annotation, default)
    return pydantic.create_model(f"{cls.__name__}Config", __base__=dg.Config, __module__=__name__, **fields)


def _annotation(hint: Any) -> Any:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if dataclasses.is_dataclass(hint):
        return config_class(hint)
    if origin is tuple:
        return list[args[0]]
    if origin in (typing.Union, types.UnionType):
        inner = [_annotation(a) for a in args if a is not type(None)]
        return typing.Optional[inner[0]] if len(inner) == 1 else hint  # noqa: UP045 (pydantic needs the object)
    return hint


def to_dataclass(cls: type, config: dg.Config, **fixed: Any) -> Any:
    """The Dagster config back into `cls` (TrainConfig and friends go through their own validating from_dict)."""
    data = config.model_dump() | fixed
    return cls.from_dict(data) if hasattr(cls, "from_dict") else cls(**data)
