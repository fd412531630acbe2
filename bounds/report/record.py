"""`BoundReport`: a bound evaluated on a run, next to the measurement it is held against.

A small frozen record (docs/architecture.md, "The run directory"): name, run id, value, the measured quantity it is held
against, its additive terms, its inputs (`bounds.estimators.Quantity`, each with its source), the
assumptions checked with their measured status (`bounds.assumptions.Assumption`), and the theorem it
cites; printed (`str`), tidy (`BoundReport.to_frame`) or strict JSON (`BoundReport.to_dict`). Three
things are kept apart:

- *vacuous*: the arithmetic has no finite value (e.g. ``D = Lambda_min + 2 lam s <= 0``); value ``inf``;
- an *assumption* that fails (e.g. a negative ``Lambda_min`` breaks Prop. 4.2's PSD premise even when
  ``D > 0``): the value is still computed and the report's `status` says ``assumptions fail``;
- *not evaluable*: a table or measurement is missing; the reason names the command producing it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import pandas as pd

from ..assumptions import Assumption
from ..estimators import Quantity
from ..inputs import number_text
from ..runlog import jsonable

__all__ = ["FRAME_COLUMNS", "BoundReport"]

#: Columns of `BoundReport.to_frame`.
FRAME_COLUMNS = ("report", "run_id", "kind", "name", "value", "stderr", "ci_low", "ci_high", "threshold",
                 "holds", "source")


@dataclass(frozen=True)
class BoundReport:
    """A bound evaluated on a run, next to the measurement it is held against (docs/architecture.md, "The run directory").

    Attributes
    ----------
    name : str
        ``prop42[<method>]``, ``lemma43``, ``theorem44``, ``uniform_stability`` or ``ensemble``.
    run_id : str
    theorem : str
        The result it cites.
    value : float
        The bound: on the risk ``R`` for the risk bounds, on ``beta`` for Prop. 4.2; ``inf`` when
        vacuous, NaN when not evaluable.
    measured : float
        The measured quantity the bound is held against: the gap ``R - R_hat`` (test risk minus train
        risk of the predictor, of the clipped loss when ``C`` is given) for risk bounds, ``beta_hat``
        for Prop. 4.2; NaN when not evaluable.
    measured_name : str
    bound_on_measured : float
        The part of ``value`` that bounds ``measured``: ``value - R_hat`` for risk bounds (the sum of
        the terms other than ``r_hat``), ``value`` for Prop. 4.2.
    terms : mapping of str to float
        Additive terms of ``value``.
    inputs : tuple of Quantity
        Every number used, with its source.
    assumptions : tuple of Assumption
        The audit; the last one is always ``measured_below_bound``.
    diagnostics : tuple of Quantity
        Related measurements shown alongside but not used in ``value`` (e.g. ``lam_eff``).
    vacuous : bool
    evaluable : bool
    reason : str
        Why vacuous or not evaluable; ``""`` otherwise.
    """

    name: str
    run_id: str
    theorem: str
    value: float
    measured: float
    measured_name: str
    bound_on_measured: float
    terms: Mapping[str, float] = field(default_factory=dict)
    inputs: tuple[Quantity, ...] = ()
    assumptions: tuple[Assumption, ...] = ()
    diagnostics: tuple[Quantity, ...] = ()
    vacuous: bool = False
    evaluable: bool = True
    reason: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "terms", MappingProxyType(dict(self.terms)))
        for name in ("inputs", "assumptions", "diagnostics"):
            object.__setattr__(self, name, tuple(getattr(self, name)))

    @classmethod
    def not_evaluable(cls, name: str, run_id: str, theorem: str, reason: str,
                      inputs: tuple[Quantity, ...] = ()) -> BoundReport:
        """A report that could not be computed, with the reason (e.g. a missing table and its producer)."""
        return cls(name, run_id, theorem, math.nan, math.nan, "", math.nan, inputs=inputs, evaluable=False,
                   reason=reason)

    @property
    def assumptions_hold(self) -> bool | None:
        """False if any assumption fails, None if none fails but some are not measurable, else True."""
        holds = [a.holds for a in self.assumptions]
        if False in holds:
            return False
        return None if None in holds else True

    @property
    def status(self) -> str:
        """``not evaluable``, ``vacuous``, ``violated`` (measured above the bound), ``assumptions fail``,
        ``unverified`` (some assumption not measurable) or ``holds``."""
        if not self.evaluable:
            return "not evaluable"
        if self.vacuous:
            return "vacuous"
        if any(a.name == "measured_below_bound" and a.holds is False for a in self.assumptions):
            return "violated"
        return {False: "assumptions fail", None: "unverified", True: "holds"}[self.assumptions_hold]

    def __str__(self) -> str:
        lines = [f"{self.name} [{self.status}] run {self.run_id}: {self.theorem}"]
        if not self.evaluable:
            return "\n".join([*lines, f"  not evaluable: {self.reason}"])
        terms = " + ".join(f"{k} {number_text(v)}" for k, v in self.terms.items())
        lines.append(f"  bound {number_text(self.value)} = {terms}"
                     + (f"  (vacuous: {self.reason})" if self.vacuous else ""))
        lines.append(f"  measured {self.measured_name} = {number_text(self.measured)}"
                     f"  vs bound {number_text(self.bound_on_measured)}")
        for q in self.inputs + self.diagnostics:
            kind = "input" if q in self.inputs else "diagnostic"
            err = "" if math.isnan(q.stderr) else f" +/- {q.stderr:.3g}"
            lines.append(f"  {kind:<10} {q.name:<20} {number_text(q.value) + err:<24} {q.source}"
                         + (f" [{q.note}]" if q.note else ""))
        for a in self.assumptions:
            holds = {True: "holds", False: "FAILS", None: "n/a"}[a.holds]
            lines.append(f"  assume     {a.name:<20} {holds:<6} measured {number_text(a.measured)}, "
                         f"threshold {number_text(a.threshold)}: {a.detail}")
        return "\n".join(lines)

    def to_frame(self) -> pd.DataFrame:
        """Tidy table: one row for the value, the measurement, each term, input, diagnostic and assumption.

        Columns `FRAME_COLUMNS`: ``report, run_id, kind, name, value, stderr, ci_low, ci_high, threshold,
        holds, source`` (``source`` holds an input's source or an assumption's detail); ``kind`` is one of
        ``value``, ``measured``, ``term``, ``input``, ``diagnostic``, ``assumption``.
        """
        nan = math.nan
        base = dict(stderr=nan, ci_low=nan, ci_high=nan, threshold=nan, holds=None)
        rows = [
            {**base, "kind": "value", "name": self.name, "value": self.value,
             "source": self.reason or self.status},
            {**base, "kind": "measured", "name": self.measured_name, "value": self.measured,
             "threshold": self.bound_on_measured, "source": "held against bound_on_measured"},
        ]
        rows += [{**base, "kind": "term", "name": k, "value": v, "source": ""} for k, v in self.terms.items()]
        for kind, quantities in (("input", self.inputs), ("diagnostic", self.diagnostics)):
            rows += [{**base, "kind": kind, "name": q.name, "value": q.value, "stderr": q.stderr,
                      "ci_low": q.ci_low, "ci_high": q.ci_high,
                      "source": q.source + (f" [{q.note}]" if q.note else "")} for q in quantities]
        rows += [{**base, "kind": "assumption", "name": a.name, "value": a.measured, "threshold": a.threshold,
                  "holds": a.holds, "source": a.detail} for a in self.assumptions]
        frame = pd.DataFrame(rows, columns=list(FRAME_COLUMNS[2:]))
        frame.insert(0, "run_id", self.run_id)
        frame.insert(0, "report", self.name)
        return frame

    def to_dict(self) -> dict[str, Any]:
        """Strict-JSON-ready dict (``inf``/NaN become ``None``; ``vacuous``/``evaluable`` say why)."""
        return jsonable({
            "name": self.name, "run_id": self.run_id, "theorem": self.theorem, "status": self.status,
            "value": self.value, "measured": self.measured, "measured_name": self.measured_name,
            "bound_on_measured": self.bound_on_measured, "vacuous": self.vacuous, "evaluable": self.evaluable,
            "reason": self.reason, "terms": dict(self.terms),
            "inputs": [q.to_dict() for q in self.inputs],
            "assumptions": [a.to_dict() for a in self.assumptions],
            "diagnostics": [q.to_dict() for q in self.diagnostics],
        })
