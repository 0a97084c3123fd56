"""What a config dataclass's fields declare, read in one place: the type, the default, the help text
(`field(metadata={"help": ...})`, as in Hugging Face's and TRL's argument dataclasses) and, for a `Literal` type, the
allowed values. Everything else follows from these: values read as text or YAML are converted by type (`from_dict`),
every config checks itself when made (`Config.__post_init__`), and `config_flags` turns the fields into flags.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import math
import types
import typing
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

C = TypeVar("C", bound="Config")

TRUE_WORDS = ("true", "yes", "on", "1")
FALSE_WORDS = ("false", "no", "off", "0")
NONE_WORDS = ("none", "null", "~")


class ConfigError(ValueError):
    """Invalid config values; each problem starts with the field's dotted name, e.g. "loss.top_k must be ..."."""

    def __init__(self, problems: list[str]):
        super().__init__("invalid config: " + "; ".join(problems))
        self.problems = problems

    def __reduce__(self):  # pickled by its problems (e.g. across processes), not by its message
        return ConfigError, (self.problems,)

    def under(self, section: str) -> ConfigError:
        """The same problems, named from the config that holds this one as `section`."""
        return ConfigError([f"{section}.{problem}" for problem in self.problems])


class Config:
    """Base of the config dataclasses: making one checks it, so an invalid config never exists.

    Each field's value must be of its declared type (a `Literal`: one of its values) and in its declared `Range`
    (each item of a tuple or list); a subclass adds checks across fields in `rules`, run on well-typed values only.
    """

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ConfigError naming every invalid field (again: a config can be changed after it was made)."""
        problems = self.problems()
        if problems:
            raise ConfigError(problems)

    def problems(self) -> list[str]:
        """What is wrong with this config, each problem naming its field; [] when it is valid."""
        found = []
        for f in dataclasses.fields(self):
            value, hint = getattr(self, f.name), field_hints(type(self))[f.name]
            allowed = f.metadata.get("range")
            if not fits(value, hint):
                found.append(f"{f.name} {requirement(value, hint)}")
            elif isinstance(value, Config):
                found += [f"{f.name}.{problem}" for problem in value.problems()]
            elif allowed and value is not None and any(v not in allowed for v in _items(value)):
                found.append(
                    f"{f.name} must be {allowed}{' each' if isinstance(value, (tuple, list)) else ''}, got {value!r}"
                )
        return found or self.rules()

    def rules(self) -> list[str]:
        """The class's checks across fields (e.g. one field's range that depends on another), each naming a field."""
        return []

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls: type[C], data: Mapping[str, Any]) -> C:
        """Made from a mapping of fields (sections as mappings), each value converted to its declared type."""
        return from_dict(cls, data)


@dataclass(frozen=True)
class Range:
    """The interval a number must lie in, declared beside its field: `metadata={"range": Range(1)}` is "at least 1".
    `closed` says which ends belong to it: "[)" is [low, high)."""

    low: float = -math.inf
    high: float = math.inf
    closed: str = "[]"

    def __contains__(self, value: float) -> bool:
        above = value >= self.low if self.closed[0] == "[" else value > self.low
        below = value <= self.high if self.closed[1] == "]" else value < self.high
        return above and below

    def __str__(self) -> str:
        if self.high == math.inf:
            return f"{'at least' if self.closed[0] == '[' else 'above'} {self.low:g}"
        return f"in {self.closed[0]}{self.low:g}, {self.high:g}{self.closed[1]}"


# ------------------------------------------------------------------------------------------- field declarations
@functools.cache
def field_hints(cls: type) -> dict[str, Any]:
    """The fields' declared types, resolved (the config modules postpone annotations)."""
    return typing.get_type_hints(cls)


def choices(hint: Any) -> tuple[Any, ...]:
    """The values a `Literal` type allows; () for any other type."""
    return typing.get_args(hint) if typing.get_origin(hint) is Literal else ()


def value_type(hint: Any) -> Any:
    """The declared type without its `| None`."""
    if typing.get_origin(hint) not in (typing.Union, types.UnionType):
        return hint
    members = [member for member in typing.get_args(hint) if member is not type(None)]
    return members[0] if len(members) == 1 else hint


def section_class(hint: Any) -> type | None:
    """The dataclass a field holds (also when optional), i.e. a nested section; None for a plain value."""
    return value_type(hint) if dataclasses.is_dataclass(value_type(hint)) else None


def default_of(f: dataclasses.Field) -> Any:
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default


def help_of(f: dataclasses.Field) -> str:
    return f.metadata.get("help", "")


def summary(cls: type) -> str:
    """The first paragraph of a class's docstring ("" for none: not the signature dataclass writes in its place)."""
    doc = inspect.cleandoc(cls.__doc__ or "")
    return "" if doc.startswith(f"{cls.__name__}(") else doc.split("\n\n")[0]


def leaf_fields(cls: type, prefix: str = "") -> Iterator[tuple[str, dataclasses.Field, Any]]:
    """(dotted name, field, type) of every field that holds a value, the nested sections' fields included."""
    for f in dataclasses.fields(cls):
        hint = field_hints(cls)[f.name]
        section = section_class(hint)
        if section is None:
            yield prefix + f.name, f, hint
        else:
            yield from leaf_fields(section, f"{prefix}{f.name}.")


def _items(value: Any) -> tuple[Any, ...]:
    return tuple(value) if isinstance(value, (tuple, list)) else (value,)


# ------------------------------------------------------------------------------------------- values by type
def fits(value: Any, hint: Any) -> bool:
    """Whether `value` is of the declared type. An int fits a float (as in Python's typing): converting it would
    change the fingerprint of configs that worked before."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return True
    if origin is Literal:
        return any(value == allowed and type(value) is type(allowed) for allowed in args)
    if origin in (typing.Union, types.UnionType):
        return any(fits(value, member) for member in args)
    if hint is type(None):
        return value is None
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if origin is tuple:
        return isinstance(value, tuple) and len(value) == len(args) and all(map(fits, value, args))
    if origin is list:
        return isinstance(value, list) and all(fits(item, args[0]) for item in value)
    return isinstance(value, origin or hint)


def describe(hint: Any) -> str:
    """The declared type in words, for error messages."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is Literal:
        return "one of " + ", ".join(map(str, args))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(describe(member) for member in args)
    if origin is tuple:
        return f"a list of {len(args)}, each " + describe(args[0])
    if origin is list:
        return "a list, each " + describe(args[0])
    if dataclasses.is_dataclass(hint):
        return f"a mapping of {hint.__name__} fields"
    names = {int: "an integer", float: "a number", str: "a string", bool: "true or false", type(None): "none"}
    return names.get(hint, getattr(hint, "__name__", str(hint)))


def requirement(value: Any, hint: Any) -> str:
    return f"must be {describe(hint)}, got {value!r}"


def coerce(value: Any, hint: Any, name: str) -> Any:
    """`value` as the declared type: text from the command line or YAML converted (YAML 1.1 reads `1e-3` as a
    string), lists made tuples (JSON has none); a value that cannot be raises ConfigError naming `name`."""
    try:
        return _convert(value, hint)
    except (ValueError, TypeError):
        raise ConfigError([f"{name} {requirement(value, hint)}"]) from None


def _convert(value: Any, hint: Any) -> Any:
    if fits(value, hint):
        return value
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        for member in args:
            try:
                return _convert(value, member)
            except (ValueError, TypeError):
                continue
    elif isinstance(value, str):
        word = value.strip().lower()
        if hint is type(None) and word in NONE_WORDS:
            return None
        if hint is bool and word in TRUE_WORDS + FALSE_WORDS:
            return word in TRUE_WORDS
        if hint in (int, float):
            return hint(value)
    elif hint is int and isinstance(value, float) and value.is_integer():
        return int(value)
    elif origin in (tuple, list) and isinstance(value, (list, tuple)):
        items = args if origin is tuple else args * len(value)
        if len(items) == len(value):
            return origin(map(_convert, value, items))
    raise ValueError(f"not {describe(hint)}")


# ------------------------------------------------------------------------------------------- mappings
def from_dict(cls: type[C], data: Mapping[str, Any], path: str = "") -> C:
    """A `cls` from a mapping of its fields, nested sections as mappings; each value is converted to its declared
    type and the result checked. Unknown keys and invalid values raise ConfigError naming the dotted key."""
    if not isinstance(data, Mapping):
        raise ConfigError(
            [f"config section {path.rstrip('.') or '<root>'!r} must be a mapping, got {type(data).__name__}"]
        )
    hints, known = field_hints(cls), [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise ConfigError(
            [f"unknown config key(s) {', '.join(path + key for key in unknown)}; known: {', '.join(known)}"]
        )
    values = {}
    for name, value in data.items():
        section = section_class(hints[name])
        if section is not None and isinstance(value, Mapping):
            values[name] = from_dict(section, value, f"{path}{name}.")
        else:
            values[name] = coerce(value, hints[name], path + name)
    try:
        return cls(**values)
    except ConfigError as err:
        raise (err.under(path.rstrip(".")) if path else err) from None


def set_dotted(data: dict[str, Any], dotted: str, value: Any) -> None:
    """data["a"]["b"] = value for "a.b", making missing (or none) sections; for dicts of config fields."""
    *sections, leaf = dotted.split(".")
    for depth, name in enumerate(sections):
        if data.get(name) is None:
            data[name] = {}
        elif not isinstance(data[name], dict):
            raise ConfigError([f"{'.'.join(sections[: depth + 1])} is not a section, so {dotted} cannot be set"])
        data = data[name]
    data[leaf] = value


def with_overrides(config: C, overrides: Mapping[str, Any]) -> C:
    """A copy of `config` with dotted fields replaced, e.g. {"rollout.max_new_tokens": 128}; converted, checked."""
    data = config.to_dict()
    for dotted, value in overrides.items():
        set_dotted(data, dotted, value)
    return from_dict(type(config), data)
