"""Command-line flags generated from the frozen config dataclasses, so every field is reachable.

Each field becomes ``--field-name`` with the field's ``help`` metadata, its default, and a parser
derived from its type: booleans get ``--x/--no-x``, enums list their choices, optional numbers
accept ``none``, tuples take several values.
"""

from __future__ import annotations

import argparse
import dataclasses
import enum
import typing
from typing import Any

NONE_WORDS = ("none", "null")


def _optional(parse):
    def parser(text: str):
        return None if text.lower() in NONE_WORDS else parse(text)

    parser.__name__ = getattr(parse, "__name__", "value")
    return parser


def _field_type(cls, f: dataclasses.Field) -> tuple[Any, bool]:
    """``(type, optional)`` of a field: ``int | None`` gives ``(int, True)``."""
    hint = typing.get_type_hints(cls)[f.name]
    args = typing.get_args(hint)
    if type(None) in args:
        return next(a for a in args if a is not type(None)), True
    return hint, False


def add_dataclass_flags(parser: argparse.ArgumentParser, cls, title: str, *, skip: tuple[str, ...] = ()) -> None:
    """Add one flag per field of ``cls`` into an argument group ``title`` (dest ``<title>.<field>``)."""
    group = parser.add_argument_group(title)
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        base, optional = _field_type(cls, f)
        flag = "--" + f.name.replace("_", "-")
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        shown = default.value if isinstance(default, enum.Enum) else default
        help_text = f.metadata.get("help", "")
        if "default" not in help_text:
            help_text += f" (default: {shown})"
        kwargs: dict[str, Any] = {"dest": f"{title}.{f.name}", "default": argparse.SUPPRESS, "help": help_text}
        if base is bool:
            group.add_argument(flag, action=argparse.BooleanOptionalAction, **kwargs)
            continue
        kwargs["metavar"] = f.name.upper()
        if isinstance(base, type) and issubclass(base, enum.Enum):
            group.add_argument(flag, choices=[m.value for m in base], **kwargs)
            continue
        if typing.get_origin(base) is tuple:
            group.add_argument(flag, nargs="+", type=str, **kwargs)
            continue
        parse = base if base in (int, float, str) else str
        group.add_argument(flag, type=_optional(parse) if optional else parse, **kwargs)


def dataclass_kwargs(args: argparse.Namespace, title: str) -> dict[str, Any]:
    """The fields given on the command line for group ``title`` (others keep their defaults)."""
    prefix = f"{title}."
    return {k[len(prefix):]: v for k, v in vars(args).items() if k.startswith(prefix)}
