"""The paper's claims (theory.md section 5) and the theory's, checked on a collected study.

Each check returns a `Claim`: whether it held on our measurements (True / False / None when the
study does not measure it), with the numbers and seeds it rests on. Nothing is tuned to pass; a
claim that does not hold at the study's scale is reported as not holding.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats

from .collect import Collection
from .figures import Focus
from .tables import quantity


@dataclass(frozen=True)
class Claim:
    name: str
    statement: str
    held: bool | None
    evidence: str


def _values(summary: pd.DataFrame, name: str, **where) -> pd.Series:
    sel = quantity(summary, name)
    for k, v in where.items():
        sel = sel[sel[k] == v]
    return sel.set_index("seed")["value"].sort_index()


def _fmt(values: pd.Series) -> str:
    if values.empty:
        return "n/a"
    seeds = ", ".join(str(s) for s in values.index)
    if len(values) == 1:
        return f"{values.iloc[0]:.4f} (seed {seeds})"
    half = stats.t.ppf(0.975, len(values) - 1) * values.std(ddof=1) / math.sqrt(len(values))
    return f"{values.mean():.4f} +/- {half:.4f} (95% t-interval over seeds {seeds})"


def _paired(a: pd.Series, b: pd.Series) -> str:
    """Mean paired difference a - b over common seeds, with a t-interval when there are >= 2 seeds."""
    common = a.index.intersection(b.index)
    if common.empty:
        return ""
    d = a[common] - b[common]
    if len(d) == 1:
        return f"difference {d.iloc[0]:+.4f} (one seed: no interval)"
    half = stats.t.ppf(0.975, len(d) - 1) * d.std(ddof=1) / math.sqrt(len(d))
    significant = "excludes 0" if abs(d.mean()) > half else "includes 0"
    return f"paired difference {d.mean():+.4f} +/- {half:.4f} (interval {significant})"


def beats_plain(summary: pd.DataFrame, focus: Focus, method: str = "lora") -> Claim:
    name = "AdaLoRA" if method == "adalora" else "LoRA"
    statement = f"{name} + Dropout has higher test accuracy than {name}"
    ours = _values(summary, "test_accuracy_ensemble", method=method, dropout_rate=focus.dropout_rate,
                   n_instances=focus.n_instances)
    plain = _values(summary, "test_accuracy_full", method=method, dropout_rate=0.0, n_instances=1)
    if ours.empty or plain.empty:
        return Claim(f"{method}_dropout_beats_{method}", statement, None, f"no {name} runs in this study")
    held = bool(ours.mean() > plain.mean())
    return Claim(f"{method}_dropout_beats_{method}", statement, held,
                 f"{name} Dropout p={focus.dropout_rate:g}, N={focus.n_instances} (ensemble): {_fmt(ours)}; "
                 f"{name}: {_fmt(plain)}; {_paired(ours, plain)}")


def _curve(summary: pd.DataFrame, x: str, name: str, **where) -> pd.Series:
    sel = quantity(summary, name)
    for k, v in where.items():
        sel = sel[sel[k] == v]
    return sel.groupby(x)["value"].mean().sort_index()


def inverted_u_over_p(summary: pd.DataFrame, focus: Focus) -> Claim:
    statement = "test accuracy over p is an inverted U (best at an interior p)"
    sel = summary[(summary["method"] == "lora") & ((summary["n_instances"] == focus.n_instances) |
                                                   ((summary["dropout_rate"] == 0) & (summary["n_instances"] == 1)))]
    acc = quantity(sel, "test_accuracy_ensemble")
    curve = acc.groupby("dropout_rate")["value"].mean().sort_index()
    if len(curve) < 3:
        return Claim("inverted_u_over_p", statement, None, f"needs >= 3 values of p, have {list(curve.index)}")
    best = curve.idxmax()
    held = bool(curve.index[0] < best < curve.index[-1])
    pairs = ", ".join(f"p={p:g}: {v:.4f}" for p, v in curve.items())
    return Claim("inverted_u_over_p", statement, held,
                 f"mean test accuracy (ensemble; p=0 is plain LoRA) {pairs}; best at p={best:g}; "
                 f"seeds {sorted(set(acc['seed']))}")


def rises_with_n(summary: pd.DataFrame, focus: Focus) -> Claim:
    statement = "test accuracy rises with the number of instances N"
    curve = _curve(summary, "n_instances", "test_accuracy_ensemble", method="lora",
                   dropout_rate=focus.dropout_rate)
    if len(curve) < 2:
        return Claim("rises_with_n", statement, None, f"needs >= 2 values of N, have {list(curve.index)}")
    if len(curve) > 2 and curve.nunique() > 1:
        rho = float(stats.spearmanr(curve.index, curve.values).statistic)
    else:
        rho = float(np.sign(curve.iloc[-1] - curve.iloc[0]))
    held = bool(curve.iloc[-1] > curve.iloc[0] and rho > 0)
    pairs = ", ".join(f"N={n}: {v:.4f}" for n, v in curve.items())
    return Claim("rises_with_n", statement, held,
                 f"mean test accuracy (ensemble) at p={focus.dropout_rate:g}: {pairs}; Spearman rho {rho:.2f}")


def ablation_order(ablation: pd.DataFrame) -> Claim:
    statement = "ablation order Drop > Drop_train > NoDrop > Drop_test"
    means = ablation.set_index("variant")["mean"]
    if means.isna().any() or len(means) < 4:
        return Claim("ablation_order", statement, None, "some ablation variants were not measured")
    order = ["Drop", "Drop_train", "NoDrop", "Drop_test"]
    held = bool(all(means[a] > means[b] for a, b in zip(order, order[1:], strict=False)))
    measured = ", ".join(f"{v} {means[v]:.4f}" for v in order)
    return Claim("ablation_order", statement, held, f"mean test accuracy: {measured}")


def lower_ece(summary: pd.DataFrame, focus: Focus) -> Claim:
    statement = "ECE is lower with LoRA Dropout"
    ours = _values(summary, "test_ece_ensemble", method="lora", dropout_rate=focus.dropout_rate,
                   n_instances=focus.n_instances)
    plain = _values(summary, "test_ece_deterministic", method="lora", dropout_rate=0.0, n_instances=1)
    if ours.empty or plain.empty:
        return Claim("lower_ece", statement, None, "no LoRA / LoRA Dropout pair in this study")
    return Claim("lower_ece", statement, bool(ours.mean() < plain.mean()),
                 f"test ECE (15 bins): LoRA Dropout (ensemble) {_fmt(ours)}; LoRA {_fmt(plain)}; "
                 f"{_paired(ours, plain)}")


def linear_cost(runs: pd.DataFrame, focus: Focus) -> Claim:
    statement = "training cost grows about linearly in N"
    sel = runs[(runs["method"] == "lora") & (runs["dropout_rate"] == focus.dropout_rate)]
    walls = sel.groupby("n_instances")["wall_s"].mean().sort_index()
    if len(walls) < 2:
        return Claim("linear_cost", statement, None, "needs runs at >= 2 values of N")
    lo, hi = walls.index[0], walls.index[-1]
    ratio = walls[hi] / walls[lo]
    # "about linear": within a factor of two of N_hi / N_lo either way (fixed costs pull it down)
    held = bool(0.5 * hi / lo <= ratio <= 2.0 * hi / lo)
    return Claim("linear_cost", statement, held,
                 f"run wall time (training and evaluation) N={hi} / N={lo}: {ratio:.2f} (linear: {hi / lo:g}; "
                 f"held if within a factor 2; evaluation cost also grows with N_test = N)")


def jensen_holds(compression: pd.DataFrame) -> Claim:
    statement = "Thm 4.5: the ensemble's risk is at most the mean member's (Jensen gap >= 0)"
    sel = compression[compression["average"] == "probs"] if "average" in compression else compression
    if sel.empty:
        return Claim("jensen", statement, None, "no ensembles averaging probabilities")
    worst = sel["jensen_gap"].min()
    held = bool(worst >= -1e-6)
    return Claim("jensen", statement, held,
                 f"smallest mean Jensen gap over runs, splits and N_test: {worst:.2e} nats "
                 f"({len(sel)} (run, split, N_test) cells); largest {sel['jensen_gap'].max():.4f}")


def bound_vs_measured(summary: pd.DataFrame) -> list[Claim]:
    """Theorem 4.4 on each run with probes: vacuous or not, and whether the measured gap is below it."""
    out = []
    vac = quantity(summary, "vacuous:theorem44")
    if vac.empty:
        return [Claim("theorem44", "Thm 4.4 bounds the measured generalisation gap", None,
                      "no run has curvature probes (lora-dropout probe RUN_DIR --curvature)")]
    lines, held, evaluated = [], True, 0
    for run_id, g in summary[summary["run_id"].isin(vac["run_id"])].groupby("run_id"):
        q = g.set_index("quantity")["value"]
        p = g["dropout_rate"].iloc[0]
        eig = q.get("hessian_min_eig:delta_w", math.nan)
        if q["vacuous:theorem44"] > 0:
            lines.append(f"p={p:g} ({run_id}): vacuous (Lambda_min = {eig:.3g})")
        else:
            ok = q["measured:theorem44"] <= q["bound_on_measured:theorem44"]
            held &= bool(ok)
            evaluated += 1
            lines.append(f"p={p:g} ({run_id}): measured gap {q['measured:theorem44']:.4f} "
                         f"{'<=' if ok else '>'} bound {q['bound_on_measured:theorem44']:.4f} "
                         f"(Lambda_min = {eig:.3g})")
    psd = quantity(summary, "hessian_min_eig:delta_w")["value"]
    # a bound that is vacuous everywhere bounds nothing: not "held"
    out.append(Claim("theorem44", "Thm 4.4 bounds the measured generalisation gap (where not vacuous)",
                     held if evaluated else None,
                     "; ".join(lines) + ("" if evaluated else "; vacuous on every run, so nothing to hold")))
    out.append(Claim("psd_hessian", "Prop. 4.2's premise: the Hessian at theta(S) is PSD (Lambda_min > 0)",
                     bool((psd > 0).all()) if len(psd) else None,
                     f"measured Lambda_min (delta_w space): {', '.join(f'{v:.3g}' for v in psd)}"))
    return out


def stability_vs_theory(summary: pd.DataFrame) -> Claim:
    statement = "measured beta_hat <= Prop. 4.2's beta"
    rows = summary[summary["quantity"].str.startswith("beta_hat:")]
    if rows.empty:
        return Claim("stability", statement, None, "no stability measurements (lora-dropout probe --stability-k)")
    parts, held, evaluated = [], True, 0
    for r in rows.itertuples():
        method = r.quantity.split(":", 1)[1]
        theory = quantity(summary[summary["run_id"] == r.run_id], f"bound:prop42[{method}]")["value"]
        beta = float(theory.iloc[0]) if len(theory) else math.inf
        if math.isfinite(beta):
            held &= bool(r.value <= beta)
            evaluated += 1
        parts.append(f"{r.run_id} {method}: {r.value:.3g} vs {beta:.3g}" if math.isfinite(beta)
                     else f"{r.run_id} {method}: {r.value:.3g} vs vacuous")
    note = "" if evaluated else "; Prop. 4.2 is vacuous on every run (Lambda_min + 2 lam s <= 0)"
    return Claim("stability", statement, held if evaluated else None, "; ".join(parts) + note)


def sparsity_matches(summary: pd.DataFrame) -> Claim:
    statement = "realised zero fraction of dW_hat matches 2p - p^2"
    nominal = quantity(summary, "sparsity_nominal").set_index("run_id")["value"]
    realised = quantity(summary, "sparsity_realised").set_index("run_id")
    if nominal.empty:
        return Claim("sparsity", statement, None, "no modules tables")
    diffs = (realised["value"] - nominal[realised.index]).abs()
    held = bool((diffs < 0.02).all())
    return Claim("sparsity", statement, held, f"largest |realised - nominal| over runs: {diffs.max():.4f}")


def check_all(coll: Collection, ablation: pd.DataFrame, focus: Focus) -> list[Claim]:
    s = coll.summary
    return [
        beats_plain(s, focus, "lora"),
        beats_plain(s, focus, "adalora"),
        inverted_u_over_p(s, focus),
        rises_with_n(s, focus),
        ablation_order(ablation),
        lower_ece(s, focus),
        linear_cost(coll.runs, focus),
        jensen_holds(coll.compression),
        *bound_vs_measured(s),
        stability_vs_theory(s),
        sparsity_matches(s),
    ]
