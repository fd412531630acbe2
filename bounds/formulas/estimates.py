"""Measured quantities with their uncertainty: `Estimate` and `estimate_mean`, the one Student-t interval
of the project (the estimators of `bounds` and the tables of `analysis` all call it)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import stats

from ..validation import check_array

__all__ = [
    "Estimate",
    "estimate_mean",
]


@dataclass(frozen=True)
class Estimate:
    """A measured quantity with its uncertainty: mean, standard error and a two-sided t-interval.

    Attributes
    ----------
    value : float
        Point estimate (the sample mean).
    stderr : float
        Standard error of ``value``.
    ci_low, ci_high : float
        Confidence interval at level ``confidence``.
    n : int
        Number of observations behind the estimate.
    confidence : float
        Level of the interval.
    """

    value: float
    stderr: float
    ci_low: float
    ci_high: float
    n: int
    confidence: float = 0.95

    def to_dict(self) -> dict[str, Any]:
        """Plain Python types for JSON."""
        return dataclasses.asdict(self)


def estimate_mean(values: np.ndarray, confidence: float = 0.95) -> Estimate:
    """Mean of independent observations with its standard error and Student-t interval.

    ``stderr = std(values, ddof=1) / sqrt(n)``; the interval is
    ``mean -/+ t_{(1 + confidence)/2, n - 1} * stderr``.

    Parameters
    ----------
    values : ndarray, shape (n,)
        At least two finite observations.
    confidence : float
        Level of the interval, in (0, 1).

    Returns
    -------
    Estimate

    Examples
    --------
    >>> e = estimate_mean(np.array([1.0, 2.0, 3.0, 4.0]))
    >>> print(f"{e.value} +/- {e.stderr:.4f}, 95% CI [{e.ci_low:.4f}, {e.ci_high:.4f}]")
    2.5 +/- 0.6455, 95% CI [0.4457, 4.5543]
    """
    x = check_array("values", values)
    conf = float(check_array("confidence", confidence, low=0.0, high=1.0, open_low=True, open_high=True))
    if x.ndim != 1 or x.size < 2:
        raise ValueError(
            f"values must be 1-D with at least 2 entries for a standard error, got shape {x.shape}"
        )
    n = x.size
    mean = float(x.mean())
    stderr = float(x.std(ddof=1) / np.sqrt(n))
    half = float(stats.t.ppf(0.5 + conf / 2.0, df=n - 1)) * stderr
    return Estimate(value=mean, stderr=stderr, ci_low=mean - half, ci_high=mean + half, n=n, confidence=conf)
