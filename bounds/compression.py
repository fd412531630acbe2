"""Ensemble compression: risk and Jensen gap of the test-time ensemble as a function of its size.

For ``N_test = 1..N`` (the first ``N_test`` members of the per-sample table, in ``instance`` order),
on the train and the test split: the sub-ensemble's risk, its members' mean risk, the Jensen gap of
Theorem 4.5 between them with a confidence interval, and the bound on the ensemble's risk that
Theorems 4.4 and 4.5 give together (:func:`bounds.formulas.ensemble_risk_bound`).

With probability averaging (``ensemble_average="probs"``, Eq. 8) a sub-ensemble needs only its
members' losses: member ``r``'s probability of the true class is ``exp(-loss_r)``, the ensemble's is
their mean, so its cross-entropy is ``-log(mean_{r<k} exp(-loss_r))``, computed stably with a
log-sum-exp. With logit averaging the ensemble's probability is not a function of the members'
losses, so only the run's own ``N`` (the ensemble rows) is available.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from .formulas import ensemble_risk_bound, estimate_jensen_gap
from .inputs import RunInputs
from .runlog import RunLogError
from .settings import BoundSettings

__all__ = ["COLUMNS", "ensemble_compression", "subensemble_losses"]

#: Columns of :func:`ensemble_compression`'s result.
COLUMNS = (
    "run_id", "step", "split", "n_members", "average", "source", "ensemble_risk", "member_risk",
    "jensen_gap", "jensen_gap_stderr", "jensen_gap_ci_low", "jensen_gap_ci_high", "n_samples",
    "bound", "bound_vacuous", "bound_reason",
)


def subensemble_losses(member_losses: np.ndarray) -> np.ndarray:
    """Cross-entropy of every prefix sub-ensemble under probability averaging (Eq. 8, Thm 4.5).

    ``out[k - 1, i] = -log((1/k) sum_{r<k} exp(-member_losses[r, i]))``: member ``r``'s probability of
    the true class is ``exp(-loss)``, and the sub-ensemble of the first ``k`` members averages those
    probabilities. Computed as ``log k - logsumexp_{r<k}(-loss_r)`` with a running log-add-exp, so no
    probability underflows. Holds for ``average="probs"`` only; it needs no logits.

    Parameters
    ----------
    member_losses : ndarray, shape (N, n_samples)

    Returns
    -------
    ndarray, shape (N, n_samples)
        Row ``k - 1`` is the loss of the first ``k`` members' ensemble; row 0 equals member 0's loss.

    Examples
    --------
    >>> losses = -np.log(np.array([[0.2], [0.8]]))  # true-class probabilities 0.2 and 0.8
    >>> np.exp(-subensemble_losses(losses)).round(6)  # sub-ensemble probabilities 0.2, then 0.5
    array([[0.2],
           [0.5]])
    """
    losses = np.asarray(member_losses, dtype=float)
    if losses.ndim != 2 or losses.size == 0:
        raise ValueError(f"member_losses must have shape (N, n_samples) with N, n_samples >= 1, "
                         f"got {losses.shape}")
    k = np.arange(1, losses.shape[0] + 1, dtype=float)[:, None]
    return np.log(k) - np.logaddexp.accumulate(-losses, axis=0)


def ensemble_compression(
    run_dir: str | Path,
    settings: BoundSettings | None = None,
    *,
    step: int | None = None,
    confidence: float = 0.95,
) -> pd.DataFrame:
    """Risk, Jensen gap and Thm 4.4 + 4.5 bound of the test-time ensemble for every size ``N_test``.

    Parameters
    ----------
    run_dir : path
        A run directory; needs ``samples.parquet``, and ``probes.parquet`` for the bound.
    settings : BoundSettings, optional
        ``delta``, ``lam``, ``lipschitz`` and ``space`` as in :func:`bounds.report.evaluate_run` (the probes
        of the unmasked model). ``loss_range`` is ``C``: given, member and ensemble losses are clipped at
        ``C`` after the ensemble is formed from the unclipped probabilities (a clipped cross-entropy is not
        convex, so the Jensen gap may then be negative); default the observed maximum loss (heuristic), no
        clipping. Default ``BoundSettings()``.
    step : int, optional
        Evaluation step; default the final one.
    confidence : float
        Level of the Jensen-gap t-interval.

    Returns
    -------
    DataFrame
        One row per (split, ``n_members``) with `COLUMNS`: ``ensemble_risk`` and ``member_risk`` (mean over
        the first ``n_members`` members) on the split, ``jensen_gap`` = ``member_risk - ensemble_risk``
        with its standard error and interval over samples (:func:`bounds.formulas.estimate_jensen_gap`),
        and, on the test rows (what it bounds), ``bound`` = :func:`bounds.formulas.ensemble_risk_bound`
        at the same sub-ensemble's member training risk (NaN on train rows and without probes; the
        ``bound_reason`` then says why). ``source`` says whether the ensemble loss was recomputed from
        member losses (``probs``) or read from the ensemble rows (``logits``: only the run's ``N``).
    """
    settings = BoundSettings() if settings is None else settings
    inputs = RunInputs(run_dir, settings, step=step)
    step, c, average = inputs.step, inputs.loss_range, inputs.ensemble_average
    n_train, p = inputs.n.value, inputs.p.value
    try:
        curvature = (inputs.lipschitz.value, inputs.hessian_min_eig.value)
        missing = ""
    except RunLogError as exc:
        curvature, missing = None, f"no bound: {exc}"

    def clipped(losses: np.ndarray) -> np.ndarray:
        return losses if c.clip is None else np.minimum(losses, c.clip)

    rows = []
    train_member_risk: dict[int, float] = {}
    for split in ("train", "test"):  # train first: the test rows' bound uses the train member risk
        m = inputs.matrix(split)
        if average == "probs":
            sizes = range(1, m.member.shape[0] + 1)
            ensembles = subensemble_losses(m.member)
            source = "recomputed from member losses (probs)"
        else:
            sizes = [m.member.shape[0]]
            ensembles = m.ensemble[None, :]
            source = f"ensemble rows ({average}: only the run's N)"
        for k, ensemble_k in zip(sizes, ensembles, strict=True):
            member, ensemble = clipped(m.member[:k]), clipped(ensemble_k)
            gap = estimate_jensen_gap(member, ensemble, confidence)
            row = {
                "run_id": inputs.run_id, "step": step, "split": split, "n_members": k, "average": average,
                "source": source, "ensemble_risk": float(ensemble.mean()),
                "member_risk": float(member.mean()),
                "jensen_gap": gap.value, "jensen_gap_stderr": gap.stderr, "jensen_gap_ci_low": gap.ci_low,
                "jensen_gap_ci_high": gap.ci_high, "n_samples": gap.n,
                "bound": math.nan, "bound_vacuous": None, "bound_reason": missing or "bounds the test risk",
            }
            if split == "train":
                train_member_risk[k] = row["member_risk"]
            elif curvature is not None:
                b = ensemble_risk_bound(train_member_risk[k], c.value, *curvature, settings.lam, p, n_train,
                                        settings.delta)
                row.update(bound=b.value, bound_vacuous=b.vacuous, bound_reason=b.reason)
            rows.append(row)
    return pd.DataFrame(rows, columns=list(COLUMNS))
