"""The per-sample loss matrix of ``samples.parquet`` and the loss range ``C``, the raw material of the risks.

The "final evaluation step" is the largest ``step`` of ``samples.parquet`` that has rows of both
splits. ``C`` is either given (every loss is then clipped at it: rigorous) or observed (the largest
per-sample loss at that step: a heuristic, labelled so).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from ..runlog import BoundPredictor, RunLogError, Split
from ..validation import check_option
from .quantity import Quantity

__all__ = [
    "LossMatrix",
    "LossRange",
    "choose_loss_range",
    "clip_losses",
    "final_step",
    "loss_matrix",
    "predictor_losses",
]


def final_step(samples: pd.DataFrame) -> int:
    """The last evaluation step of ``samples.parquet`` that has rows of both splits."""
    both = tuple(s.value for s in Split)
    splits = samples.groupby("step")["split"].agg(lambda s: set(s) >= set(both))
    complete = splits[splits]
    if complete.empty:
        raise RunLogError(f"samples.parquet has no step with rows of both splits {both}")
    return int(complete.index.max())


@dataclass(frozen=True)
class LossMatrix:
    """The per-sample losses of one split at one step, aligned by ``sample_id``.

    Attributes
    ----------
    step : int
    split : str
    sample_ids : ndarray, shape (n,)
        Sorted.
    member : ndarray, shape (N, n)
        Loss of member ``r`` (``instance`` order) on each sample.
    member_correct : ndarray of bool, shape (N, n)
    deterministic : ndarray, shape (n,)
    ensemble : ndarray, shape (n,)
    """

    step: int
    split: str
    sample_ids: np.ndarray
    member: np.ndarray
    member_correct: np.ndarray
    deterministic: np.ndarray
    ensemble: np.ndarray
    full: np.ndarray | None = None  # None for runs without full-predictor rows


def loss_matrix(samples: pd.DataFrame, split: str, step: int | None = None) -> LossMatrix:
    """The loss matrix (sample x instance) and the single predictors' losses of one split.

    Parameters
    ----------
    samples : DataFrame
        ``samples.parquet``.
    split : str
        ``"train"`` or ``"test"``.
    step : int, optional
        Evaluation step; default the final one (:func:`final_step`).

    Raises
    ------
    RunLogError
        When the step/split has no rows or a sample lacks a member, deterministic or ensemble row.
    """
    step = final_step(samples) if step is None else int(step)
    rows = samples[(samples["step"] == step) & (samples["split"] == split)]
    where = f"samples.parquet step={step} split={split}"
    if rows.empty:
        raise RunLogError(f"{where} has no rows (steps present: {sorted(samples['step'].unique())})")
    members = rows[rows["predictor"] == "member"]
    loss = members.pivot(index="instance", columns="sample_id", values="loss").sort_index(axis=1)
    correct = members.pivot(index="instance", columns="sample_id", values="correct").sort_index(axis=1)
    ids = loss.columns.to_numpy()
    singles = {}
    for predictor in ("deterministic", "ensemble"):
        single = rows[rows["predictor"] == predictor].set_index("sample_id")["loss"].reindex(ids)
        singles[predictor] = single.to_numpy(dtype=float)
    if loss.empty or loss.isna().to_numpy().any() or any(np.isnan(v).any() for v in singles.values()):
        raise RunLogError(f"{where}: every sample needs one row per member instance and one deterministic "
                          "and one ensemble row")
    full = None
    if (rows["predictor"] == "full").any():
        full = rows[rows["predictor"] == "full"].set_index("sample_id")["loss"].reindex(ids).to_numpy(dtype=float)
        if np.isnan(full).any():
            raise RunLogError(f"{where}: some samples lack their full-predictor row")
    return LossMatrix(step, split, ids, loss.to_numpy(dtype=float), correct.to_numpy(dtype=bool),
                      singles["deterministic"], singles["ensemble"], full)


@dataclass(frozen=True)
class LossRange:
    """The loss range ``C`` of Lemma 4.3 and how it was obtained.

    Attributes
    ----------
    value : float
    rigorous : bool
        True when given: every loss is then clipped at ``C`` (``min(loss, C)``), so the clipped loss
        lies in ``[0, C]`` by construction. False when observed.
    label : str
        ``"clipped"`` or ``"observed (heuristic)"``.
    source : str
    """

    value: float
    rigorous: bool
    label: str
    source: str

    @property
    def clip(self) -> float | None:
        """The clipping level to apply to losses (``None`` when observed: no loss exceeds it anyway)."""
        return self.value if self.rigorous else None

    def quantity(self) -> Quantity:
        """``C`` as a report input (noted as heuristic when observed)."""
        note = "" if self.rigorous else ("heuristic: the largest loss seen, not a bound on unseen losses; "
                                         "cross-entropy is unbounded")
        return Quantity("loss_range", self.value, self.source, note=note)


def choose_loss_range(samples: pd.DataFrame, loss_range: float | None = None,
                      step: int | None = None) -> LossRange:
    """``C`` given (clipped, rigorous) or observed (heuristic), docs/measurement.md.

    Parameters
    ----------
    samples : DataFrame
        ``samples.parquet``.
    loss_range : float, optional
        ``C > 0``. When given, every risk computed with it uses ``min(loss, C)``.
    step : int, optional
        Evaluation step; default the final one. The observed ``C`` is the maximum per-sample loss
        over both splits and all rows (members, deterministic, ensemble) at this step.
    """
    if loss_range is not None:
        if not (math.isfinite(loss_range) and loss_range > 0):
            raise ValueError(f"loss_range C must be a finite number > 0, got {loss_range!r}")
        return LossRange(float(loss_range), True, "clipped", f"argument: losses clipped at C={loss_range:g}")
    step = final_step(samples) if step is None else int(step)
    observed = float(samples.loc[samples["step"] == step, "loss"].max())
    if not observed > 0:
        raise RunLogError(f"samples.parquet step={step}: the largest loss is {observed!r}; an observed "
                          "loss range needs a positive loss (pass loss_range)")
    return LossRange(observed, False, "observed (heuristic)",
                     f"samples.parquet step={step}: max per-sample loss over train and test")


def clip_losses(losses: np.ndarray, clip: float | None) -> np.ndarray:
    """``min(losses, clip)``, or the losses as they are when ``clip`` is None."""
    return losses if clip is None else np.minimum(losses, clip)


def predictor_losses(matrix: LossMatrix, predictor: str, clip: float | None = None) -> np.ndarray:
    """Per-sample loss of a predictor, clipped at ``clip`` when given.

    ``member_mean`` is the mean over members of each member's (clipped) loss, so its mean over
    samples is the mean member risk (the mean over member rows).
    """
    predictor = check_option(BoundPredictor, "predictor", predictor)
    if predictor is BoundPredictor.MEMBER_MEAN:
        return clip_losses(matrix.member, clip).mean(axis=0)
    if predictor is BoundPredictor.FULL:
        if matrix.full is None:
            raise RunLogError(f"samples.parquet step={matrix.step} split={matrix.split} has no full-predictor rows "
                              "(written at the final evaluation by lora-dropout train)")
        return clip_losses(matrix.full, clip)
    return clip_losses(getattr(matrix, predictor.value), clip)  # deterministic or ensemble
