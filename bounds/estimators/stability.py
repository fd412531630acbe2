"""The measured pointwise hypothesis stability ``beta_hat`` of ``stability.parquet`` (Def. 4.1, Prop. 4.2).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ..formulas import Estimate, estimate_mean
from ..runlog import StabilityMethod
from .losses import clip_losses
from .quantity import MissingMeasurementError

__all__ = [
    "StabilityEstimate",
    "estimate_stability",
    "stability_methods",
]


def stability_methods(stability: pd.DataFrame) -> list[str]:
    """Methods present in ``stability.parquet``, most trustworthy first (`bounds.runlog.StabilityMethod`'s
    order), then any unknown ones sorted."""
    present = set(stability["method"])
    known = [m.value for m in StabilityMethod]
    return [m for m in known if m in present] + sorted(present - set(known))


@dataclass(frozen=True)
class StabilityEstimate:
    """Measured pointwise hypothesis stability of one leave-one-out method (Def. 4.1).

    Attributes
    ----------
    method : str
    beta_hat : Estimate
        Mean over the ``k`` removed indices of ``|loss_si - loss_s|`` with standard error and
        t-interval (:func:`bounds.formulas.estimate_mean`); the indices are a random subset, so this
        estimates ``E_i`` for the one training set ``S`` of the run (not ``E_S``).
    max_change : float
        ``max_i |loss_si - loss_s|``: the plug-in for a *uniform* stability (B&E Thm 12). The maximum
        over ``k`` sampled indices can only under-estimate the supremum the theorem needs.
    param_distance_max : float
        ``max_i ||theta(S^i) - theta(S)||`` (NaN when the method records none).
    param_distance_mean : float
    clipped_at : float or None
        The losses were clipped at this ``C`` before differencing (``min(., C)`` is 1-Lipschitz, so
        clipping can only lower ``beta_hat``: it is the stability of the clipped loss Lemma 4.3 needs).
    """

    method: str
    beta_hat: Estimate
    max_change: float
    param_distance_max: float
    param_distance_mean: float
    clipped_at: float | None

    @property
    def source(self) -> str:
        clipped = "" if self.clipped_at is None else f", losses clipped at C={self.clipped_at:g}"
        return f"stability.parquet method={self.method}: |loss_si - loss_s| over k={self.beta_hat.n}{clipped}"


def estimate_stability(stability: pd.DataFrame, method: str, *, loss_range: float | None = None,
                       confidence: float = 0.95, run_dir: str | Path | None = None) -> StabilityEstimate:
    """``beta_hat`` of one method: mean ``|loss_si - loss_s|`` with its uncertainty (Def. 4.1, Prop. 4.2).

    Parameters
    ----------
    stability : DataFrame
        ``stability.parquet``.
    method : str
        ``retrain``, ``warm_start`` or ``influence``.
    loss_range : float, optional
        Clip both losses at ``C`` first.
    confidence : float
        Level of the t-interval.
    run_dir : path, optional
        Used in the error message's producer command.

    Examples
    --------
    >>> import pandas as pd
    >>> t = pd.DataFrame(dict(sample_id=[0, 1, 2], method="retrain", loss_s=[0.1, 0.2, 0.3],
    ...                       loss_si=[0.2, 0.1, 0.6], param_distance=[0.01, 0.02, 0.03], wall_s=1.0))
    >>> e = estimate_stability(t, "retrain")  # |changes| = 0.1, 0.1, 0.3
    >>> round(e.beta_hat.value, 12), round(e.max_change, 12)
    (0.166666666667, 0.3)
    """
    rows = stability[stability["method"] == method]
    if rows.empty:
        raise MissingMeasurementError("stability", f"rows of method={method}",
                                      ", ".join(stability_methods(stability)), run_dir)
    loss_s = clip_losses(rows["loss_s"].to_numpy(dtype=float), loss_range)
    loss_si = clip_losses(rows["loss_si"].to_numpy(dtype=float), loss_range)
    change = np.abs(loss_si - loss_s)
    distance = rows["param_distance"].to_numpy(dtype=float)
    distance = distance[np.isfinite(distance)]
    return StabilityEstimate(
        method=method,
        beta_hat=estimate_mean(change, confidence),
        max_change=float(change.max()),
        param_distance_max=float(distance.max()) if distance.size else math.nan,
        param_distance_mean=float(distance.mean()) if distance.size else math.nan,
        clipped_at=loss_range,
    )
