"""Figures of a study: each drawn from its table, saved as PNG and PDF with a provenance sidecar.

The sidecar ``<name>.json`` names the commit (and whether the checkout was dirty), the runs and the
study configuration it came from, package versions, the date, the command that regenerates it, and
the plotted table itself, so every number in a figure can be traced and checked.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import pandas as pd

from bounds.runlog import write_json

from . import plots, tables
from .collect import Collection
from .presets import Focus


@dataclass(frozen=True)
class Figure:
    name: str
    title: str
    table: pd.DataFrame
    draw: Callable[..., Any]
    kwargs: dict


def study_figures(coll: Collection, drop_test: pd.DataFrame, focus: Focus) -> list[Figure]:
    """Every figure the collected study supports (a figure whose table is empty is left out)."""
    p, n = focus.dropout_rate, focus.n_instances
    plain = {"dropout_rate": 0.0, "n_instances": 1}
    main = {"dropout_rate": p, "n_instances": n}
    lora = {"method": "lora"}
    summary = coll.summary[coll.summary["method"] == "lora"] if len(coll.summary) else coll.summary
    # the p panel: LoRA Dropout at N = n, with plain LoRA as its p = 0 point
    panel = tables.p_panel(summary, n)
    accuracy = {"ensemble": "test_accuracy_ensemble", "deterministic": "test_accuracy_deterministic",
                "unmasked (full)": "test_accuracy_full"}
    risk = {"ensemble": "test_risk_ensemble", "unmasked (full)": "test_risk_full"}
    series = {"LoRA": {**plain, **lora}, f"LoRA Dropout p={p:g}, N={n}": {**main, **lora}}
    figures = [
        Figure("fig5_accuracy_over_p", f"Test accuracy over p (N = {n}; Fig. 5)",
               tables.metric_over(panel, "dropout_rate", accuracy), plots.plot_metric_over,
               {"x": "dropout_rate", "ylabel": "test accuracy"}),
        Figure("fig5_risk_over_p", f"Test risk over p (N = {n})",
               tables.metric_over(panel, "dropout_rate", risk), plots.plot_metric_over,
               {"x": "dropout_rate", "ylabel": "test cross-entropy"}),
        Figure("fig5_accuracy_over_n", f"Test accuracy over N (p = {p:g}; Fig. 5)",
               tables.metric_over(summary, "n_instances", accuracy, where={"dropout_rate": p}),
               plots.plot_metric_over, {"x": "n_instances", "ylabel": "test accuracy"}),
        Figure("fig1_loss_curves", "Train and test loss, LoRA vs LoRA Dropout (Fig. 1)",
               tables.loss_curves(coll.curves, where_each=series), plots.plot_loss_curves, {}),
        Figure("fig4_ablation", f"Train/test dropout ablation at p = {p:g} (Fig. 4)",
               tables.ablation(summary, drop_test, dropout_rate=p, n_instances=n), plots.plot_ablation, {}),
        Figure("fig3_ece_over_training", "ECE of the test predictive over training (Fig. 3)",
               tables.ece_over_training(coll.curves, where_each=series), plots.plot_ece_over_training, {}),
        Figure("fig3_reliability", "Reliability diagram, final step (Fig. 3, Table 4)",
               tables.reliability(coll.reliability, where_each=series), plots.plot_reliability, {}),
        Figure("bound_vs_p", f"Measured gap vs Theorem 4.4 (N = {n})",
               tables.bound_vs_p(panel), plots.plot_bound_vs_p, {}),
        Figure("stability_beta", "Measured beta_hat vs Prop. 4.2",
               tables.stability(coll.summary, coll.runs), plots.plot_stability, {}),
        Figure("compression_risk", f"Ensemble vs mean member risk (p = {p:g}, N = {n}; Thm 4.5)",
               tables.compression(coll.compression, where={**main, **lora}), plots.plot_compression, {}),
        Figure("compression_jensen_gap", f"Jensen gap over ensemble size (p = {p:g}, N = {n}; Thm 4.5)",
               tables.compression(coll.compression, where={**main, **lora}), plots.plot_jensen_gap, {}),
        Figure("sparsity", "Realised vs nominal sparsity of dW_hat",
               tables.sparsity(coll.modules), plots.plot_sparsity, {}),
    ]
    # the toolkit's own PAC-Bayes dropout certificate: only where the study certified runs (over N: >= 2 N)
    figures.append(Figure("certificate_vs_p", f"PAC-Bayes dropout certificate over p (N = {n}; toolkit's own)",
                          tables.certificate_over(panel, "dropout_rate"), plots.plot_certificate_vs_p,
                          {"x": "dropout_rate"}))
    over_n = tables.certificate_over(summary, "n_instances", where={"dropout_rate": p})
    if len(over_n) >= 2:
        figures.append(Figure("certificate_vs_n", f"PAC-Bayes dropout certificate over N (p = {p:g}; toolkit's own)",
                              over_n, plots.plot_certificate_vs_p, {"x": "n_instances"}))
    return [f for f in figures if len(f.table) and f.table.drop(columns=[c for c in ("n",) if c in f.table])
            .notna().any().any()]


class FigureAxesWarning(UserWarning):
    """A saved figure has an axis a reader cannot read: no label, or no labelled tick."""


def unreadable_axes(figure) -> list[str]:
    """The axes of a drawn matplotlib figure without an axis label, or without a non-empty tick label inside the
    axis's view (a log axis whose decades fall outside the data's range shows no number at all)."""
    figure.canvas.draw()
    problems = []
    for ax in figure.axes:
        for name, axis, label, limits in (("x", ax.xaxis, ax.get_xlabel(), ax.get_xlim()),
                                          ("y", ax.yaxis, ax.get_ylabel(), ax.get_ylim())):
            low, high = sorted(limits)
            shown = [t for t, loc in zip(axis.get_ticklabels(), axis.get_majorticklocs(), strict=False)
                     if t.get_visible() and t.get_text().strip() and low <= loc <= high]
            if not label.strip():
                problems.append(f"{ax.get_title() or 'axes'}: the {name} axis has no label")
            if not shown:
                problems.append(f"{ax.get_title() or 'axes'}: the {name} axis has no tick labels")
    return problems


def save_figures(figures: list[Figure], out_dir: str | Path, provenance: dict) -> list[Path]:
    """Draw and save every figure (PNG, PDF, JSON sidecar); returns the PNG paths.

    A figure with an unreadable axis (`unreadable_axes`) is still saved, with a `FigureAxesWarning`.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for fig in figures:
        figure, ax = plt.subplots(figsize=(5.5, 3.8))
        fig.draw(fig.table, ax=ax, **fig.kwargs)
        ax.set_title(fig.title, fontsize=9)
        figure.tight_layout()
        for problem in unreadable_axes(figure):
            warnings.warn(f"{fig.name}: {problem}", FigureAxesWarning, stacklevel=2)
        png = out_dir / f"{fig.name}.png"
        figure.savefig(png, dpi=150)
        figure.savefig(out_dir / f"{fig.name}.pdf")
        plt.close(figure)
        write_json(out_dir / f"{fig.name}.json", {**provenance, "figure": fig.name, "title": fig.title,
                                                  "draw": f"analysis.plots.{fig.draw.__name__}", "kwargs": fig.kwargs,
                                                  "table": fig.table.to_dict(orient="records")})
        paths.append(png)
    return paths
