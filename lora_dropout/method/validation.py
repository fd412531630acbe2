"""Count and option validation, shared by the configs and entry points of `lora_dropout` (and `analysis`).

It lives in `method` because `method` imports no other part of the project: everything above it can
use it. Messages name the field and the bad value, in one form everywhere (options in the form of
`bounds.validation.check_option`, which `lora_dropout` may not import).
"""

from __future__ import annotations

import numbers
from enum import Enum
from typing import Any, TypeVar

E = TypeVar("E", bound=Enum)


def check_count(name: str, value: object, *, minimum: int = 1, optional: bool = False) -> None:
    """Raise ``ValueError`` unless ``value`` is an integer ``>= minimum`` (None too when ``optional``).

    ``bool`` is refused although it subclasses ``int`` (``n_instances=True`` is a mistake, not 1);
    numpy integers are accepted.

    >>> check_count("n_instances", 4)
    >>> check_count("n_instances", 0)
    Traceback (most recent call last):
    ...
    ValueError: n_instances=0 must be an integer >= 1
    >>> check_count("eval_every", None, minimum=0, optional=True)
    """
    if optional and value is None:
        return
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        allowed = f"None or an integer >= {minimum}" if optional else f"an integer >= {minimum}"
        raise ValueError(f"{name}={value!r} must be {allowed}")


def check_count_field(config: object, name: str, *, minimum: int = 1, optional: bool = False) -> None:
    """`check_count` on field ``name`` of a frozen dataclass (in its ``__post_init__``), stored as ``int``.

    A numpy integer passes the check; storing it as a plain ``int`` keeps the config JSON-ready (run
    ids hash its JSON form).

    >>> from dataclasses import dataclass
    >>> import numpy as np
    >>> @dataclass(frozen=True)
    ... class Sizes:
    ...     n: int
    ...     def __post_init__(self):
    ...         check_count_field(self, "n")
    >>> type(Sizes(np.int64(3)).n).__name__
    'int'
    >>> Sizes(0)
    Traceback (most recent call last):
    ...
    ValueError: n=0 must be an integer >= 1
    """
    value = getattr(config, name)
    check_count(name, value, minimum=minimum, optional=optional)
    if value is not None:
        object.__setattr__(config, name, int(value))


def check_option(enum: type[E], name: str, value: Any) -> E:
    """``value`` as a member of the str enum ``enum`` (a member or its plain string), or ValueError naming
    ``name`` and the allowed values.

    >>> from lora_dropout.method.config import MaskScope
    >>> check_option(MaskScope, "mask_scope", "batch")
    <MaskScope.BATCH: 'batch'>
    >>> check_option(MaskScope, "mask_scope", "row")
    Traceback (most recent call last):
    ...
    ValueError: mask_scope='row' is not one of 'example', 'batch', 'token'
    """
    try:
        return enum(value)
    except ValueError:
        allowed = ", ".join(repr(m.value) for m in enum)
        raise ValueError(f"{name}={value!r} is not one of {allowed}") from None
