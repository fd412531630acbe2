"""Argument validation shared by the pure formulas: one message shape, naming the argument and its value."""

from __future__ import annotations

from enum import Enum
from typing import Any, TypeVar

import numpy as np

E = TypeVar("E", bound=Enum)


def check_array(
    name: str,
    value: Any,
    *,
    low: float | None = None,
    high: float | None = None,
    open_low: bool = False,
    open_high: bool = False,
    integer: bool = False,
    allow_inf: bool = False,
) -> np.ndarray:
    """``value`` as a float array, or ValueError naming ``name`` and the first bad entry.

    ``allow_inf`` admits ``+inf`` (never ``-inf`` or NaN).
    """
    x = np.asarray(value, dtype=float)
    bad = np.isnan(x) | (x == -np.inf) | ((x == np.inf) if not allow_inf else np.zeros(x.shape, bool))
    requirement = "a finite integer" if integer else ("a number or +inf" if allow_inf else "a finite number")
    if integer:
        bad |= np.isfinite(x) & (x != np.round(x))
    if low is not None and high is not None:
        bad |= (x <= low if open_low else x < low) | (x >= high if open_high else x > high)
        requirement += f" in {'(' if open_low else '['}{low:g}, {high:g}{')' if open_high else ']'}"
    elif low is not None:
        bad |= x <= low if open_low else x < low
        requirement += f" {'>' if open_low else '>='} {low:g}"
    if bad.any():
        first = float(x[bad].flat[0])
        where = f" ({int(bad.sum())} of {x.size} entries bad)" if x.ndim else ""
        raise ValueError(f"{name} must be {requirement}, got {first!r}{where}")
    return x


def check_option(enum: type[E], name: str, value: Any) -> E:
    """``value`` as a member of the str enum ``enum``, or ValueError naming ``name`` and the allowed values."""
    try:
        return enum(value)
    except ValueError:
        allowed = ", ".join(repr(m.value) for m in enum)
        raise ValueError(f"{name}={value!r} is not one of {allowed}") from None
