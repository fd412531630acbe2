"""How a claim is decided: the verdict, the rule the report prints (`VERDICT_RULE`), the paired 95%
t-intervals over seeds that decide comparative claims, and the per-seed series of summary quantities
they are computed on (`analysis.claims` holds the claims themselves).

Each check returns a `Claim` with a `Verdict`:

- ``held`` / ``did not hold``: decided by the evidence. A comparative claim (one configuration
  against another, e.g. LoRA Dropout against LoRA) is decided only when the paired 95% t-interval
  over seeds of the difference excludes 0; the sign of the difference then decides.
- ``inconclusive``: measured, but the evidence cannot decide: one seed (no interval), a paired
  interval that contains 0, or a bound that is vacuous everywhere (it bounds nothing).
- ``not evaluable``: the study does not measure it (no such runs or probes).

Nothing is tuned to pass: the rule is the same for every claim and is printed in the report
(`VERDICT_RULE`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import Enum

import numpy as np
import pandas as pd

from bounds.formulas import estimate_mean

from .summary import select

#: The decision rule, as the report prints it.
VERDICT_RULE = (
    "A comparative claim is decided only when the paired 95% t-interval over seeds of the difference "
    "excludes 0 (then its sign decides); with one seed, or an interval that contains 0, it is inconclusive. "
    "A claim about a single measurement per run (a theorem's inequality, a premise) is decided by that "
    "measurement; a bound that is vacuous on every run bounds nothing and is inconclusive. "
    "Not evaluable: the study does not measure it.")


class Verdict(str, Enum):
    HELD = "held"
    NOT_HELD = "did not hold"
    INCONCLUSIVE = "inconclusive"
    NOT_EVALUABLE = "not evaluable"


@dataclass(frozen=True)
class Claim:
    name: str
    statement: str
    verdict: Verdict
    evidence: str


@dataclass(frozen=True)
class Paired:
    """Mean of paired differences over seeds with its 95% t-interval (``low``/``high`` NaN for one seed)."""

    mean: float
    low: float
    high: float
    n: int

    def sign(self) -> int:
        """+1 / -1 when the interval excludes 0 on that side, 0 when it cannot decide (one seed, 0 inside)."""
        if self.n < 2 or not (self.low > 0 or self.high < 0):
            return 0
        return 1 if self.low > 0 else -1

    def text(self) -> str:
        if self.n == 0:
            return "no common seeds"
        if self.n == 1:
            return f"difference {self.mean:+.4f} (one seed: no interval)"
        side = "excludes 0" if self.sign() else "includes 0"
        return f"paired difference {self.mean:+.4f}, 95% interval [{self.low:+.4f}, {self.high:+.4f}] ({side}, {self.n} seeds)"


def t_interval(values) -> tuple[float, float, float]:
    """Mean and two-sided 95% t-interval of ``values`` (`bounds.formulas.estimate_mean`); NaN bounds for one
    value (or a non-finite one), the point itself when the values do not differ beyond rounding."""
    v = np.asarray(values, dtype=float)
    if v.size < 2:
        return (float(v.mean()) if v.size else math.nan), math.nan, math.nan
    if np.ptp(v) <= 8 * np.finfo(float).eps * max(1.0, float(np.abs(v).max())):
        # no spread beyond rounding: the interval is the point (a t-interval of rounding noise would be a
        # tiny interval around the mean whose side of 0 is chance)
        return float(v.mean()), float(v.mean()), float(v.mean())
    if not np.isfinite(v).all():
        return float(v.mean()), math.nan, math.nan
    e = estimate_mean(v)
    return e.value, e.ci_low, e.ci_high


def paired(a: pd.Series, b: pd.Series) -> Paired:
    """Paired difference ``a - b`` over the seeds both have (series indexed by seed)."""
    common = a.index.intersection(b.index)
    mean, low, high = t_interval((a[common] - b[common]).to_numpy())
    return Paired(mean, low, high, len(common))


def decide(diff: Paired, want: int) -> Verdict:
    """Verdict of a claim that the difference has sign ``want`` (+1 or -1)."""
    s = diff.sign()
    if s == 0:
        return Verdict.INCONCLUSIVE
    return Verdict.HELD if s == want else Verdict.NOT_HELD


# -- the evidence: a summary quantity over seeds ------------------------------------------------------


def over_seeds(summary: pd.DataFrame, name: str, report: str | None = None, **where) -> pd.Series:
    """Values of summary quantity ``name`` (of ``report``) by seed, on the rows whose config columns match."""
    sel = select(summary, name, report=report)
    for k, v in where.items():
        sel = sel[sel[k] == v]
    return sel.set_index("seed")["value"].sort_index()


def describe(values: pd.Series) -> str:
    """A per-seed series as the report prints it: the value (one seed) or the mean with its 95% t-interval."""
    if values.empty:
        return "n/a"
    seeds = ", ".join(str(s) for s in values.index)
    if len(values) == 1:
        return f"{values.iloc[0]:.4f} (seed {seeds})"
    mean, low, high = t_interval(values.to_numpy())
    return f"{mean:.4f} [{low:.4f}, {high:.4f}] (95% t-interval over seeds {seeds})"


def by_seed(summary: pd.DataFrame, x: str, name: str, report: str | None = None, **where) -> dict:
    """``{x value: series over seed}`` of a quantity (of ``report``)."""
    sel = select(summary, name, report=report)
    for k, v in where.items():
        sel = sel[sel[k] == v]
    return {key: g.set_index("seed")["value"].sort_index() for key, g in sorted(sel.groupby(x))}
