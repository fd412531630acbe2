"""Argument checks and the scalar-or-array convention shared by the formulas.

Every formula takes Python floats or numpy arrays and broadcasts them like numpy; scalars in give
scalars out, any array in gives arrays out (`is_scalar`, `as_output`). The checks below wrap
`bounds.validation.check_array`, so a bad argument raises ``ValueError`` naming it and its first bad value.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..validation import check_array

__all__ = [
    "ArrayLike",
    "as_output",
    "count",
    "is_scalar",
    "nonnegative",
    "positive",
    "probability",
    "unit",
]

ArrayLike = float | np.ndarray


def unit(name: str, value: Any) -> np.ndarray:
    """``value`` in [0, 1] (a probability that may be 0 or 1: a dropout rate, a risk of a [0, 1] loss)."""
    return check_array(name, value, low=0.0, high=1.0)


def probability(name: str, value: Any) -> np.ndarray:
    """``value`` in (0, 1) (a failure probability)."""
    return check_array(name, value, low=0.0, high=1.0, open_low=True, open_high=True)


def count(name: str, value: Any) -> np.ndarray:
    """``value`` an integer >= 1 (a number of examples, draws or grid points)."""
    return check_array(name, value, low=1.0, integer=True)


def positive(name: str, value: Any) -> np.ndarray:
    """``value`` > 0."""
    return check_array(name, value, low=0.0, open_low=True)


def nonnegative(name: str, value: Any) -> np.ndarray:
    """``value`` >= 0."""
    return check_array(name, value, low=0.0)


def is_scalar(*arrays: np.ndarray) -> bool:
    """Whether every (checked) input was a scalar, so the output is one too."""
    return all(a.ndim == 0 for a in arrays)


def as_output(x: np.ndarray, scalar: bool) -> ArrayLike:
    """A Python float when every input was a scalar, otherwise a (new) float array."""
    return float(x) if scalar else np.array(x, dtype=float)
