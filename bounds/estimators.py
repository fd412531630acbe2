"""Measured inputs of the bounds, estimated from a run directory's tables (theory.md section 3).

Everything here reads tables of the run log (`bounds.runlog`) and returns numbers with their
provenance and, where it is defined, their uncertainty:

- risks ``R_hat`` (train) and ``R`` (test) of each predictor from ``samples.parquet``, with the loss
  range ``C`` either given (the loss is clipped at ``C``: rigorous) or observed (the largest per-sample
  loss at that step: a heuristic, labelled so);
- the Lipschitz constant ``eta``, the curvature ``Lambda_min`` and the stationarity residual from
  ``probes.parquet``;
- the measured pointwise hypothesis stability ``beta_hat`` from ``stability.parquet``;
- the *effective regularisation strength* ``lam_eff`` (this toolkit's own addition, not in the paper);
- per-sample quantities of the loss matrix: the mask-induced perturbation, the Jensen gap of
  Theorem 4.5 and the members' disagreement.

The "final evaluation step" is the largest ``step`` of ``samples.parquet`` that has rows of both
splits. The train split of ``samples.parquet`` is the run's *evaluation* subset of the training set
(``--eval-train-size``), so ``R_hat`` is itself an estimate of the mean loss over all ``n`` training
examples; its standard error is reported with it.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .formulas import Estimate, estimate_mean, per_sample_jensen_gap, sparsity
from .runlog import BOUND_PREDICTORS, HYPOTHESES, SPLITS, TABLES, RunLogError, jsonable

__all__ = [
    "LIPSCHITZ_QUANTITIES",
    "SPACES",
    "STABILITY_METHODS",
    "LossMatrix",
    "LossRange",
    "MissingMeasurementError",
    "Quantity",
    "Risks",
    "StabilityEstimate",
    "choose_loss_range",
    "dw_norm_squared",
    "estimate_lam_eff",
    "estimate_risks",
    "estimate_stability",
    "final_step",
    "loss_matrix",
    "per_sample_diversity",
    "per_sample_jensen_gap_table",
    "per_sample_perturbation",
    "predictor_losses",
    "probe_convergence",
    "probe_lam",
    "probe_quantity",
    "risks_of",
    "stability_methods",
]

#: ``lipschitz`` option -> the ``quantity`` of ``probes.parquet`` that holds it.
LIPSCHITZ_QUANTITIES = {"max": "lipschitz_max", "q99": "lipschitz_q99"}
#: Parameter spaces of the probes: entries of ``dW`` (default) or the LoRA factors ``A``, ``B``.
SPACES = ("delta_w", "factors")
#: Leave-one-out methods of ``stability.parquet``, most trustworthy first (coupled retraining is the
#: measurement; warm start and influence are cheaper cross-checks).
STABILITY_METHODS = ("retrain", "warm_start", "influence")


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
        Symbol in the code's naming (design.md section 2), e.g. ``r_hat``, ``lipschitz``.
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


# --------------------------------------------------------------------------------------------------
# The per-sample loss matrix
# --------------------------------------------------------------------------------------------------


def final_step(samples: pd.DataFrame) -> int:
    """The last evaluation step of ``samples.parquet`` that has rows of both splits."""
    splits = samples.groupby("step")["split"].agg(lambda s: set(s) >= set(SPLITS))
    complete = splits[splits]
    if complete.empty:
        raise RunLogError(f"samples.parquet has no step with rows of both splits {SPLITS}")
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


# --------------------------------------------------------------------------------------------------
# Loss range and risks
# --------------------------------------------------------------------------------------------------


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
    """``C`` given (clipped, rigorous) or observed (heuristic), theory.md section 3.

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


def _clip(losses: np.ndarray, clip: float | None) -> np.ndarray:
    return losses if clip is None else np.minimum(losses, clip)


def predictor_losses(matrix: LossMatrix, predictor: str, clip: float | None = None) -> np.ndarray:
    """Per-sample loss of a predictor, clipped at ``clip`` when given.

    ``member_mean`` is the mean over members of each member's (clipped) loss, so its mean over
    samples is the mean member risk (the mean over member rows).
    """
    if predictor == "member_mean":
        return _clip(matrix.member, clip).mean(axis=0)
    if predictor in ("deterministic", "ensemble"):
        return _clip(getattr(matrix, predictor), clip)
    if predictor == "full":
        if matrix.full is None:
            raise RunLogError(f"samples.parquet step={matrix.step} split={matrix.split} has no full-predictor rows "
                              "(written at the final evaluation by lora-dropout train)")
        return _clip(matrix.full, clip)
    raise ValueError(f"predictor={predictor!r} is not one of {BOUND_PREDICTORS}")


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
    """``R_hat`` (train) and the test-risk estimate of ``R`` of one predictor (theory.md section 3).

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


# --------------------------------------------------------------------------------------------------
# Probes: Lipschitz, curvature, stationarity
# --------------------------------------------------------------------------------------------------


def _probe_row(probes: pd.DataFrame, quantity: str, space: str, hypothesis: str) -> pd.DataFrame:
    """The rows of (quantity, space, hypothesis); a table without ``hypothesis`` holds unmasked rows only."""
    if hypothesis not in HYPOTHESES:
        raise ValueError(f"hypothesis={hypothesis!r} is not one of {HYPOTHESES}")
    hyp = probes["hypothesis"] if "hypothesis" in probes else pd.Series("unmasked", index=probes.index)
    return probes[(probes["quantity"] == quantity) & (probes["space"] == space) & (hyp == hypothesis)]


def probe_quantity(probes: pd.DataFrame, quantity: str, space: str = "delta_w", *, name: str | None = None,
                   run_dir: str | Path | None = None, hypothesis: str = "unmasked") -> Quantity:
    """One measurement of ``probes.parquet`` (``quantity``, ``space``) as a `Quantity`.

    Parameters
    ----------
    probes : DataFrame
        ``probes.parquet``.
    quantity : str
        E.g. ``lipschitz_max``, ``lipschitz_q99``, ``lipschitz_mean``, ``hessian_min_eig``, ``grad_norm``.
    space : str
        ``delta_w`` or ``factors``.
    name : str, optional
        Name of the returned quantity; default ``quantity``.
    run_dir : path, optional
        Used in the error message's producer command.
    hypothesis : {"unmasked", "expected"}
        The predictor the row was measured at (``bounds.runlog.HYPOTHESES``).

    Raises
    ------
    MissingMeasurementError
        When the row is absent.
    """
    if space not in SPACES:
        raise ValueError(f"space={space!r} is not one of {SPACES}")
    row = _probe_row(probes, quantity, space, hypothesis)
    if row.empty:
        hyp = probes["hypothesis"] if "hypothesis" in probes else ["unmasked"] * len(probes)
        present = ", ".join(f"{q}/{s}" + ("" if h == "unmasked" else f"/{h}")
                            for q, s, h in zip(probes["quantity"], probes["space"], hyp, strict=True))
        where = "" if hypothesis == "unmasked" else f" hypothesis={hypothesis}"
        raise MissingMeasurementError("probes", f"row quantity={quantity} space={space}{where}", present, run_dir,
                                      "" if hypothesis == "unmasked" else f" --hypothesis {hypothesis}")
    r = row.iloc[0]
    stderr = float(r["stderr"]) if pd.notna(r["stderr"]) else math.nan
    lam = "" if pd.isna(r["lam"]) else f", lam={float(r['lam']):g}"
    at = "" if hypothesis == "unmasked" else f" hypothesis={hypothesis}"
    source = (f"probes.parquet quantity={quantity} space={space}{at} "
              f"(iterations={int(r['iterations'])}, n={int(r['n'])}{lam})")
    return Quantity(name or quantity, float(r["value"]), source, stderr=stderr, n=int(r["n"]))


def probe_convergence(probes: pd.DataFrame, quantity: str, space: str,
                      hypothesis: str = "unmasked") -> tuple[bool | None, float]:
    """``(converged, residual)`` of a probe row: did Lanczos reach its tolerance, and its residual.

    ``converged`` is None when the table does not record it (a ``probes.parquet`` written before the
    ``converged`` column) or the row is absent; ``residual`` is NaN where not recorded.
    """
    row = _probe_row(probes, quantity, space, hypothesis)
    if row.empty:
        return None, math.nan
    residual = float(row["residual"].iloc[0]) if pd.notna(row["residual"].iloc[0]) else math.nan
    if "converged" not in row or pd.isna(row["converged"].iloc[0]):
        return None, residual
    return bool(row["converged"].iloc[0]), residual


def probe_lam(probes: pd.DataFrame, quantity: str, space: str, hypothesis: str = "unmasked") -> float:
    """The ``lam`` of the regularised loss a probe row was measured with (NaN when not recorded)."""
    row = _probe_row(probes, quantity, space, hypothesis)
    return float(row["lam"].iloc[0]) if len(row) and pd.notna(row["lam"].iloc[0]) else math.nan


# --------------------------------------------------------------------------------------------------
# Stability
# --------------------------------------------------------------------------------------------------


def stability_methods(stability: pd.DataFrame) -> list[str]:
    """Methods present in ``stability.parquet``, most trustworthy first (`STABILITY_METHODS`)."""
    present = set(stability["method"])
    return [m for m in STABILITY_METHODS if m in present] + sorted(present - set(STABILITY_METHODS))


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
    loss_s = _clip(rows["loss_s"].to_numpy(dtype=float), loss_range)
    loss_si = _clip(rows["loss_si"].to_numpy(dtype=float), loss_range)
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


# --------------------------------------------------------------------------------------------------
# Effective regularisation strength (this toolkit's addition)
# --------------------------------------------------------------------------------------------------


def dw_norm_squared(modules: pd.DataFrame, step: int) -> float:
    """``sum_k ||dW_k||_F^2`` over the adapted modules at ``step`` (``modules.parquet``, ``dw_norm``)."""
    rows = modules[modules["step"] == step]
    if rows.empty:
        raise MissingMeasurementError("modules", f"rows at step={step}",
                                      f"steps {sorted(modules['step'].unique())}")
    return float((rows["dw_norm"].to_numpy(dtype=float) ** 2).sum())


def estimate_lam_eff(samples: pd.DataFrame, modules: pd.DataFrame, p: float, *, step: int | None = None,
                     confidence: float = 0.95) -> Estimate:
    """Effective regularisation strength of the masks, ``lam_eff`` (NOT in the paper; this toolkit's own).

    The paper analyses LoRA Dropout as the sparsity-regularised loss ``L(theta) + lam s ||dW||^2``
    (Eqs. 9-11) with ``lam`` arbitrary. We estimate the ``lam`` the masks actually impose on the
    trained model by matching that penalty to the measured mask-induced increase of the training loss:

        lam_eff = (mean member training loss - mean deterministic training loss) / (s * sum_k ||dW_k||_F^2)

    with ``s = 2p - p^2`` and ``||dW_k||_F`` from ``modules.parquet`` (``dw_norm``) at the same step.

    What it assumes: a second-order expansion of the masked loss around the deterministic predictor,
    ``E_m L(theta_bar + eps_m) ~ L(theta_bar) + (1/2) E_m eps_m^T H eps_m``, where the first-order term
    averages out because the deterministic predictor sits at the mean of the masked weights (true for
    ``eval_mode`` ``expected``, and for ``full`` only with inverted rescaling); the quadratic term is
    then *identified* with ``lam s ||dW||^2``, i.e. the curvature seen by the mask noise is summarised
    by one number. Members are the run's finite test-time ensemble and the training loss is measured
    on the evaluation subset of the training set. Where the expansion is poor (large ``p``, strongly
    non-quadratic loss) ``lam_eff`` is only a descriptive number; it may be negative.

    The standard error comes from the per-sample differences ``mean_r loss_r(x_i) - loss_det(x_i)``
    (samples independent); ``||dW||`` is treated as exact.

    Parameters
    ----------
    samples, modules : DataFrame
        ``samples.parquet`` and ``modules.parquet``.
    p : float
        ``dropout_rate``.
    step : int, optional
        Default: the final evaluation step of ``samples``.
    confidence : float
        Level of the t-interval.

    Raises
    ------
    ValueError
        When ``s * sum ||dW||^2 = 0`` (``p = 0`` or ``dW = 0``): ``lam_eff`` is then undefined.
    """
    matrix = loss_matrix(samples, "train", step)
    denominator = sparsity(p) * dw_norm_squared(modules, matrix.step)
    if not denominator > 0:
        raise ValueError(f"lam_eff is undefined: s * sum ||dW||^2 = {denominator!r} (p = {p!r})")
    e = estimate_mean(matrix.member.mean(axis=0) - matrix.deterministic, confidence)
    return Estimate(e.value / denominator, e.stderr / denominator, e.ci_low / denominator,
                    e.ci_high / denominator, e.n, e.confidence)


# --------------------------------------------------------------------------------------------------
# Per-sample quantities
# --------------------------------------------------------------------------------------------------


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
        Number of classes (``len(meta["data"]["label_names"])``).
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
