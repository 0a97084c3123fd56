"""Command-line flags made from a config dataclass: one per field, a nested section's fields dotted
(`--loss.top-k`), each with the field's help text, default, range, type and choices, plus the short names its
metadata lists (`"aliases": ["--lr"]`). A field added to a config is a flag without touching the CLI.

Flags that are not given leave no value, so they never override a config file or a skill's settings.
"""

from __future__ import annotations

import argparse
import dataclasses
import typing
from typing import Any

from .config_schema import (
    ConfigError,
    choices,
    coerce,
    default_of,
    field_hints,
    help_of,
    leaf_fields,
    section_class,
    summary,
    value_type,
)

METAVARS = {int: "N", float: "X", str: "TEXT", bool: "BOOL"}


def add_config_flags(parser: argparse.ArgumentParser, cls: type, prefix: str = "") -> None:
    """A group of flags for `cls`'s fields, then one group for each nested section."""
    title = f"{prefix.rstrip('.')}: {cls.__name__}" if prefix else f"{cls.__name__} fields"
    group = parser.add_argument_group(title, summary(cls))
    for f in dataclasses.fields(cls):
        hint = field_hints(cls)[f.name]
        section = section_class(hint)
        if section is not None:
            add_config_flags(parser, section, f"{prefix}{f.name}.")
        else:
            _add_flag(group, prefix + f.name, f, hint)


def given_fields(args: argparse.Namespace, cls: type) -> dict[str, Any]:
    """{dotted field: value} for the flags of `cls` given on the command line."""
    given = vars(args)
    return {dotted: given[dotted] for dotted, _, _ in leaf_fields(cls) if dotted in given}


def flag_name(dotted: str) -> str:
    return "--" + dotted.replace("_", "-")


def _add_flag(group: argparse._ArgumentGroup, dotted: str, f: dataclasses.Field, hint: Any) -> None:
    options: dict[str, Any] = {"dest": dotted, "default": argparse.SUPPRESS, "help": _help(f)}
    plain = value_type(hint)
    if choices(hint):
        options["choices"] = choices(hint)
    elif plain is bool:  # `--fsdp` alone is true; `--fsdp false` also works
        options.update(nargs="?", const=True, type=_parser(hint, dotted), metavar="BOOL")
    elif typing.get_origin(plain) in (tuple, list):  # `--adam-betas 0.9 0.99`
        items = typing.get_args(plain)
        nargs = len(items) if typing.get_origin(plain) is tuple else "+"
        options.update(nargs=nargs, type=_parser(items[0], dotted), metavar=METAVARS.get(items[0], "VALUE"))
    else:
        options.update(type=_parser(hint, dotted), metavar=METAVARS.get(plain, "VALUE"))
    group.add_argument(*f.metadata.get("aliases", ()), flag_name(dotted), **options)  # short names first


def _parser(hint: Any, dotted: str):
    """Text to the declared type, as a config file's value would be converted; argparse reports a failure."""

    def parse(text: str) -> Any:
        try:
            return coerce(text, hint, dotted)
        except ConfigError as err:
            raise argparse.ArgumentTypeError("; ".join(err.problems)) from None

    return parse


def _help(f: dataclasses.Field) -> str:
    """The field's help text, its default and its range; '%' doubled, since argparse formats help with it."""
    default = default_of(f)
    if isinstance(default, (list, tuple)):
        shown = " ".join(map(str, default))
    elif isinstance(default, bool) or default is None:
        shown = str(default).lower()
    elif isinstance(default, str) and (not default or any(c.isspace() for c in default)):
        shown = repr(default)
    else:
        shown = str(default)
    allowed = f.metadata.get("range")
    text = f"{help_of(f)} (default: {shown}{f'; {allowed}' if allowed else ''})"
    return text.replace("%", "%%")
