"""Per-sample quantities of the loss matrix: the mask-induced perturbation, the Jensen gap of Theorem 4.5
and the members' disagreement, one row per ``sample_id``.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..formulas import per_sample_jensen_gap
from .losses import loss_matrix

__all__ = [
    "per_sample_diversity",
    "per_sample_jensen_gap_table",
    "per_sample_perturbation",
]


def per_sample_perturbation(samples: pd.DataFrame, step: int | None = None,
                            split: str = "test") -> pd.DataFrame:
    """Mask-induced loss perturbation per sample.

    Returns
    -------
    DataFrame indexed by ``sample_id`` with columns

    - ``n_members``: ``N``;
    - ``member_loss_std``: standard deviation (``ddof=1``) of the member losses, the spread across
      instances (NaN when ``N = 1``);
    - ``member_minus_deterministic``: mean member loss minus the deterministic predictor's loss (the
      per-sample numerator of :func:`estimate_lam_eff`).
    """
    m = loss_matrix(samples, split, step)
    n_members = m.member.shape[0]
    spread = m.member.std(axis=0, ddof=1) if n_members > 1 else np.full(m.sample_ids.shape, np.nan)
    return pd.DataFrame(
        {"n_members": n_members, "member_loss_std": spread,
         "member_minus_deterministic": m.member.mean(axis=0) - m.deterministic},
        index=pd.Index(m.sample_ids, name="sample_id"),
    )


def per_sample_jensen_gap_table(samples: pd.DataFrame, step: int | None = None,
                                split: str = "test") -> pd.DataFrame:
    """Measured Jensen gap of Theorem 4.5 per sample, from the samples table.

    Returns
    -------
    DataFrame indexed by ``sample_id`` with ``member_mean_loss``, ``ensemble_loss`` and ``jensen_gap``
    (:func:`bounds.formulas.per_sample_jensen_gap`: mean member loss minus the ensemble's loss;
    ``>= 0`` for a convex loss, not clamped).
    """
    m = loss_matrix(samples, split, step)
    return pd.DataFrame(
        {"member_mean_loss": m.member.mean(axis=0), "ensemble_loss": m.ensemble,
         "jensen_gap": per_sample_jensen_gap(m.member, m.ensemble)},
        index=pd.Index(m.sample_ids, name="sample_id"),
    )


def per_sample_diversity(samples: pd.DataFrame, n_classes: int, step: int | None = None,
                         split: str = "test") -> pd.DataFrame:
    """Member diversity per sample: the fraction of members that disagree with the members' majority.

    The samples table records, per member, only whether its argmax prediction is right (``correct``)
    and the probability of its predicted class (``confidence``), not the predicted class itself.
    From ``q`` = the fraction of correct members we compute

        disagreement = min(q, 1 - q)

    which is exact for binary tasks (the predicted class is the label when correct and the other
    class when not, so the majority is the more frequent of the two) and for any task when
    ``q > 1/2`` (the majority class is then the label). Otherwise, with three or more classes, the
    wrong members may split among several classes and the true value lies in ``[min(q, 1 - q), 1 - q]``;
    ``exact`` says which rows are exact. ``confidence`` is not used: it does not name the class, and for
    binary tasks ``correct`` already determines it. This is not the fraction of member pairs whose
    correctness differs.

    Parameters
    ----------
    samples : DataFrame
        ``samples.parquet``.
    n_classes : int
        Number of classes (``len(RunMeta.label_names)``).
    step : int, optional
        Default: the final evaluation step.
    split : str

    Returns
    -------
    DataFrame indexed by ``sample_id`` with ``n_members``, ``member_accuracy`` (``q``),
    ``disagreement`` and ``exact``.
    """
    if n_classes < 2:
        raise ValueError(f"n_classes must be >= 2, got {n_classes!r}")
    m = loss_matrix(samples, split, step)
    q = m.member_correct.mean(axis=0)
    return pd.DataFrame(
        {"n_members": m.member.shape[0], "member_accuracy": q, "disagreement": np.minimum(q, 1.0 - q),
         "exact": (n_classes == 2) | (q > 0.5)},
        index=pd.Index(m.sample_ids, name="sample_id"),
    )
