"""The PAC-Bayes dropout certificate of a run, as `BoundReport`s (theory.md section 6; the toolkit's own).

Pure arithmetic on ``certificates.parquet`` (written by ``lora-dropout certify RUN_DIR``,
`lora_dropout.probes.certify`) with `bounds.formulas` (theory.md section 6):

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

The audit:

- ``certified_disjoint_from_prior``: the trained prior saw none of the certified examples
  (prior/prior.json: ``certifiable_ids`` and ``prior_ids`` disjoint); the init prior saw none at all;
- ``n_bound_matches_prior``: ``n_bound`` is the number of examples the prior leaves certifiable (all
  ``n`` for init, ``len(certifiable_ids)`` for trained);
- ``grid_fixed_in_advance``: the union bound is valid only for a grid fixed before the data. Here that
  means the grid is an *option* (of ``certify``, default `bounds.runlog.DEFAULT_POSTERIOR_STD_GRID`),
  never chosen from the run's numbers: the table's grid must equal the grid given to the report (the
  default unless ``posterior_std_grid`` is passed), and ``grid_size`` must be its length, so a table
  cut down to its best rows, or a grid picked after seeing the errors, fails;
- ``monte_carlo_term``: the certificate starts from the Monte Carlo upper value (``>=`` the estimate,
  with a positive budget ``ln(|grid| / delta_mc) / (n_b k)``), not from the estimate itself;
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
from ..formulas import certificate, dropout_kl, ensemble_transfer, is_vacuous
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
CERTIFICATE_REPORTS = ("pacbayes_dropout", "pacbayes_dropout_ensemble")
#: Relative tolerance of the ``kl_recomputed`` audit (the probe computes in float64 too).
KL_RTOL = 1e-9
_GRID_RTOL = 1e-9

_BASIS = ("toolkit's own, theory.md section 6 (not in Lin et al. 2024): PAC-Bayes-kl bound (Seeger 2002; "
          "Maurer 2004) on the LoRA Dropout posterior (masks x N(theta, sigma^2 I)) against a prior theta_P, KL "
          "discounted by dropout (McAllester 2013), Monte Carlo term (Langford & Caruana 2001), union bound over "
          "the posterior_std grid")
THEOREMS = {
    "pacbayes_dropout": f"{_BASIS}; certifies the Gibbs member's 0-1 error",
    "pacbayes_dropout_ensemble": f"{_BASIS}; on the linear loss 1 - prob_y, then ensemble 0-1 error <= 2 x its "
                                 "linear loss (probability-averaging ensemble of members drawn from Q, masks AND "
                                 "noise, in expectation over them; not the noiseless or deterministic model)",
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
# The audit
# --------------------------------------------------------------------------------------------------


def _disjoint(kind: str, record: dict | None) -> Assumption:
    name = "certified_disjoint_from_prior"
    if kind == "init":
        return Assumption(name, 0.0, 0.0, True, "the init prior (seeded initialisation) depends on no example, so "
                                                "every training example may be certified")
    if record is None:
        return Assumption(name, math.nan, 0.0, None, "not measurable: prior/prior.json is missing, so the examples "
                                                     "the trained prior saw are unknown")
    overlap = sorted(set(record["certifiable_ids"]) & set(record["prior_ids"]))
    example = f", e.g. {overlap[:5]}" if overlap else ""
    return Assumption(name, float(len(overlap)), 0.0, not overlap,
                      f"prior/prior.json: {len(overlap)} of {len(record['certifiable_ids'])} certifiable_ids are among "
                      f"the {len(record['prior_ids'])} prior_ids the trained prior saw{example}; the bound needs "
                      "none (a prior that saw a certified example is not a prior)")


def _n_bound(kind: str, record: dict | None, n_bound: int, n_train: int | None) -> Assumption:
    name = "n_bound_matches_prior"
    if kind == "init":
        if n_train is None:
            return Assumption(name, float(n_bound), math.nan, None, "not measurable: meta.json has no n_train")
        return Assumption(name, float(n_bound), float(n_train), n_bound == n_train,
                          f"n_bound = n_train (the init prior leaves all {n_train} training examples certifiable)")
    if record is None:
        return Assumption(name, float(n_bound), math.nan, None, "not measurable: prior/prior.json is missing")
    expected = len(record["certifiable_ids"])
    return Assumption(name, float(n_bound), float(expected), n_bound == expected,
                      f"n_bound = len(prior/prior.json certifiable_ids) = {expected} (the examples the trained "
                      "prior did not see)")


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


def _monte_carlo(table: pd.DataFrame, prefix: str) -> Assumption:
    margin = table[f"{prefix}gibbs_upper"] - table[f"train_gibbs_{'linear' if prefix else 'error'}"]
    worst = float(margin.min())
    holds = bool((margin >= 0).all() and (table["mc_rhs"] > 0).all())
    return Assumption("monte_carlo_term", worst, 0.0, holds,
                      "the certificate starts from the Monte Carlo upper value kl_inv_upper(estimate, "
                      "ln(|grid| / delta_mc) / (n_b k)) >= the estimate at every grid point (smallest margin "
                      f"{worst:.3g}; budget >= {float(table['mc_rhs'].min()):.3g})")


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


def _read(run_dir: Path) -> tuple[RunLog, pd.DataFrame]:
    log = read_run(run_dir)
    spec = TABLES["certificates"]
    if not log.has("certificates"):
        raise MissingTableError("certificates", run_dir)
    frame = log.table("certificates")
    problems = check_table(spec, frame)
    problems += [] if problems else check_certificates(frame)
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
    """The ``pacbayes_dropout`` and ``pacbayes_dropout_ensemble`` reports of a run.

    Parameters
    ----------
    run_dir : path
        A run directory with ``certificates.parquet`` (``lora-dropout certify RUN_DIR``).
    posterior_std_grid : floats, optional
        The grid ``certify`` was given, for the ``grid_fixed_in_advance`` audit (default:
        `bounds.runlog.DEFAULT_POSTERIOR_STD_GRID`).
    delta, delta_mc : float, optional
        Failure probabilities (default: the table's, those given to ``certify``).

    Raises
    ------
    MissingTableError
        Without ``certificates.parquet``.
    RunLogError
        When it does not satisfy the schema.
    """
    run_dir = Path(run_dir)
    log, frame = _read(run_dir)
    table = certificate_table(frame, delta=delta, delta_mc=delta_mc)
    row = frame.sort_values("posterior_std").reset_index(drop=True)
    kind = str(row["prior"].iloc[0])
    record = read_prior_record(run_dir)
    n_bound, k = int(row["n_bound"].iloc[0]), int(row["draws"].iloc[0])
    n_test = int(row["n_test"].iloc[0])
    d = float(row["delta"].iloc[0]) if delta is None else delta
    dmc = float(row["delta_mc"].iloc[0]) if delta_mc is None else delta_mc
    audit = [_disjoint(kind, record), _n_bound(kind, record, n_bound, _n_train(log)), _grid(frame, posterior_std_grid),
             None, _kl(frame, table)]
    src = f"certificates.parquet (prior={kind}, {len(row)} posterior_std, seed {int(row['seed'].iloc[0])})"

    def common_inputs(i: int, loss: str) -> list[Quantity]:
        sigma = float(table["posterior_std"].iloc[i])
        at = f"certificates.parquet posterior_std={sigma:g}"
        column = "train_gibbs_error" if loss == "error" else "train_gibbs_linear"
        return [
            Quantity(f"gibbs_{loss}", float(row[column].iloc[i]),
                     f"{at} {column}: mean over n_b x k = {n_bound} x {k} posterior draws", n=n_bound * k),
            Quantity("kl", float(table["kl"].iloc[i]),
                     f"dropout_kl(p, factor_sq_dist, head_sq_dist, posterior_std) of {at}"),
            Quantity("factor_sq_dist", float(row["factor_sq_dist"].iloc[i]), f"{src}: ||A - A_P||^2 + ||B - B_P||^2"),
            Quantity("head_sq_dist", float(row["head_sq_dist"].iloc[i]), f"{src}: ||head - head_P||^2"),
            Quantity("dropout_rate", float(row["p"].iloc[i]), f"{src} p (the run's config)"),
            Quantity("posterior_std", sigma, f"{at}: the grid point of the smallest certificate"),
            Quantity("n_bound", float(n_bound), f"{src}: certified training examples (prior={kind})"),
            Quantity("posterior_draws", float(k), f"{src} draws"),
            Quantity("delta", d, "argument" if delta is not None else f"{src} delta (given to certify)"),
            Quantity("delta_mc", dmc, "argument" if delta_mc is not None else f"{src} delta_mc (given to certify)"),
            Quantity("grid_size", float(row["grid_size"].iloc[i]), f"{src} grid_size"),
        ]

    def per_point(column: str, label: str) -> list[Quantity]:
        return [Quantity(f"{label}[{s:g}]", float(v), f"certificate_table at posterior_std={s:g}")
                for s, v in zip(table["posterior_std"], table[column], strict=True)]

    reports = []
    # the Gibbs member's 0-1 error
    i = int(np.argmin(table["certificate"].to_numpy()))
    value, estimate, upper = (float(table[c].iloc[i]) for c in ("certificate", "train_gibbs_error", "gibbs_upper"))
    measured = float(table["test_gibbs_error"].iloc[i])
    vacuous = is_vacuous(value)
    measured_name = f"test Gibbs 0-1 error (posterior_std={table['posterior_std'].iloc[i]:g}, {n_test} x {k} draws)"
    assumptions = [*audit[:3], _monte_carlo(table, ""), audit[4],
                   Assumption("measured_below_bound", measured, value, measured <= value,
                              f"{measured_name} <= certificate" + (" (trivially: vacuous)" if vacuous else ""))]
    reports.append(BoundReport(
        "pacbayes_dropout", log.run_id, THEOREMS["pacbayes_dropout"], value, measured, measured_name, value,
        {"gibbs_estimate": estimate, "monte_carlo": upper - estimate, "pac_bayes": value - upper},
        tuple(common_inputs(i, "error")), tuple(assumptions),
        (*per_point("certificate", "certificate"), *per_point("kl", "kl"), *per_point("gibbs_upper", "gibbs_upper"),
         *per_point("test_gibbs_error", "test_gibbs_error")),
        vacuous, reason=(f"certificate {value:.4g} >= 1 at every posterior_std of the grid: vacuous" if vacuous
                         else "")))
    # the ensemble, from the linear-loss certificate
    j = int(np.argmin(table["linear_certificate"].to_numpy()))
    linear, bound = float(table["linear_certificate"].iloc[j]), float(table["ensemble_zero_one"].iloc[j])
    measured = float(table["test_gibbs_linear"].iloc[j])
    vacuous = is_vacuous(bound)
    measured_name = (f"test linear loss 1 - prob_y of the Gibbs member (= the ensemble's expected linear loss; "
                     f"posterior_std={table['posterior_std'].iloc[j]:g}, {n_test} x {k} draws)")
    assumptions = [*audit[:3], _monte_carlo(table, "linear_"), audit[4],
                   Assumption("measured_below_bound", measured, linear, measured <= linear,
                              "measured linear loss <= linear-loss certificate")]
    reports.append(BoundReport(
        "pacbayes_dropout_ensemble", log.run_id, THEOREMS["pacbayes_dropout_ensemble"], bound, measured,
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
        return [BoundReport.not_evaluable(name, run_id, THEOREMS[name], str(exc)) for name in CERTIFICATE_REPORTS]
