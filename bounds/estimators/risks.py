"""Train and test risk of a predictor (docs/measurement.md): ``R_hat`` and the test-risk estimate of ``R``.

The train split of ``samples.parquet`` is the run's *evaluation* subset of the training set
(``--eval-train-size``), so ``R_hat`` is itself an estimate of the mean loss over all ``n`` training
examples; its standard error is reported with it.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from ..formulas import Estimate, estimate_mean
from .losses import LossMatrix, LossRange, choose_loss_range, final_step, loss_matrix, predictor_losses

__all__ = [
    "Risks",
    "estimate_risks",
    "risks_of",
]


@dataclass(frozen=True)
class Risks:
    """Train and test risk of one predictor at one step.

    Attributes
    ----------
    predictor : str
    step : int
    loss_range : LossRange
        ``C``; the risks are of ``min(loss, C)`` when ``loss_range.rigorous``.
    train, test : Estimate
        Mean over the split's samples with its standard error (samples as independent draws).
    """

    predictor: str
    step: int
    loss_range: LossRange
    train: Estimate
    test: Estimate

    @property
    def gap(self) -> float:
        """Measured generalisation gap ``R - R_hat`` (test risk minus train risk)."""
        return self.test.value - self.train.value

    def source(self, split: str) -> str:
        """Where the risk of ``split`` comes from, for a report's inputs."""
        clipped = f", clipped at C={self.loss_range.value:g}" if self.loss_range.rigorous else ""
        rows = "mean over member rows" if self.predictor == "member_mean" else f"{self.predictor} rows"
        return f"samples.parquet step={self.step} split={split}: {rows}{clipped}"


def estimate_risks(samples: pd.DataFrame, predictor: str = "deterministic", *,
                   loss_range: float | None = None, step: int | None = None,
                   confidence: float = 0.95) -> Risks:
    """``R_hat`` (train) and the test-risk estimate of ``R`` of one predictor (docs/measurement.md).

    Parameters
    ----------
    samples : DataFrame
        ``samples.parquet``.
    predictor : str
        ``deterministic``, ``member_mean`` (mean over member rows) or ``ensemble``.
    loss_range : float, optional
        ``C``: clip every loss at ``C`` (rigorous). Default: observed range, no clipping (heuristic).
    step : int, optional
        Default: the final evaluation step.
    confidence : float
        Level of the t-intervals.

    Returns
    -------
    Risks

    Examples
    --------
    >>> import pandas as pd
    >>> rows = [dict(step=0, split=sp, sample_id=i, predictor=pr, instance=-1, loss=l, correct=True,
    ...              confidence=0.9)
    ...         for sp, losses in (("train", [0.5, 3.0]), ("test", [1.0, 2.0]))
    ...         for i, l in enumerate(losses) for pr in ("deterministic", "ensemble")]
    >>> rows += [dict(r, predictor="member", instance=0) for r in rows if r["predictor"] == "ensemble"]
    >>> r = estimate_risks(pd.DataFrame(rows), loss_range=2.0)  # train: (0.5 + min(3, 2)) / 2
    >>> r.train.value, r.test.value, r.gap
    (1.25, 1.5, 0.25)
    """
    step = final_step(samples) if step is None else int(step)
    c = choose_loss_range(samples, loss_range, step)
    return risks_of(loss_matrix(samples, "train", step), loss_matrix(samples, "test", step), predictor, c,
                    confidence)


def risks_of(train: LossMatrix, test: LossMatrix, predictor: str, loss_range: LossRange,
             confidence: float = 0.95) -> Risks:
    """:func:`estimate_risks` from loss matrices already built (one step, both splits)."""
    estimates = (estimate_mean(predictor_losses(m, predictor, loss_range.clip), confidence)
                 for m in (train, test))
    return Risks(predictor, train.step, loss_range, *estimates)
