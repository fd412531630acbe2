"""From a `Collection` to the tables the plots draw: every computation behind a figure lives here.

Seed bands are ``mean +/- t_{0.975, k-1} * sd / sqrt(k)`` over the ``k`` seeds of a configuration (a
95% t-interval of the mean; a single seed gives a band of zero width, labelled ``n = 1``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import pandas as pd

from bounds.formulas import estimate_mean

from .summary import select


def _band(values: pd.Series) -> dict[str, float]:
    """Mean and 95% t-interval (`bounds.formulas.estimate_mean`) of the non-missing values."""
    v = values.dropna().to_numpy(dtype=float)
    k = len(v)
    if k < 2 or not np.isfinite(v).all():  # one seed: zero width; an infinite value has no interval
        mean = float(v.mean()) if k else math.nan
        half = 0.0 if k < 2 else math.nan
        return {"mean": mean, "low": mean - half, "high": mean + half, "n": k}
    e = estimate_mean(v)
    return {"mean": e.value, "low": e.ci_low, "high": e.ci_high, "n": k}


def _where(frame: pd.DataFrame, where: Mapping[str, object] | None) -> pd.DataFrame:
    """The rows whose (config) columns equal ``where``."""
    for column, value in (where or {}).items():
        frame = frame[frame[column] == value]
    return frame


def p_panel(summary: pd.DataFrame, n_instances: int) -> pd.DataFrame:
    """The p panel of a study: LoRA runs at ``N = n_instances``, with plain LoRA (``p = 0, N = 1``) as their
    ``p = 0`` point (AdaLoRA runs are left out; the paper's Figure 5 is of LoRA)."""
    lora = summary["method"] == "lora" if "method" in summary else True
    return summary[lora & ((summary["n_instances"] == n_instances) |
                           ((summary["dropout_rate"] == 0) & (summary["n_instances"] == 1)))]


def metric_over(summary: pd.DataFrame, x: str, series: Mapping[str, str], *,
                where: Mapping[str, object] | None = None) -> pd.DataFrame:
    """Seed bands of summary quantities over config column ``x``.

    ``series`` maps a label to a summary quantity without keys (e.g. ``{"ensemble": "test_accuracy_ensemble"}``).
    Returns ``[x, series, mean, low, high, n]`` for `plots.plot_metric_over`.
    """
    rows = []
    base = _where(summary, where)
    for label, name in series.items():
        for value, g in select(base, name).groupby(x):
            rows.append({x: value, "series": label, **_band(g["value"])})
    return pd.DataFrame(rows, columns=[x, "series", "mean", "low", "high", "n"])


def label_runs(runs: pd.DataFrame) -> pd.Series:
    """A readable label per run configuration: ``LoRA`` at p = 0 and N = 1, else ``p=0.3, N=4``."""
    def one(r):
        prefix = "AdaLoRA" if r["method"] == "adalora" else "LoRA"
        if r["dropout_rate"] == 0 and r["n_instances"] == 1:
            return prefix
        return f"{prefix} Dropout p={r['dropout_rate']:g}, N={r['n_instances']}"
    return runs.apply(one, axis=1)


def loss_curves(curves: pd.DataFrame, *, predictor: str = "ensemble",
                where_each: Mapping[str, Mapping[str, object]]) -> pd.DataFrame:
    """Train and test risk over steps per labelled configuration, averaged over seeds (Figure 1).

    ``where_each`` maps a series label to the config filter that selects its runs.
    Returns ``[series, split, step, risk]``.
    """
    rows = []
    for label, where in where_each.items():
        sel = _where(curves[curves["predictor"] == predictor], where)
        for (split, step), g in sel.groupby(["split", "step"]):
            rows.append({"series": label, "split": split, "step": step, "risk": float(g["risk"].mean())})
    return pd.DataFrame(rows, columns=["series", "split", "step", "risk"])


def ece_over_training(curves: pd.DataFrame, *, where_each: Mapping[str, Mapping[str, object]],
                      predictor: str = "ensemble", split: str = "test") -> pd.DataFrame:
    """ECE of the evaluated predictive over steps per labelled configuration. ``[series, step, ece]``."""
    rows = []
    for label, where in where_each.items():
        sel = _where(curves[(curves["predictor"] == predictor) & (curves["split"] == split)], where)
        for step, g in sel.groupby("step"):
            rows.append({"series": label, "step": step, "ece": float(g["ece"].mean())})
    return pd.DataFrame(rows, columns=["series", "step", "ece"])


def reliability(bins: pd.DataFrame, *, where_each: Mapping[str, Mapping[str, object]],
                predictor: str = "ensemble", split: str = "test") -> pd.DataFrame:
    """Reliability bins at each run's final step, pooled over seeds (counts add, means are weighted).

    Returns ``[series, confidence, accuracy, count]`` without empty bins.
    """
    rows = []
    for label, where in where_each.items():
        sel = _where(bins[(bins["predictor"] == predictor) & (bins["split"] == split)], where)
        if sel.empty:
            continue
        last = sel[sel["step"] == sel.groupby("run_id")["step"].transform("max")]
        for _, g in last[last["count"] > 0].groupby("bin"):
            w = g["count"].to_numpy(dtype=float)
            rows.append({"series": label, "confidence": float(np.average(g["confidence"], weights=w)),
                         "accuracy": float(np.average(g["accuracy"], weights=w)), "count": int(w.sum())})
    return pd.DataFrame(rows, columns=["series", "confidence", "accuracy", "count"])


def ablation(summary: pd.DataFrame, drop_test: pd.DataFrame, *, dropout_rate: float, n_instances: int
             ) -> pd.DataFrame:
    """The train/test dropout ablation of the paper's Figure 4, test accuracy with seed bands.

    Drop: trained with LoRA Dropout, tested with the ensemble. Drop_train: same runs, tested unmasked
    (the ``full`` predictor). Drop_test: plain LoRA runs tested with a LoRA Dropout ensemble at the
    same ``p`` (``drop_test`` table, one row per LoRA run). NoDrop: plain LoRA runs, unmasked.
    Returns ``[variant, mean, low, high, n]``.
    """
    dropped = {"dropout_rate": dropout_rate, "n_instances": n_instances}
    plain = {"dropout_rate": 0.0, "n_instances": 1}
    variants = [
        ("Drop", select(_where(summary, dropped), "test_accuracy_ensemble")["value"]),
        ("Drop_train", select(_where(summary, dropped), "test_accuracy_full")["value"]),
        ("Drop_test", drop_test["accuracy"] if len(drop_test) else pd.Series(dtype=float)),
        ("NoDrop", select(_where(summary, plain), "test_accuracy_full")["value"]),
    ]
    return pd.DataFrame([{"variant": v, **_band(values)} for v, values in variants],
                        columns=["variant", "mean", "low", "high", "n"])


def bound_vs_p(summary: pd.DataFrame, *, where: Mapping[str, object] | None = None,
               report: str = "theorem44") -> pd.DataFrame:
    """Measured gap (full predictor) and the Theorem 4.4 bound on it, over ``p``.

    A ``p`` counts as vacuous when the bound is vacuous for any of its seeds (the bound is then
    ``inf``); otherwise ``bound_gap`` is the mean over seeds. Returns
    ``[p, gap_mean, gap_low, gap_high, bound_gap, vacuous, n]``.
    """
    base = _where(summary, where)
    rows = []
    for p, g in base.groupby("dropout_rate"):
        gap = _band(select(g, "gap_full")["value"])
        vac = select(g, "vacuous", report=report)["value"]
        bound = select(g, "bound_on_measured", report=report)["value"]
        if vac.empty:
            continue  # no probes for this p: nothing to hold the gap against
        vacuous = bool((vac > 0).any())
        rows.append({"p": p, "gap_mean": gap["mean"], "gap_low": gap["low"], "gap_high": gap["high"],
                     "bound_gap": math.inf if vacuous else float(bound.mean()), "vacuous": vacuous, "n": gap["n"]})
    return pd.DataFrame(rows, columns=["p", "gap_mean", "gap_low", "gap_high", "bound_gap", "vacuous", "n"])


def stability(summary: pd.DataFrame, runs: pd.DataFrame) -> pd.DataFrame:
    """Measured ``beta_hat`` per method (95% interval from its standard error) and Prop. 4.2's ``beta``.

    Returns ``[label, method, beta_hat, low, high, beta_theory]`` (``beta_theory`` inf where vacuous;
    ``low`` clipped at 0, since ``beta_hat`` is a mean of absolute loss differences).
    """
    labels = dict(zip(runs["run_id"], label_runs(runs), strict=True))
    rows = []
    for r in select(summary, "beta_hat").itertuples():
        theory = select(summary[summary["run_id"] == r.run_id], "bound", report=r.report)["value"]
        half = 1.96 * r.stderr if np.isfinite(r.stderr) else 0.0
        rows.append({"label": f"{labels[r.run_id]} (seed {runs.set_index('run_id').loc[r.run_id, 'seed']})",
                     "method": r.estimator, "beta_hat": r.value, "low": max(r.value - half, 0.0),
                     "high": r.value + half, "beta_theory": float(theory.iloc[0]) if len(theory) else math.inf})
    return pd.DataFrame(rows, columns=["label", "method", "beta_hat", "low", "high", "beta_theory"])


def compression(table: pd.DataFrame, *, where: Mapping[str, object] | None = None) -> pd.DataFrame:
    """Ensemble and mean member risk and the Jensen gap over the ensemble size, averaged over seeds.

    The interval is the mean of the per-seed t-intervals' half widths around the mean gap.
    Returns ``[n_test, split, ensemble_risk, member_risk, jensen_gap, gap_low, gap_high]``.
    """
    sel = _where(table, where)
    rows = []
    for (n, split), g in sel.groupby(["n_members", "split"]):
        half = float((g["jensen_gap_ci_high"] - g["jensen_gap_ci_low"]).mean() / 2)
        gap = float(g["jensen_gap"].mean())
        rows.append({"n_test": n, "split": split, "ensemble_risk": float(g["ensemble_risk"].mean()),
                     "member_risk": float(g["member_risk"].mean()), "jensen_gap": gap,
                     "gap_low": gap - half, "gap_high": gap + half})
    return pd.DataFrame(rows, columns=["n_test", "split", "ensemble_risk", "member_risk", "jensen_gap",
                                       "gap_low", "gap_high"])


def sparsity(modules: pd.DataFrame) -> pd.DataFrame:
    """Realised zero fraction of ``dW_hat`` per module against the nominal ``2p - p^2``. ``[p, nominal, realised]``."""
    sel = modules[modules["dropout_rate"] > 0]
    return pd.DataFrame({"p": sel["dropout_rate"], "nominal": sel["nominal_sparsity"],
                         "realised": sel["dw_zero_fraction"]})


#: Summary rows ``(quantity, report)`` of `certificate_over`: the PAC-Bayes dropout certificate
#: (bounds.report.certificate) and that of a learned posterior (bounds.report.learned; NaN where not learned).
CERTIFICATE_SERIES = {"certificate": ("certificate", "pacbayes_dropout"), "measured": ("measured", "pacbayes_dropout"),
                      "ensemble": ("certificate", "pacbayes_dropout_ensemble"),
                      "learned": ("certificate", "pacbayes_dropout_learned"),
                      "learned_measured": ("measured", "pacbayes_dropout_learned")}


def certificate_over(summary: pd.DataFrame, x: str = "dropout_rate", *,
                     where: Mapping[str, object] | None = None, report: str = "theorem44") -> pd.DataFrame:
    """The PAC-Bayes dropout certificate over config column ``x``, beside the paper's bound.

    Per value of ``x`` with certified runs, seed bands of: the best certificate on the Gibbs member's
    0-1 error (``certificate``), the measured test Gibbs 0-1 error of the same posterior
    (``measured``), the ensemble's 0-1 certificate ``min(1, 2 x linear certificate)``
    (``ensemble``), and, where a posterior was learned (``certify --learn-posterior``), its certificate
    and measured test Gibbs error (``learned``, ``learned_measured``; NaN elsewhere). ``paper`` says what the paper's Theorem 4.4 gives at that ``x``: ``finite``
    (``paper_bound`` is the mean over seeds of its bound on the test risk, cross-entropy), ``vacuous``
    (for any seed; ``paper_bound`` inf) or ``not measured`` (no curvature probes; NaN). Returns
    ``[x, certificate, certificate_low, certificate_high, measured, measured_low, measured_high,
    ensemble, ensemble_low, ensemble_high, learned, learned_low, learned_high, learned_measured,
    learned_measured_low, learned_measured_high, paper_bound, paper, n]`` (``n``: certified seeds).
    """
    columns = [x, *(f"{s}{e}" for s in CERTIFICATE_SERIES for e in ("", "_low", "_high")), "paper_bound", "paper",
               "n"]
    rows = []
    for value, g in _where(summary, where).groupby(x):
        name, report_name = CERTIFICATE_SERIES["certificate"]
        cert = select(g, name, report=report_name)
        if cert.empty:
            continue  # not certified at this x
        row: dict[str, object] = {x: value}
        for label, (name, report_name) in CERTIFICATE_SERIES.items():
            band = _band(select(g, name, report=report_name)["value"])
            row.update({label: band["mean"], f"{label}_low": band["low"], f"{label}_high": band["high"]})
        vac = select(g, "vacuous", report=report)["value"]
        if vac.empty:
            row.update(paper_bound=math.nan, paper="not measured")
        elif (vac > 0).any():
            row.update(paper_bound=math.inf, paper="vacuous")
        else:
            row.update(paper_bound=float(select(g, "bound", report=report)["value"].mean()), paper="finite")
        row["n"] = len(cert)
        rows.append(row)
    return pd.DataFrame(rows, columns=columns)
