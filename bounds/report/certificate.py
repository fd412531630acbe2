"""The PAC-Bayes dropout certificate of a run, as `BoundReport`s (docs/certificate.md; the toolkit's own).

Pure arithmetic on ``certificates.parquet`` (written by ``lora-dropout certify RUN_DIR``,
`lora_dropout.certify.measure`) with `bounds.formulas` (docs/certificate.md):

==============================  =================================================================
``pacbayes_dropout``            the Gibbs member's 0-1 error: the smallest certificate over the
                                ``posterior_std`` grid, held against the measured test Gibbs error
                                of the same posterior
``pacbayes_dropout_ensemble``   the probability-averaging ensemble of members drawn from the
                                posterior: the linear-loss certificate ``c`` bounds its expected
                                linear loss, ``min(1, 2c)`` its 0-1 error; held against the measured
                                test linear loss of the Gibbs member (equal, in expectation, to the
                                ensemble's)
==============================  =================================================================

Per grid point (`certificate_table`): ``KL(Q || P)`` recomputed with `bounds.formulas.dropout_kl` from the
measured distances, the Monte Carlo upper value of the empirical Gibbs risk, and the certificate with
``delta`` and ``delta_mc`` split over the grid (failure probability ``delta + delta_mc`` for the grid as
a whole, so the minimum may be reported). The two reports are two uses of the grid: together they fail
with probability at most ``2 (delta + delta_mc)``.

At group level (data with groups, the default) each certified group is one example whose loss is its rows'
mean loss, and the measured value is the mean over test groups (a new group's average example); at row level
(data without groups, or rows declared i.i.d.: ``pacbayes_dropout_iid_rows`` from
``certificates_iid_rows.parquet``) each row is one. ``delta`` and ``delta_mc`` are divided by the number of
certificates tried on the run (``certify_log.jsonl``).

The audit: the items of `bounds.report.certificate_audit` (prior disjoint from the certified examples, their
number, the independence level, the data unchanged since training, every example evaluated, the selection
counted), and

- ``grid_fixed_in_advance``: the union bound is valid only for a grid fixed before the data. Here that
  means the grid is an *option* (of ``certify``, default `bounds.runlog.DEFAULT_POSTERIOR_STD_GRID`),
  never chosen from the run's numbers: the table's grid must equal the grid given to the report (the
  default unless ``posterior_std_grid`` is passed), and ``grid_size`` must be its length, so a table
  cut down to its best rows, or a grid picked after seeing the errors, fails;
- ``kl_recomputed``: the table's ``kl`` equals ``dropout_kl`` of its distances (the probe's arithmetic);
- ``measured_below_bound``: the measured test value is at most the bound.

A certificate ``>= 1`` (within `bounds.formulas.VACUOUS_TOL`) says nothing and is reported as vacuous.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from ..assumptions import Assumption
from ..estimators import Quantity
from ..formulas import certificate, dropout_kl, ensemble_transfer, holdout_bound, is_vacuous
from ..runlog import (
    DEFAULT_POSTERIOR_STD_GRID,
    TABLES,
    MissingTableError,
    RunLog,
    RunLogError,
    check_certificates,
    check_table,
    read_prior_record,
    read_run,
)
from . import certificate_audit as audit
from .record import BoundReport

__all__ = [
    "CERTIFICATE_REPORTS",
    "KL_RTOL",
    "THEOREMS",
    "certificate_reports",
    "certificate_table",
    "reports_if_certified",
]

#: Names of the reports of this module (the entries ``certify`` writes into bounds.json,
#: `bounds.report.write_certificate_entries`).
CERTIFICATE_REPORTS = ("pacbayes_dropout", "pacbayes_dropout_ensemble", "pacbayes_dropout_iid_rows")
#: Relative tolerance of the ``kl_recomputed`` audit (the probe computes in float64 too).
KL_RTOL = 1e-9
_GRID_RTOL = 1e-9

_BASIS = ("toolkit's own, docs/certificate.md (not in Lin et al. 2024): PAC-Bayes-kl bound (Seeger 2002; "
          "Maurer 2004) on the LoRA Dropout posterior (masks x N(theta, sigma^2 I)) against a prior theta_P, KL "
          "discounted by dropout (McAllester 2013), Monte Carlo term (Langford & Caruana 2001), union bound over "
          "the posterior_std grid")
THEOREMS = {
    "pacbayes_dropout": f"{_BASIS}; certifies the Gibbs member's 0-1 error",
    "pacbayes_dropout_ensemble": f"{_BASIS}; on the linear loss 1 - prob_y, then ensemble 0-1 error <= 2 x its "
                                 "linear loss (probability-averaging ensemble of members drawn from Q, masks AND "
                                 "noise, in expectation over them; not the noiseless or deterministic model)",
    "pacbayes_dropout_iid_rows": f"{_BASIS}; certifies the Gibbs member's 0-1 error at row level on grouped data "
                                 "whose rows the user declared i.i.d. (valid only under that declaration)",
}


def certificate_table(frame: pd.DataFrame, *, delta: float | None = None,
                      delta_mc: float | None = None) -> pd.DataFrame:
    """Every term of the certificate at every grid point of a ``certificates.parquet`` table.

    ``delta`` and ``delta_mc`` default to the table's own (those ``certify`` recorded).

    Returns
    -------
    DataFrame
        One row per ``posterior_std`` (ascending): ``posterior_std, kl, kl_factor_term, kl_head_term,
        train_gibbs_error, mc_rhs, gibbs_upper, rhs, certificate, test_gibbs_error, train_gibbs_linear,
        linear_gibbs_upper, linear_certificate, ensemble_zero_one, test_gibbs_linear, vacuous`` (``kl*``
        recomputed with `bounds.formulas.dropout_kl`; ``vacuous`` when the certificate is ``>= 1`` (`is_vacuous`)).
    """
    f = frame.sort_values("posterior_std").reset_index(drop=True)
    d = float(f["delta"].iloc[0]) if delta is None else delta
    dmc = float(f["delta_mc"].iloc[0]) if delta_mc is None else delta_mc
    kl = dropout_kl(f["p"].to_numpy(float), f["factor_sq_dist"].to_numpy(float), f["head_sq_dist"].to_numpy(float),
                    f["posterior_std"].to_numpy(float))
    common = dict(kl=kl.total, n_bound=f["n_bound"].to_numpy(float), posterior_draws=f["draws"].to_numpy(float),
                  delta=d, delta_prime=dmc, grid_size=f["grid_size"].to_numpy(float))
    zero_one = certificate(f["train_gibbs_error"].to_numpy(float), **common)
    linear = certificate(f["train_gibbs_linear"].to_numpy(float), loss="linear", **common)
    ensemble = ensemble_transfer(linear)
    return pd.DataFrame({
        "posterior_std": f["posterior_std"].to_numpy(float),
        "kl": kl.total, "kl_factor_term": kl.factor_term, "kl_head_term": kl.head_term,
        "train_gibbs_error": zero_one.gibbs_estimate, "mc_rhs": zero_one.mc_rhs,
        "gibbs_upper": zero_one.gibbs_upper, "rhs": zero_one.rhs, "certificate": zero_one.value,
        "test_gibbs_error": f["test_gibbs_error"].to_numpy(float),
        "train_gibbs_linear": linear.gibbs_estimate, "linear_gibbs_upper": linear.gibbs_upper,
        "linear_certificate": linear.value, "ensemble_zero_one": ensemble.zero_one_error,
        "test_gibbs_linear": f["test_gibbs_linear"].to_numpy(float),
        "vacuous": is_vacuous(zero_one.value),
    })


# --------------------------------------------------------------------------------------------------
# The audit items of this table (the shared ones: bounds.report.certificate_audit)
# --------------------------------------------------------------------------------------------------


def _grid(frame: pd.DataFrame, grid: Sequence[float] | None) -> Assumption:
    expected = np.sort(np.asarray(DEFAULT_POSTERIOR_STD_GRID if grid is None else tuple(grid), dtype=float))
    given = "the default grid bounds.runlog.DEFAULT_POSTERIOR_STD_GRID" if grid is None else "the grid given"
    found = np.sort(frame["posterior_std"].to_numpy(float))
    sizes = sorted(set(frame["grid_size"].astype(int)))
    same = (found.shape == expected.shape and np.allclose(found, expected, rtol=_GRID_RTOL, atol=0.0)
            and sizes == [len(expected)])
    return Assumption(
        "grid_fixed_in_advance", float(len(found)), float(len(expected)), bool(same),
        f"certificates.parquet's posterior_std grid {found.tolist()} (grid_size {sizes}) equals {given}, "
        f"{expected.tolist()}: the union bound holds for a grid fixed before the data (an option of certify, "
        "never chosen from the run's numbers); pass the grid certify used with --posterior-std-grid")


def _kl(frame: pd.DataFrame, table: pd.DataFrame) -> Assumption:
    recorded = frame.sort_values("posterior_std")["kl"].to_numpy(float)
    recomputed = table["kl"].to_numpy(float)
    with np.errstate(invalid="ignore"):
        rel = np.where(recomputed > 0, np.abs(recorded - recomputed) / recomputed, np.abs(recorded - recomputed))
    worst = float(np.nanmax(rel)) if len(rel) else 0.0
    same = bool(np.all((recorded == recomputed) | (rel <= KL_RTOL)))
    return Assumption("kl_recomputed", worst, KL_RTOL, same,
                      "certificates.parquet's kl equals dropout_kl(p, factor_sq_dist, head_sq_dist, posterior_std) "
                      "(largest relative difference); the report uses the recomputed value")


# --------------------------------------------------------------------------------------------------
# The reports
# --------------------------------------------------------------------------------------------------


def _read(run_dir: Path, table: str = "certificates") -> tuple[RunLog, pd.DataFrame]:
    log = read_run(run_dir)
    spec = TABLES[table]
    if not log.has(table):
        raise MissingTableError(table, run_dir)
    frame = log.table(table)
    problems = check_table(spec, frame)
    if problems and problems[0].startswith(f"{spec.filename}: missing column"):
        problems.append("measured by an earlier version of certify: run lora-dropout certify again")
    problems += [] if problems else check_certificates(frame, table)
    if not len(frame):
        problems.append(f"{spec.filename} has no rows")
    if problems:
        raise RunLogError(f"run {run_dir}: " + "; ".join(problems))
    return log, frame


def _n_train(log: RunLog) -> int | None:
    try:
        return log.meta.n_train
    except RunLogError:
        return None


def certificate_reports(run_dir: str | Path, *, posterior_std_grid: Sequence[float] | None = None,
                        delta: float | None = None, delta_mc: float | None = None) -> list[BoundReport]:
    """The ``pacbayes_dropout`` and ``pacbayes_dropout_ensemble`` reports of a run, and ``pacbayes_dropout_iid_rows``
    when grouped data's rows were declared i.i.d. (``certificates_iid_rows.parquet``).

    ``delta`` and ``delta_mc`` (default: the table's, those given to ``certify``) are divided by the number of
    certificates tried on the run (``certify_log.jsonl``, `bounds.report.certificate_audit.selection`).

    Parameters
    ----------
    run_dir : path
        A run directory with ``certificates.parquet`` (``lora-dropout certify RUN_DIR``).
    posterior_std_grid : floats, optional
        The grid ``certify`` was given, for the ``grid_fixed_in_advance`` audit (default:
        `bounds.runlog.DEFAULT_POSTERIOR_STD_GRID`).
    delta, delta_mc : float, optional
        Failure probabilities before the split over the run's certificates.

    Raises
    ------
    MissingTableError
        Without ``certificates.parquet``.
    RunLogError
        When it does not satisfy the schema.
    """
    run_dir = Path(run_dir)
    log, frame = _read(run_dir)
    tried, selected = audit.selection(run_dir)
    record = read_prior_record(run_dir)
    reports = _reports(log, frame, record, tried, selected, posterior_std_grid, delta, delta_mc,
                       table_name="certificates", names=("pacbayes_dropout", "pacbayes_dropout_ensemble"))
    if log.has("certificates_iid_rows"):
        _, rows = _read(run_dir, "certificates_iid_rows")
        reports += _reports(log, rows, record, tried, selected, posterior_std_grid, delta, delta_mc,
                            table_name="certificates_iid_rows", names=("pacbayes_dropout_iid_rows",))
    return reports


def _reports(log: RunLog, frame: pd.DataFrame, record: dict | None, tried: int, selected, grid, delta, delta_mc, *,
             table_name: str, names: Sequence[str]) -> list[BoundReport]:
    row = frame.sort_values("posterior_std").reset_index(drop=True)
    d = (float(row["delta"].iloc[0]) if delta is None else delta) / tried
    dmc = (float(row["delta_mc"].iloc[0]) if delta_mc is None else delta_mc) / tried
    table = certificate_table(frame, delta=d, delta_mc=dmc)
    kind = str(row["prior"].iloc[0])
    level, premise = str(row["level"].iloc[0]), str(row["premise"].iloc[0])
    n_bound, k = int(row["n_bound"].iloc[0]), int(row["draws"].iloc[0])
    n_test = int(row["n_test"].iloc[0])
    units = "groups" if level == "group" else "rows"
    shared = [audit.disjoint(kind, record), audit.n_bound(kind, record, row, _n_train(log)),
              audit.independence_level(kind, record, row), audit.data_unchanged(record, row), _grid(frame, grid),
              audit.every_example_evaluated(row), selected, _kl(frame, table)]
    src = (f"{TABLES[table_name].filename} "
           f"(prior={kind}, level {level}, {len(row)} posterior_std, seed {int(row['seed'].iloc[0])})")
    split = f" (divided by the {tried} certificates tried on the run)" if tried > 1 else ""

    def common_inputs(i: int, loss: str) -> list[Quantity]:
        sigma = float(table["posterior_std"].iloc[i])
        at = f"posterior_std={sigma:g}"
        column = "train_gibbs_error" if loss == "error" else "train_gibbs_linear"
        return [
            Quantity(f"gibbs_{loss}", float(row[column].iloc[i]),
                     f"{src} {at} {column}: mean over n_b = {n_bound} {units} of their mean over rows and k = {k} "
                     "posterior draws", n=n_bound * k),
            Quantity("kl", float(table["kl"].iloc[i]),
                     f"dropout_kl(p, factor_sq_dist, head_sq_dist, posterior_std) at {at}"),
            Quantity("factor_sq_dist", float(row["factor_sq_dist"].iloc[i]), f"{src}: ||A - A_P||^2 + ||B - B_P||^2"),
            Quantity("head_sq_dist", float(row["head_sq_dist"].iloc[i]), f"{src}: ||head - head_P||^2"),
            Quantity("dropout_rate", float(row["p"].iloc[i]), f"{src} p (the run's config)"),
            Quantity("posterior_std", sigma, f"{src} {at}: the grid point of the smallest certificate"),
            Quantity("n_bound", float(n_bound), f"{src}: certified {units} ({premise})"),
            Quantity("n_bound_rows", float(row["n_bound_rows"].iloc[i]), f"{src}: certified rows"),
            Quantity("posterior_draws", float(k), f"{src} draws"),
            Quantity("delta", d, ("argument" if delta is not None else f"{src} delta (given to certify)") + split),
            Quantity("delta_mc", dmc, ("argument" if delta_mc is not None else f"{src} delta_mc") + split),
            Quantity("grid_size", float(row["grid_size"].iloc[i]), f"{src} grid_size"),
            Quantity("certificates_tried", float(tried), "certify_log.jsonl entries (1 when the run has none)"),
        ]

    def per_point(column: str, label: str) -> list[Quantity]:
        return [Quantity(f"{label}[{s:g}]", float(v), f"certificate_table at posterior_std={s:g}")
                for s, v in zip(table["posterior_std"], table[column], strict=True)]

    # the hold-out baseline at the same level and confidence (bounds.formulas.holdout_bound)
    prior_error, prior_test = float(row["holdout_gibbs_error"].iloc[0]), float(row["holdout_test_gibbs_error"].iloc[0])
    holdout = float(holdout_bound(prior_error, n_bound, d + dmc))
    baseline = [
        Quantity("holdout_gibbs_error", prior_error, f"{src} holdout_gibbs_error: the prior's own Gibbs member on "
                 f"the {n_bound} certified {units}"),
        Quantity("holdout_bound", holdout, "kl_inv_upper(holdout_gibbs_error, ln(1 / (delta + delta_mc)) / n_b): "
                 "the test-set bound of training on the prior's share and holding the rest out"),
        Quantity("holdout_test_gibbs_error", prior_test, f"{src}: the prior's Gibbs member on the test {units}")]

    reports = []
    # the Gibbs member's 0-1 error
    i = int(np.argmin(table["certificate"].to_numpy()))
    value, estimate, upper = (float(table[c].iloc[i]) for c in ("certificate", "train_gibbs_error", "gibbs_upper"))
    measured = float(table["test_gibbs_error"].iloc[i])
    vacuous = is_vacuous(value)
    measured_name = (f"test Gibbs 0-1 error (posterior_std={table['posterior_std'].iloc[i]:g}, mean over {n_test} test "
                     f"{units}, {k} draws)")
    assumptions = [*shared, Assumption("measured_below_bound", measured, value, measured <= value,
                                       f"{measured_name} <= certificate" + (" (trivially: vacuous)" if vacuous else ""))]
    reports.append(BoundReport(
        names[0], log.run_id, THEOREMS[names[0]], value, measured, measured_name, value,
        {"gibbs_estimate": estimate, "monte_carlo": upper - estimate, "pac_bayes": value - upper},
        tuple(common_inputs(i, "error")), tuple(assumptions),
        (*per_point("certificate", "certificate"), *per_point("kl", "kl"), *per_point("gibbs_upper", "gibbs_upper"),
         *per_point("test_gibbs_error", "test_gibbs_error"), *baseline,
         Quantity("certificate_over_holdout", value / holdout if holdout > 0 else math.inf,
                  "< 1: the certificate is tighter than holding the certified examples out")),
        vacuous, reason=(f"certificate {value:.4g} >= 1 at every posterior_std of the grid: vacuous" if vacuous
                         else "")))
    if len(names) == 1:
        return reports
    # the ensemble, from the linear-loss certificate
    j = int(np.argmin(table["linear_certificate"].to_numpy()))
    linear, bound = float(table["linear_certificate"].iloc[j]), float(table["ensemble_zero_one"].iloc[j])
    measured = float(table["test_gibbs_linear"].iloc[j])
    vacuous = is_vacuous(bound)
    measured_name = (f"test linear loss 1 - prob_y of the Gibbs member (= the ensemble's expected linear loss; "
                     f"posterior_std={table['posterior_std'].iloc[j]:g}, {n_test} test {units} x {k} draws)")
    assumptions = [*shared, Assumption("measured_below_bound", measured, linear, measured <= linear,
                                       "measured linear loss <= linear-loss certificate")]
    reports.append(BoundReport(
        names[1], log.run_id, THEOREMS[names[1]], bound, measured,
        measured_name, linear, {"linear_certificate": linear, "zero_one_transfer": bound - linear},
        tuple(common_inputs(j, "linear")), tuple(assumptions),
        (*per_point("linear_certificate", "linear_certificate"), *per_point("ensemble_zero_one", "ensemble_zero_one"),
         *per_point("test_gibbs_linear", "test_gibbs_linear")),
        vacuous, reason=(f"ensemble 0-1 bound min(1, 2 x {linear:.4g}) >= 1: vacuous" if vacuous else "")))
    return reports


def reports_if_certified(run_dir: str | Path, posterior_std_grid: Sequence[float] | None = None) -> list[BoundReport]:
    """For `bounds.report.evaluate_run`: the certificate reports when the run has ``certificates.parquet``
    (a certificate is an opt-in measurement, so its absence adds nothing), not-evaluable ones when the table
    is unusable."""
    run_dir = Path(run_dir)
    if not (run_dir / TABLES["certificates"].filename).is_file():
        return []
    try:
        return certificate_reports(run_dir, posterior_std_grid=posterior_std_grid)
    except (RunLogError, ValueError) as exc:
        run_id = read_run(run_dir).run_id
        rows = (run_dir / TABLES["certificates_iid_rows"].filename).is_file()
        return [BoundReport.not_evaluable(name, run_id, THEOREMS[name], str(exc))
                for name in CERTIFICATE_REPORTS[:3 if rows else 2]]
