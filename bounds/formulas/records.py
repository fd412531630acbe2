"""The frozen records the formulas return: `BoundValue` (a bound with its additive terms) and the
`Record` base of the PAC-Bayes records, whose array fields are broadcast to one shape and made read-only.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from enum import Enum
from types import MappingProxyType
from typing import Any

import numpy as np

from .arrays import ArrayLike

__all__ = [
    "BoundValue",
    "Record",
    "assemble",
    "jsonable",
]


def jsonable(x: Any) -> Any:
    """A field value as plain Python for JSON: arrays to lists, enums to their value."""
    if isinstance(x, np.ndarray):
        return x.tolist()
    return x.value if isinstance(x, Enum) else x


# eq=False: the generated __eq__ would compare arrays with `==` and fail on truth value.
@dataclass(frozen=True, eq=False)
class BoundValue:
    """The value of a bound with its additive terms, and whether it is vacuous.

    Attributes
    ----------
    value : float or ndarray
        The bound; ``inf`` where vacuous.
    terms : mapping of str to float or ndarray
        Additive terms, each of the shape of ``value``; they sum to ``value`` where not vacuous.
    vacuous : bool or ndarray of bool
        True where a denominator is not positive.
    reason : str or ndarray of str
        ``""`` where not vacuous, otherwise which denominator failed and its value.
    """

    value: ArrayLike
    terms: Mapping[str, ArrayLike]
    vacuous: bool | np.ndarray
    reason: str | np.ndarray

    def __post_init__(self) -> None:
        # Frozen all the way down: a report must not change after it was produced.
        object.__setattr__(self, "terms", MappingProxyType(dict(self.terms)))
        for x in (self.value, self.vacuous, self.reason, *self.terms.values()):
            if isinstance(x, np.ndarray):
                x.flags.writeable = False

    def to_dict(self) -> dict[str, Any]:
        """Plain Python types for JSON (``inf`` stays a float: ``json.dumps`` writes ``Infinity``)."""
        return {
            "value": jsonable(self.value),
            "terms": {k: jsonable(v) for k, v in self.terms.items()},
            "vacuous": jsonable(self.vacuous),
            "reason": jsonable(self.reason),
        }


def assemble(
    scalar: bool,
    terms: dict[str, np.ndarray],
    vacuous: np.ndarray | None = None,
    reason: np.ndarray | None = None,
) -> BoundValue:
    """Broadcast the terms to one shape, sum them, and hand out scalars when the inputs were scalars."""
    shape = np.broadcast_shapes(*(np.shape(t) for t in terms.values()))
    terms = {k: np.broadcast_to(np.asarray(t, dtype=float), shape).copy() for k, t in terms.items()}
    vacuous = np.zeros(shape, dtype=bool) if vacuous is None else np.broadcast_to(vacuous, shape).copy()
    reason = np.full(shape, "") if reason is None else np.broadcast_to(reason, shape).copy()
    # Vacuous terms are already +inf, so the sum is +inf there too (never inf - inf = NaN).
    value = np.where(vacuous, np.inf, sum(terms.values()))
    if scalar:
        return BoundValue(
            value=float(value),
            terms={k: float(t) for k, t in terms.items()},
            vacuous=bool(vacuous),
            reason=str(reason),
        )
    return BoundValue(value=value, terms=terms, vacuous=vacuous, reason=reason)


class Record:
    """Frozen record whose array fields are broadcast to one shape and made read-only."""

    def freeze(self, scalar: bool) -> None:
        """Broadcast the numeric fields to one shape, read-only (Python floats when ``scalar``); called once,
        by the function that builds the record."""
        names = [f.name for f in fields(self) if isinstance(getattr(self, f.name), (float, int, np.ndarray))]
        values = [np.asarray(getattr(self, n), dtype=float) for n in names]
        shape = np.broadcast_shapes(*(v.shape for v in values))
        for name, v in zip(names, values, strict=True):
            if scalar:
                object.__setattr__(self, name, float(v))
            else:
                arr = np.broadcast_to(v, shape).copy()
                arr.flags.writeable = False
                object.__setattr__(self, name, arr)

    def to_dict(self) -> dict[str, Any]:
        """Plain Python types for JSON (``inf`` stays a float: ``json.dumps`` writes ``Infinity``)."""
        return {f.name: jsonable(getattr(self, f.name)) for f in fields(self)}
