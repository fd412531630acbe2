"""A number a bound uses, with its provenance and uncertainty (`Quantity`), and the error of a table that
lacks a measurement (`MissingMeasurementError`).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ..formulas import Estimate
from ..runlog import TABLES, RunLogError, jsonable

__all__ = [
    "MissingMeasurementError",
    "Quantity",
]


class MissingMeasurementError(RunLogError):
    """A table is present but lacks the row a computation needs; the message names it and its producer."""

    def __init__(self, table: str, what: str, present: str, run_dir: str | Path | None = None,
                 producer_options: str = ""):
        spec = TABLES[table]
        self.table = table
        producer = spec.producer if run_dir is None else spec.producer.replace("RUN_DIR", str(run_dir))
        producer += producer_options
        super().__init__(f"{spec.filename} has no {what} (present: {present or 'nothing'}); "
                         f"produce it with: {producer}")


@dataclass(frozen=True)
class Quantity:
    """A number a bound uses, with where it came from and, where defined, its uncertainty.

    Attributes
    ----------
    name : str
        Symbol in the code's naming (docs/method.md, "Notation"), e.g. ``r_hat``, ``lipschitz``.
    value : float
    source : str
        Table, selection and step it was read or computed from, or ``"argument"``/``"config"``.
    stderr, ci_low, ci_high : float
        Uncertainty; NaN where none is defined.
    n : int or None
        Observations behind the value, where meaningful.
    note : str
        Caveats (e.g. "heuristic").
    """

    name: str
    value: float
    source: str
    stderr: float = math.nan
    ci_low: float = math.nan
    ci_high: float = math.nan
    n: int | None = None
    note: str = ""

    @classmethod
    def of(cls, name: str, estimate: Estimate, source: str, note: str = "") -> Quantity:
        """A quantity from an `Estimate` (mean, standard error, t-interval)."""
        return cls(name, estimate.value, source, estimate.stderr, estimate.ci_low, estimate.ci_high,
                   estimate.n, note)

    def to_dict(self) -> dict[str, Any]:
        """Strict-JSON-ready (non-finite numbers become ``None``)."""
        return jsonable(asdict(self))
