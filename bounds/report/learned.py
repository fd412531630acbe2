"""The PAC-Bayes dropout certificate of a learned posterior, as a `BoundReport` (the toolkit's own).

Pure arithmetic on ``learned_certificates.parquet`` and ``posterior/learned.json`` (written by
``lora-dropout certify RUN_DIR --learn-posterior``, `lora_dropout.certify.learned`): the posterior keeps the
LoRA Dropout masks and has a learned mean and one std per tensor; the prior is the run's prior at each
``prior_std`` of a grid fixed in advance. Per grid point (`learned_certificate_table`): ``KL(Q || P)``
recomputed with `bounds.formulas.learned_dropout_kl` from learned.json's tensors, the Monte Carlo upper value
of the empirical Gibbs 0-1 risk and the certificate (`bounds.formulas.certificate`, ``delta`` and ``delta_mc``
split over the grid), so the smallest over the grid may be reported.

This is a third use of the run's data next to the two reports of `bounds.report.certificate`: reported
together, the three fail with probability at most ``3 (delta + delta_mc)``.

The audit: ``certified_disjoint_from_prior`` and ``n_bound_matches_prior`` (as for the grid certificate),
``grid_fixed_in_advance`` (the table's ``prior_std`` grid is the grid given, default
`bounds.runlog.DEFAULT_POSTERIOR_STD_GRID`, and the one learning was written for), ``selection_counted``,
``kl_recomputed`` (the table's ``kl`` against learned.json), ``draws_independent_of_learning`` (the certificate's
draws ``0 .. k - 1`` lie below the first draw learning used), ``learned_tensors_match_run`` (learned.json's
weights and counts against the run's p and the saved tensors, `bounds.report.certificate_audit`) and
``measured_below_bound``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from ..assumptions import Assumption
from ..estimators import Quantity
from ..formulas import certificate, is_vacuous, learned_dropout_kl
from ..runlog import (
    DEFAULT_POSTERIOR_STD_GRID,
    TABLES,
    MissingTableError,
    RunLogError,
    check_learned_certificates,
    check_table,
    read_learned_record,
    read_prior_record,
    read_run,
)
from . import certificate_audit as audit
from .certificate import KL_RTOL, _n_train
from .record import BoundReport

__all__ = ["LEARNED_REPORT", "LEARNED_THEOREM", "learned_certificate_reports", "learned_certificate_table",
           "reports_if_learned"]

LEARNED_REPORT = "pacbayes_dropout_learned"
LEARNED_THEOREM = ("toolkit's own (not in Lin et al. 2024): PAC-Bayes-kl bound (Seeger 2002; Maurer 2004) on a "
                   "LoRA Dropout posterior whose mean and per-tensor stds were learned by minimising the bound "
                   "(Perez-Ortiz et al. 2021), against the run's prior at each prior_std of a grid fixed in advance; "
                   "KL discounted by dropout on the LoRA factors; Monte Carlo term (Langford & Caruana 2001); "
                   "certifies the Gibbs member's 0-1 error")
_GRID_RTOL = 1e-9


def _kl(record: dict, prior_std: np.ndarray):
    tensors = record["tensors"].values()
    return learned_dropout_kl(prior_std, weight=[t["weight"] for t in tensors], count=[t["count"] for t in tensors],
                              posterior_std=[t["posterior_std"] for t in tensors],
                              sq_dist=[t["sq_dist"] for t in tensors])


def learned_certificate_table(frame: pd.DataFrame, record: dict, *, delta: float | None = None,
                              delta_mc: float | None = None) -> pd.DataFrame:
    """Every term of the learned posterior's certificate at every ``prior_std`` (ascending).

    Returns
    -------
    DataFrame
        ``prior_std, kl, kl_variance_term, kl_distance_term, train_gibbs_error, mc_rhs, gibbs_upper, rhs,
        certificate, test_gibbs_error, vacuous`` (``kl*`` recomputed from ``record``, learned.json).
    """
    f = frame.sort_values("prior_std").reset_index(drop=True)
    d = float(f["delta"].iloc[0]) if delta is None else delta
    dmc = float(f["delta_mc"].iloc[0]) if delta_mc is None else delta_mc
    kl = _kl(record, f["prior_std"].to_numpy(float))
    cert = certificate(f["train_gibbs_error"].to_numpy(float), kl.total, f["n_bound"].to_numpy(float),
                       f["draws"].to_numpy(float), d, dmc, f["grid_size"].to_numpy(float))
    return pd.DataFrame({
        "prior_std": f["prior_std"].to_numpy(float), "kl": kl.total, "kl_variance_term": kl.variance_term,
        "kl_distance_term": kl.distance_term, "train_gibbs_error": cert.gibbs_estimate, "mc_rhs": cert.mc_rhs,
        "gibbs_upper": cert.gibbs_upper, "rhs": cert.rhs, "certificate": cert.value,
        "test_gibbs_error": f["test_gibbs_error"].to_numpy(float), "vacuous": is_vacuous(cert.value),
    })


def _grid(frame: pd.DataFrame, record: dict, grid: Sequence[float] | None) -> Assumption:
    expected = np.sort(np.asarray(DEFAULT_POSTERIOR_STD_GRID if grid is None else tuple(grid), dtype=float))
    found = np.sort(frame["prior_std"].to_numpy(float))
    learned = np.sort(np.asarray(record["prior_std_grid"], dtype=float))
    same = all(a.shape == expected.shape and np.allclose(a, expected, rtol=_GRID_RTOL, atol=0.0)
               for a in (found, learned))
    same = same and set(frame["grid_size"].astype(int)) == {len(expected)}
    return Assumption("grid_fixed_in_advance", float(len(found)), float(len(expected)), bool(same),
                      f"learned_certificates.parquet's prior_std grid {found.tolist()} and learned.json's "
                      f"{learned.tolist()} equal the grid given, {expected.tolist()} (a grid fixed before the data)")


def _kl_audit(frame: pd.DataFrame, table: pd.DataFrame) -> Assumption:
    recorded = frame.sort_values("prior_std")["kl"].to_numpy(float)
    recomputed = table["kl"].to_numpy(float)
    rel = np.abs(recorded - recomputed) / np.maximum(np.abs(recomputed), 1e-300)
    worst = float(rel.max()) if len(rel) else 0.0
    return Assumption("kl_recomputed", worst, KL_RTOL, bool(np.all(rel <= KL_RTOL)),
                      "learned_certificates.parquet's kl equals learned_dropout_kl of posterior/learned.json's tensors "
                      "(largest relative difference); the report uses the recomputed value")


def _draws(frame: pd.DataFrame, record: dict) -> Assumption:
    k, first = int(frame["draws"].iloc[0]), int(record["first_draw"])
    return Assumption("draws_independent_of_learning", float(k), float(first), k <= first,
                      f"the certificate's Monte Carlo draws 0 .. {k - 1} lie below the first draw learning used "
                      f"({first}), so they are independent of the learned posterior")


def _dropout_rate(log) -> float | None:
    value = log.meta.config.get("lora_dropout", {}).get("dropout_rate")
    return None if value is None else float(value)


def learned_certificate_reports(run_dir: str | Path, *, prior_std_grid: Sequence[float] | None = None
                                ) -> list[BoundReport]:
    """The ``pacbayes_dropout_learned`` report of a run (a list of one).

    Raises
    ------
    MissingTableError
        Without ``learned_certificates.parquet``.
    RunLogError
        When it or ``posterior/learned.json`` does not satisfy the schema.
    """
    run_dir = Path(run_dir)
    log = read_run(run_dir)
    if not log.has("learned_certificates"):
        raise MissingTableError("learned_certificates", run_dir)
    frame = log.table("learned_certificates")
    spec = TABLES["learned_certificates"]
    problems = check_table(spec, frame) or check_learned_certificates(frame)
    record = read_learned_record(run_dir)
    if record is None:
        problems = [*problems, f"{run_dir}/posterior/learned.json is missing"]
    if not len(frame):
        problems = [*problems, f"{spec.filename} has no rows"]
    if problems:
        raise RunLogError(f"run {run_dir}: " + "; ".join(problems))
    tried, selected = audit.selection(run_dir)
    table = learned_certificate_table(frame, record, delta=float(frame["delta"].iloc[0]) / tried,
                                      delta_mc=float(frame["delta_mc"].iloc[0]) / tried)
    kind = str(frame["prior"].iloc[0])
    prior_record = read_prior_record(run_dir)
    level = str(frame["level"].iloc[0])
    units = "groups" if level == "group" else "rows"
    n_bound, k, n_test = (int(frame[c].iloc[0]) for c in ("n_bound", "draws", "n_test"))
    i = int(np.argmin(table["certificate"].to_numpy()))
    value, measured = float(table["certificate"].iloc[i]), float(table["test_gibbs_error"].iloc[i])
    estimate, upper = float(table["train_gibbs_error"].iloc[i]), float(table["gibbs_upper"].iloc[i])
    vacuous = is_vacuous(value)
    sp = float(table["prior_std"].iloc[i])
    src = f"learned_certificates.parquet (prior={kind}, {len(frame)} prior_std)"
    stds = [t["posterior_std"] for t in record["tensors"].values()]
    inputs = (
        Quantity("gibbs_error", estimate, f"{src} train_gibbs_error: mean over n_b = {n_bound} {units} of their mean "
                 f"over rows and k = {k} draws", n=n_bound * k),
        Quantity("kl", float(table["kl"].iloc[i]), f"learned_dropout_kl of posterior/learned.json at prior_std={sp:g}"),
        Quantity("prior_std", sp, f"{src}: the grid point of the smallest certificate"),
        Quantity("posterior_std_min", float(min(stds)), "posterior/learned.json: smallest learned std"),
        Quantity("posterior_std_max", float(max(stds)), "posterior/learned.json: largest learned std"),
        Quantity("dropout_rate", float(frame["p"].iloc[0]), f"{src} p"),
        Quantity("n_bound", float(n_bound), f"{src}: certified {units} (level {level})"),
        Quantity("posterior_draws", float(k), f"{src} draws"),
        Quantity("delta", float(frame["delta"].iloc[0]) / tried, f"{src} delta (the objective's) / {tried} "
                 "certificates tried on the run"),
        Quantity("delta_mc", float(frame["delta_mc"].iloc[0]) / tried, f"{src} delta_mc / {tried}"),
        Quantity("grid_size", float(frame["grid_size"].iloc[0]), f"{src} grid_size"),
    )
    assumptions = (
        audit.disjoint(kind, prior_record), audit.n_bound(kind, prior_record, frame, _n_train(log)),
        _grid(frame, record, prior_std_grid), selected, _kl_audit(frame, table), _draws(frame, record),
        audit.learned_tensors(run_dir, record, _dropout_rate(log)),
        Assumption("measured_below_bound", measured, value, measured <= value,
                   f"test Gibbs 0-1 error ({n_test} test {units} x {k} draws) <= certificate"
                   + (" (trivially: vacuous)" if vacuous else "")),
    )
    per_point = tuple(Quantity(f"certificate[{s:g}]", float(v), f"learned_certificate_table at prior_std={s:g}")
                      for s, v in zip(table["prior_std"], table["certificate"], strict=True))
    return [BoundReport(
        LEARNED_REPORT, log.run_id, LEARNED_THEOREM, value, measured,
        f"test Gibbs 0-1 error of the learned posterior ({n_test} test {units} x {k} draws)", value,
        {"gibbs_estimate": estimate, "monte_carlo": upper - estimate, "pac_bayes": value - upper},
        inputs, assumptions, per_point, vacuous,
        reason=f"certificate {value:.4g} >= 1 at every prior_std: vacuous" if vacuous else "")]


def reports_if_learned(run_dir: str | Path, prior_std_grid: Sequence[float] | None = None) -> list[BoundReport]:
    """For `bounds.report.evaluate_run`: the learned posterior's report when the run has
    ``learned_certificates.parquet`` (opt-in: its absence adds nothing), a not-evaluable one when unusable."""
    run_dir = Path(run_dir)
    if not (run_dir / TABLES["learned_certificates"].filename).is_file():
        return []
    try:
        return learned_certificate_reports(run_dir, prior_std_grid=prior_std_grid)
    except (RunLogError, ValueError) as exc:
        return [BoundReport.not_evaluable(LEARNED_REPORT, read_run(run_dir).run_id, LEARNED_THEOREM, str(exc))]

