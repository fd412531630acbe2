"""Plots: ``plot_*(table, ax=None) -> Axes``. They only draw.

Every input is a tidy, already-aggregated table (built by `analysis.tables`); a plot selects columns
and draws them, so what a figure shows can be checked on its table. Columns each plot expects are
listed in its docstring.
"""

from __future__ import annotations

# No backend is chosen here: a notebook draws inline, and the command line picks a file backend itself
# (analysis.cli.main), so importing the plots never changes how figures are shown.
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.ticker import ScalarFormatter, SymmetricalLogLocator

PALETTE = plt.get_cmap("tab10")


def _ax(ax):
    if ax is None:
        _, ax = plt.subplots(figsize=(5, 3.6))
    return ax


def _require(table: pd.DataFrame, columns: list[str], plot: str) -> None:
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise ValueError(f"{plot} needs column(s) {missing}; got {list(table.columns)}")


def plot_metric_over(table: pd.DataFrame, x: str, ylabel: str, ax=None, title: str | None = None):
    """Lines with bands: one line per ``series``; columns ``[x, series, mean, low, high, n]``.

    Used for the paper's Figure 5 (accuracy over ``p`` and over ``N``, seed bands).
    """
    _require(table, [x, "series", "mean", "low", "high"], "plot_metric_over")
    ax = _ax(ax)
    for k, (series, g) in enumerate(table.groupby("series", sort=False)):
        g = g.sort_values(x)
        ax.plot(g[x], g["mean"], marker="o", color=PALETTE(k), label=str(series))
        ax.fill_between(g[x], g["low"], g["high"], color=PALETTE(k), alpha=0.2, linewidth=0)
    ax.set_xlabel(x)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    ax.legend(frameon=False, fontsize=8)
    return ax


def plot_loss_curves(table: pd.DataFrame, ax=None):
    """Train (dashed) and test (solid) loss over steps per ``series`` (Figure 1).

    Columns ``[series, split, step, risk]``.
    """
    _require(table, ["series", "split", "step", "risk"], "plot_loss_curves")
    ax = _ax(ax)
    for k, (series, g) in enumerate(table.groupby("series", sort=False)):
        for split, style in (("train", "--"), ("test", "-")):
            s = g[g["split"] == split].sort_values("step")
            ax.plot(s["step"], s["risk"], style, color=PALETTE(k), label=f"{series} ({split})")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("cross-entropy")
    ax.legend(frameon=False, fontsize=8)
    return ax


def plot_ablation(table: pd.DataFrame, ax=None):
    """Bars with intervals: Drop / Drop_train / Drop_test / NoDrop (Figure 4).

    Columns ``[variant, mean, low, high]``; bars in table order.
    """
    _require(table, ["variant", "mean", "low", "high"], "plot_ablation")
    ax = _ax(ax)
    pos = np.arange(len(table))
    err = np.vstack([table["mean"] - table["low"], table["high"] - table["mean"]])
    ax.bar(pos, table["mean"], yerr=err, color=[PALETTE(k) for k in range(len(table))], capsize=3)
    ax.set_xticks(pos, table["variant"])
    ax.set_ylabel("test accuracy")
    ax.set_xlabel("where the LoRA Dropout masks are on (training, test, both, neither)")
    low = float(np.nanmin(table["low"]))
    ax.set_ylim(max(0.0, low - 0.05), min(1.0, float(np.nanmax(table["high"])) + 0.03))
    return ax


def plot_ece_over_training(table: pd.DataFrame, ax=None):
    """ECE of the evaluated predictive over steps, one line per ``series``; columns ``[series, step, ece]``."""
    _require(table, ["series", "step", "ece"], "plot_ece_over_training")
    ax = _ax(ax)
    for k, (series, g) in enumerate(table.groupby("series", sort=False)):
        g = g.sort_values("step")
        ax.plot(g["step"], g["ece"], marker=".", color=PALETTE(k), label=str(series))
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("ECE (15 bins)")
    ax.legend(frameon=False, fontsize=8)
    return ax


def plot_reliability(table: pd.DataFrame, ax=None):
    """Reliability diagram: accuracy against confidence per bin, one line per ``series`` (Figure 3).

    Columns ``[series, confidence, accuracy, count]`` (empty bins already removed).
    """
    _require(table, ["series", "confidence", "accuracy", "count"], "plot_reliability")
    ax = _ax(ax)
    ax.plot([0, 1], [0, 1], ":", color="grey", label="perfect calibration")
    for k, (series, g) in enumerate(table.groupby("series", sort=False)):
        g = g.sort_values("confidence")
        ax.plot(g["confidence"], g["accuracy"], marker="o", color=PALETTE(k), label=str(series))
    ax.set_xlabel("confidence")
    ax.set_ylabel("accuracy")
    ax.set_xlim(0.45, 1.0)
    ax.set_ylim(0.0, 1.0)
    ax.legend(frameon=False, fontsize=8)
    return ax


def plot_bound_vs_p(table: pd.DataFrame, ax=None):
    """Measured generalisation gap against the Theorem 4.4 bound on it, over ``p``.

    Columns ``[p, gap_mean, gap_low, gap_high, bound_gap, vacuous]``; ``bound_gap`` is the bound's gap
    term (``inf`` where vacuous). Vacuous ``p`` values are shaded and labelled, never drawn as numbers.
    """
    _require(table, ["p", "gap_mean", "gap_low", "gap_high", "bound_gap", "vacuous"], "plot_bound_vs_p")
    ax = _ax(ax)
    t = table.sort_values("p")
    ax.plot(t["p"], t["gap_mean"], marker="o", color=PALETTE(0), label="measured gap (test - train risk)")
    ax.fill_between(t["p"], t["gap_low"], t["gap_high"], color=PALETTE(0), alpha=0.2, linewidth=0)
    ok = t[~t["vacuous"].astype(bool)]
    if len(ok):
        ax.plot(ok["p"], ok["bound_gap"], marker="s", color=PALETTE(3), label="Thm 4.4 bound on the gap")
    ps = t["p"].to_numpy()
    half = (np.diff(ps).min() / 2) if len(ps) > 1 else 0.05
    shaded = False
    for p in t.loc[t["vacuous"].astype(bool), "p"]:
        ax.axvspan(p - half, p + half, color="grey", alpha=0.25,
                   label=None if shaded else "vacuous: Lambda_min + 2 lam s <= 0")
        shaded = True
    if len(ok):  # a finite bound can be orders of magnitude above the gap: a log axis with labelled 1-2-5 ticks
        ax.set_yscale("symlog", linthresh=0.01)
        ax.yaxis.set_major_locator(SymmetricalLogLocator(linthresh=0.01, base=10, subs=(1.0, 2.0, 5.0)))
        ax.yaxis.set_major_formatter(ScalarFormatter())
    ax.set_xlabel("dropout rate p")
    ax.set_ylabel("risk gap")
    ax.legend(frameon=False, fontsize=8)
    return ax


def plot_stability(table: pd.DataFrame, ax=None):
    """Measured ``beta_hat`` per estimator (with intervals) against the theoretical ``beta`` (Prop. 4.2).

    Columns ``[label, method, beta_hat, low, high, beta_theory]``; ``label`` names the run (x axis);
    ``beta_theory`` is ``inf`` where Prop. 4.2 is vacuous (drawn as a marker at the top, labelled).
    """
    _require(table, ["label", "method", "beta_hat", "low", "high", "beta_theory"], "plot_stability")
    ax = _ax(ax)
    labels = list(dict.fromkeys(table["label"]))
    pos = {label: k for k, label in enumerate(labels)}
    methods = list(dict.fromkeys(table["method"]))
    width = 0.7 / max(len(methods), 1)
    values = table[["beta_hat", "low", "high"]].to_numpy(dtype=float).ravel()
    positive = values[np.isfinite(values) & (values > 0)]
    # a log axis cannot show 0: an interval reaching 0 is drawn down to the axis floor, a decade below the data
    floor = positive.min() / 10 if positive.size else 1e-6
    ax.set_yscale("log")
    for k, (method, g) in enumerate(table.groupby("method", sort=False)):
        x = np.array([pos[v] for v in g["label"]]) + (k - (len(methods) - 1) / 2) * width
        err = np.vstack([g["beta_hat"] - g["low"].clip(lower=floor), g["high"] - g["beta_hat"]]).clip(min=0)
        ax.errorbar(x, g["beta_hat"], yerr=err, fmt="o", color=PALETTE(k), label=f"measured ({method})", capsize=3)
    theory = table.drop_duplicates("label")
    finite = theory[np.isfinite(theory["beta_theory"])]
    if len(finite):
        ax.scatter([pos[v] for v in finite["label"]], finite["beta_theory"], marker="_", s=400, color="black",
                   label="Prop. 4.2 beta")
    ax.set_ylim(bottom=floor)
    vac = theory[~np.isfinite(theory["beta_theory"])]
    if len(vac):
        top = ax.get_ylim()[1]
        ax.scatter([pos[v] for v in vac["label"]], [top] * len(vac), marker="^", color="grey",
                   label="Prop. 4.2 vacuous", clip_on=False)
    ax.set_xticks(range(len(labels)), labels, rotation=20, fontsize=8)
    ax.set_ylabel("pointwise stability")
    ax.set_xlabel("run")
    ax.legend(frameon=False, fontsize=7, loc="lower center")  # the estimators sit left and right of centre
    return ax


def plot_compression(table: pd.DataFrame, ax=None):
    """Ensemble risk against mean member risk over the ensemble size (Thm 4.5).

    Columns ``[n_test, split, ensemble_risk, member_risk]``.
    """
    _require(table, ["n_test", "split", "ensemble_risk", "member_risk"], "plot_compression")
    ax = _ax(ax)
    for k, (split, g) in enumerate(table.groupby("split", sort=False)):
        g = g.sort_values("n_test")
        ax.plot(g["n_test"], g["member_risk"], "--", marker=".", color=PALETTE(k), label=f"mean member ({split})")
        ax.plot(g["n_test"], g["ensemble_risk"], "-", marker="o", color=PALETTE(k), label=f"ensemble ({split})")
    ax.set_xlabel("ensemble size N_test")
    ax.set_ylabel("cross-entropy")
    ax.legend(frameon=False, fontsize=8)
    return ax


def plot_jensen_gap(table: pd.DataFrame, ax=None):
    """Jensen gap ``mean member risk - ensemble risk`` with its interval over ``N_test`` (Thm 4.5: >= 0).

    Columns ``[n_test, split, jensen_gap, gap_low, gap_high]``.
    """
    _require(table, ["n_test", "split", "jensen_gap", "gap_low", "gap_high"], "plot_jensen_gap")
    ax = _ax(ax)
    ax.axhline(0.0, color="grey", lw=0.8)
    for k, (split, g) in enumerate(table.groupby("split", sort=False)):
        g = g.sort_values("n_test")
        ax.plot(g["n_test"], g["jensen_gap"], marker="o", color=PALETTE(k), label=split)
        ax.fill_between(g["n_test"], g["gap_low"], g["gap_high"], color=PALETTE(k), alpha=0.2, linewidth=0)
    ax.set_xlabel("ensemble size N_test")
    ax.set_ylabel("Jensen gap (nats)")
    ax.legend(frameon=False, fontsize=8)
    return ax


def plot_sparsity(table: pd.DataFrame, ax=None):
    """Realised zero fraction of ``dW_hat`` against the nominal ``s = 2p - p^2``.

    Columns ``[p, nominal, realised]`` (one row per module and run); the curve ``2p - p^2`` is drawn
    from ``nominal`` values, not recomputed.
    """
    _require(table, ["p", "nominal", "realised"], "plot_sparsity")
    ax = _ax(ax)
    curve = table.drop_duplicates("p").sort_values("p")
    ax.plot(curve["p"], curve["nominal"], "-", color="black", label="nominal s = 2p - p^2")
    ax.scatter(table["p"], table["realised"], s=12, alpha=0.6, color=PALETTE(0), label="realised (per module)")
    ax.set_xlabel("dropout rate p")
    ax.set_ylabel("zero fraction of dW_hat")
    ax.legend(frameon=False, fontsize=8)
    return ax


_AXIS_LABELS = {"dropout_rate": "dropout rate p", "n_instances": "instances N"}


def plot_certificate_vs_p(table: pd.DataFrame, ax=None, x: str = "dropout_rate"):
    """The PAC-Bayes dropout certificate (the toolkit's own) against the measured test Gibbs error, over
    ``x`` (``p`` by default; ``n_instances`` for the N panel).

    Columns ``[x, certificate, certificate_low, certificate_high, measured, measured_low, measured_high,
    ensemble, paper_bound, paper]`` (`tables.certificate_over`). Lines with seed bands for the certificate
    and the measured error, a dashed line for the ensemble's 0-1 certificate, the paper's Theorem 4.4
    bound as markers where ``paper`` is ``finite`` and a grey band "Thm 4.4 vacuous" where it is
    ``vacuous`` (nothing where ``not measured``), and a horizontal line at 1, where a certificate says
    nothing. Where the table has a learned posterior (``learned``, ``learned_measured``), its certificate
    and measured error too.
    """
    _require(table, [x, "certificate", "certificate_low", "certificate_high", "measured", "measured_low",
                     "measured_high", "ensemble", "paper_bound", "paper"], "plot_certificate_vs_p")
    ax = _ax(ax)
    t = table.sort_values(x)
    for k, (column, label) in enumerate((("certificate", "certificate (Gibbs 0-1 error)"),
                                         ("measured", "measured test Gibbs 0-1 error"))):
        ax.plot(t[x], t[column], marker="o", color=PALETTE(k), label=label)
        ax.fill_between(t[x], t[f"{column}_low"], t[f"{column}_high"], color=PALETTE(k), alpha=0.2, linewidth=0)
    ax.plot(t[x], t["ensemble"], "--", marker=".", color=PALETTE(2), label="ensemble 0-1 certificate min(1, 2c)")
    if "learned" in t and t["learned"].notna().any():  # certify --learn-posterior
        learned = t[t["learned"].notna()]
        ax.plot(learned[x], learned["learned"], "-.", marker="D", color=PALETTE(4),
                label="learned posterior: certificate")
        ax.plot(learned[x], learned["learned_measured"], ":", marker="d", color=PALETTE(4),
                label="learned posterior: measured test Gibbs 0-1 error")
    finite = t[t["paper"] == "finite"]
    if len(finite):
        ax.plot(finite[x], finite["paper_bound"], "s", color=PALETTE(3), label="Thm 4.4 bound (test cross-entropy)")
    xs = t[x].to_numpy(dtype=float)
    half = (np.diff(xs).min() / 2) if len(xs) > 1 else 0.05
    shaded = False
    for value in t.loc[t["paper"] == "vacuous", x]:
        ax.axvspan(value - half, value + half, color="grey", alpha=0.25, label=None if shaded else "Thm 4.4 vacuous")
        shaded = True
    ax.axhline(1.0, color="black", lw=0.8, ls=":", label="1 = vacuous")
    top = max([1.05, *(1.05 * finite["paper_bound"].to_numpy(dtype=float))])
    ax.set_ylim(0.0, top)
    ax.set_xlabel(_AXIS_LABELS.get(x, x))
    ax.set_ylabel("0-1 error")
    ax.legend(frameon=False, fontsize=7)
    return ax
