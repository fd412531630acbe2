"""Command-line flags generated from the frozen config dataclasses, so every field is reachable.

Each field becomes ``--field-name`` with the field's ``help`` metadata, its default, and a parser
derived from its type: booleans get ``--x/--no-x``, enums and ``Literal`` types list their choices,
optional numbers accept ``none``, a ``Literal`` word beside a number (``int | Literal["auto"]``) is
accepted as itself, tuples take several values.
"""

from __future__ import annotations

import argparse
import dataclasses
import enum
import types
import typing
from typing import Any

NONE_WORDS = ("none", "null")


def _parser(base, words: tuple[str, ...], optional: bool):
    """Parse ``base`` (int, float or str), or one of the literal ``words``, or ``none`` when ``optional``."""

    def parser(text: str):
        if optional and text.lower() in NONE_WORDS:
            return None
        if text in words:
            return text
        try:
            return base(text)
        except ValueError:
            expected = [base.__name__, *words, *(("none",) if optional else ())]
            raise argparse.ArgumentTypeError(f"invalid value {text!r}: expected one of {expected}") from None

    parser.__name__ = getattr(base, "__name__", "value")
    return parser


def _field_type(cls, f: dataclasses.Field) -> tuple[Any, tuple[str, ...], bool]:
    """``(type, literal words, optional)`` of a field: ``int | Literal["auto"] | None`` gives
    ``(int, ("auto",), True)``; a pure ``Literal["a", "b"]`` gives ``(None, ("a", "b"), False)``."""
    hint = typing.get_type_hints(cls)[f.name]
    args = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
    optional = type(None) in args
    words = tuple(str(v) for a in args if typing.get_origin(a) is typing.Literal for v in typing.get_args(a))
    rest = [a for a in args if a is not type(None) and typing.get_origin(a) is not typing.Literal]
    return (rest[0] if rest else None), words, optional


def add_dataclass_flags(parser: argparse.ArgumentParser, cls, title: str, *, skip: tuple[str, ...] = ()) -> None:
    """Add one flag per field of ``cls`` into an argument group ``title`` (dest ``<title>.<field>``)."""
    group = parser.add_argument_group(title)
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        base, words, optional = _field_type(cls, f)
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
        if base is None:  # a Literal of words only
            choices = [*words, *(("none",) if optional else ())]
            group.add_argument(flag, choices=choices, type=_parser(str, words, optional), **kwargs)
            continue
        parse = base if base in (int, float, str) else str
        group.add_argument(flag, type=_parser(parse, words, optional), **kwargs)


def dataclass_kwargs(args: argparse.Namespace, title: str) -> dict[str, Any]:
    """The fields given on the command line for group ``title`` (others keep their defaults)."""
    prefix = f"{title}."
    return {k[len(prefix):]: v for k, v in vars(args).items() if k.startswith(prefix)}
