"""The paper's claims (docs/experiments.md) and the theory's, checked on a collected study; also two
claims about the toolkit's own PAC-Bayes dropout certificate (section 6): that it is non-vacuous, and
that the p it selects is the p of the smallest test error.

Each check returns a `Claim` with a `Verdict`, decided by the rule of `analysis.verdicts`.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from scipy import stats

from bounds.formulas import VACUOUS_TOL, is_vacuous

from .collect import Collection
from .presets import Focus
from .summary import select, value
from .tables import p_panel
from .verdicts import Claim, Verdict, by_seed, decide, describe, over_seeds, paired, t_interval


def _plain(summary: pd.DataFrame, name: str, method: str = "lora") -> pd.Series:
    return over_seeds(summary, name, method=method, dropout_rate=0.0, n_instances=1)


def beats_plain(summary: pd.DataFrame, focus: Focus, method: str = "lora") -> Claim:
    label = "AdaLoRA" if method == "adalora" else "LoRA"
    name, statement = f"{method}_dropout_beats_{method}", f"{label} + Dropout has higher test accuracy than {label}"
    ours = over_seeds(summary, "test_accuracy_ensemble", method=method, dropout_rate=focus.dropout_rate,
                      n_instances=focus.n_instances)
    plain = _plain(summary, "test_accuracy_full", method)
    if ours.empty or plain.empty:
        return Claim(name, statement, Verdict.NOT_EVALUABLE, f"no {label} and {label} Dropout runs in this study")
    diff = paired(ours, plain)
    return Claim(name, statement, decide(diff, +1),
                 f"{label} Dropout p={focus.dropout_rate:g}, N={focus.n_instances} (ensemble): {describe(ours)}; "
                 f"{label}: {describe(plain)}; {diff.text()}")


def inverted_u_over_p(summary: pd.DataFrame, focus: Focus) -> Claim:
    """Held when the best interior ``p`` beats both ends (paired intervals exclude 0); did not hold when
    an end beats it (interval excludes 0); inconclusive otherwise."""
    statement = "test accuracy over p is an inverted U (best at an interior p)"
    sel = p_panel(summary, focus.n_instances)
    curves = by_seed(sel, "dropout_rate", "test_accuracy_ensemble")
    ps = list(curves)
    if len(ps) < 3:
        return Claim("inverted_u_over_p", statement, Verdict.NOT_EVALUABLE, f"needs >= 3 values of p, have {ps}")
    means = {p: float(v.mean()) for p, v in curves.items()}
    best = max(ps[1:-1], key=means.get)
    left, right = paired(curves[best], curves[ps[0]]), paired(curves[best], curves[ps[-1]])
    signs = (left.sign(), right.sign())
    verdict = (Verdict.HELD if signs == (1, 1) else Verdict.NOT_HELD if -1 in signs else Verdict.INCONCLUSIVE)
    pairs = ", ".join(f"p={p:g}: {m:.4f}" for p, m in means.items())
    return Claim("inverted_u_over_p", statement, verdict,
                 f"mean test accuracy (ensemble; p=0 is plain LoRA) {pairs}; best interior p={best:g}; "
                 f"against p={ps[0]:g}: {left.text()}; against p={ps[-1]:g}: {right.text()}")


def rises_with_n(summary: pd.DataFrame, focus: Focus) -> Claim:
    """Decided on the paired difference between the largest and the smallest ``N``."""
    statement = "test accuracy rises with the number of instances N"
    curves = by_seed(summary, "n_instances", "test_accuracy_ensemble", method="lora",
                     dropout_rate=focus.dropout_rate)
    ns = list(curves)
    if len(ns) < 2:
        return Claim("rises_with_n", statement, Verdict.NOT_EVALUABLE, f"needs >= 2 values of N, have {ns}")
    diff = paired(curves[ns[-1]], curves[ns[0]])
    pairs = ", ".join(f"N={n}: {v.mean():.4f}" for n, v in curves.items())
    return Claim("rises_with_n", statement, decide(diff, +1),
                 f"mean test accuracy (ensemble) at p={focus.dropout_rate:g}: {pairs}; "
                 f"N={ns[-1]} against N={ns[0]}: {diff.text()}")


ABLATION_ORDER = ("Drop", "Drop_train", "NoDrop", "Drop_test")


def ablation_arms(summary: pd.DataFrame, drop_test: pd.DataFrame, focus: Focus) -> dict[str, pd.Series]:
    """Test accuracy per seed of the four arms of the paper's Figure 4 (see `tables.ablation`)."""
    dropped = {"method": "lora", "dropout_rate": focus.dropout_rate, "n_instances": focus.n_instances}
    arms = {
        "Drop": over_seeds(summary, "test_accuracy_ensemble", **dropped),
        "Drop_train": over_seeds(summary, "test_accuracy_full", **dropped),
        "NoDrop": _plain(summary, "test_accuracy_full"),
        "Drop_test": (drop_test.set_index("seed")["accuracy"].sort_index() if len(drop_test)
                      else pd.Series(dtype=float)),
    }
    return arms


def ablation_order(summary: pd.DataFrame, drop_test: pd.DataFrame, focus: Focus) -> Claim:
    """Held when every adjacent pair of the order is decided in its favour; did not hold when one is
    decided against it; inconclusive otherwise."""
    statement = "ablation order Drop > Drop_train > NoDrop > Drop_test"
    arms = ablation_arms(summary, drop_test, focus)
    if any(v.empty for v in arms.values()):
        return Claim("ablation_order", statement, Verdict.NOT_EVALUABLE, "some ablation variants were not measured")
    diffs = [(a, b, paired(arms[a], arms[b])) for a, b in zip(ABLATION_ORDER, ABLATION_ORDER[1:], strict=False)]
    signs = [d.sign() for _, _, d in diffs]
    verdict = (Verdict.HELD if all(s == 1 for s in signs) else Verdict.NOT_HELD if -1 in signs
               else Verdict.INCONCLUSIVE)
    means = ", ".join(f"{v} {arms[v].mean():.4f}" for v in ABLATION_ORDER)
    steps = "; ".join(f"{a} - {b}: {d.text()}" for a, b, d in diffs)
    return Claim("ablation_order", statement, verdict, f"mean test accuracy: {means}; {steps}")


def lower_ece(summary: pd.DataFrame, focus: Focus) -> Claim:
    statement = "ECE is lower with LoRA Dropout"
    ours = over_seeds(summary, "test_ece_ensemble", method="lora", dropout_rate=focus.dropout_rate,
                      n_instances=focus.n_instances)
    plain = _plain(summary, "test_ece_deterministic")
    if ours.empty or plain.empty:
        return Claim("lower_ece", statement, Verdict.NOT_EVALUABLE, "no LoRA / LoRA Dropout pair in this study")
    diff = paired(ours, plain)
    return Claim("lower_ece", statement, decide(diff, -1),
                 f"test ECE (15 bins): LoRA Dropout (ensemble) {describe(ours)}; LoRA {describe(plain)}; {diff.text()}")


def linear_cost(runs: pd.DataFrame, focus: Focus) -> Claim:
    """"About linear": the 95% t-interval over seeds of the wall-time ratio ``N_hi / N_lo`` lies within a
    factor of two of ``N_hi / N_lo`` (held) or entirely outside it (did not hold)."""
    statement = "training cost grows about linearly in N"
    sel = runs[(runs["method"] == "lora") & (runs["dropout_rate"] == focus.dropout_rate)]
    ns = sorted(sel["n_instances"].unique())
    if len(ns) < 2:
        return Claim("linear_cost", statement, Verdict.NOT_EVALUABLE, "needs runs at >= 2 values of N")
    lo, hi = ns[0], ns[-1]
    walls = {n: sel[sel["n_instances"] == n].set_index("seed")["wall_s"] for n in (lo, hi)}
    common = walls[lo].index.intersection(walls[hi].index)
    ratios = (walls[hi][common] / walls[lo][common]).to_numpy()
    mean, low, high = t_interval(ratios)
    band = (0.5 * hi / lo, 2.0 * hi / lo)
    if len(ratios) < 2:
        verdict = Verdict.INCONCLUSIVE
    elif band[0] <= low and high <= band[1]:
        verdict = Verdict.HELD
    elif high < band[0] or low > band[1]:
        verdict = Verdict.NOT_HELD
    else:
        verdict = Verdict.INCONCLUSIVE
    interval = f"95% interval [{low:.2f}, {high:.2f}]" if len(ratios) > 1 else "one seed: no interval"
    return Claim("linear_cost", statement, verdict,
                 f"run wall time (training and evaluation) N={hi} / N={lo}: {mean:.2f}, {interval} over "
                 f"{len(ratios)} seeds (linear: {hi / lo:g}; held if the interval lies within [{band[0]:g}, "
                 f"{band[1]:g}]; evaluation cost also grows with N_test = N)")


def jensen_holds(compression: pd.DataFrame) -> Claim:
    """Thm 4.5 holds per example for every finite ensemble, so one cell below 0 (beyond float32 rounding
    of the logits, 1e-6 nats) refutes it."""
    statement = "Thm 4.5: the ensemble's risk is at most the mean member's (Jensen gap >= 0)"
    sel = compression[compression["average"] == "probs"] if "average" in compression else compression
    if sel.empty:
        return Claim("jensen", statement, Verdict.NOT_EVALUABLE, "no ensembles averaging probabilities")
    worst = sel["jensen_gap"].min()
    return Claim("jensen", statement, Verdict.HELD if worst >= -1e-6 else Verdict.NOT_HELD,
                 f"smallest mean Jensen gap over runs, splits and N_test: {worst:.2e} nats "
                 f"({len(sel)} (run, split, N_test) cells); largest {sel['jensen_gap'].max():.4f}")


def bound_vs_measured(summary: pd.DataFrame) -> list[Claim]:
    """Theorem 4.4 on each run with probes: vacuous or not, and whether the measured gap is below it."""
    vac = select(summary, "vacuous", report="theorem44")
    if vac.empty:
        return [Claim("theorem44", "Thm 4.4 bounds the measured generalisation gap", Verdict.NOT_EVALUABLE,
                      "no run has curvature probes (lora-dropout probe RUN_DIR --curvature)")]
    lines, held, evaluated = [], True, 0
    for run_id, g in summary[summary["run_id"].isin(vac["run_id"])].groupby("run_id"):
        p = g["dropout_rate"].iloc[0]
        eig = value(g, "hessian_min_eig", space="delta_w", hypothesis="unmasked")
        measured = value(g, "measured", report="theorem44")
        bound = value(g, "bound_on_measured", report="theorem44")
        if value(g, "vacuous", report="theorem44") > 0:
            lines.append(f"p={p:g} ({run_id}): vacuous (Lambda_min = {eig:.3g})")
        else:
            ok = measured <= bound
            held &= bool(ok)
            evaluated += 1
            lines.append(f"p={p:g} ({run_id}): measured gap {measured:.4f} {'<=' if ok else '>'} bound {bound:.4f} "
                         f"(Lambda_min = {eig:.3g})")
    # a bound that is vacuous everywhere bounds nothing: inconclusive, not "held"
    verdict = (Verdict.INCONCLUSIVE if not evaluated else Verdict.HELD if held else Verdict.NOT_HELD)
    return [
        Claim("theorem44", "Thm 4.4 bounds the measured generalisation gap (where not vacuous)", verdict,
              "; ".join(lines) + ("" if evaluated else "; vacuous on every run, so nothing to hold")),
        psd_premise(summary),
    ]


def psd_premise(summary: pd.DataFrame) -> Claim:
    """Lanczos returns Ritz values, Rayleigh quotients of the Hessian, so each is >= Lambda_min: a negative
    one refutes the premise even unconverged, while ``Lambda_min >= 0`` is shown only by converged values."""
    statement = "Prop. 4.2's premise: the Hessian at theta(S) is PSD (Lambda_min >= 0)"
    eig = select(summary, "hessian_min_eig", space="delta_w", hypothesis="unmasked").set_index("run_id")["value"]
    if eig.empty:
        return Claim("psd_hessian", statement, Verdict.NOT_EVALUABLE, "no curvature probes")
    conv = select(summary, "hessian_min_eig_converged", space="delta_w",
                  hypothesis="unmasked").set_index("run_id")["value"]
    converged = conv.reindex(eig.index).fillna(0.0) > 0
    if (eig < 0).any():
        verdict = Verdict.NOT_HELD
    elif converged.all():
        verdict = Verdict.HELD
    else:
        verdict = Verdict.INCONCLUSIVE
    values = ", ".join(f"{v:.3g}{'' if c else ' (not converged)'}" for v, c in zip(eig, converged, strict=True))
    return Claim("psd_hessian", statement, verdict, f"measured Lambda_min (delta_w space): {values}")


def stability_vs_theory(summary: pd.DataFrame) -> Claim:
    """Per run and estimator: held when the upper end of ``beta_hat``'s 95% interval (normal, from its
    standard error) is at most Prop. 4.2's ``beta``; did not hold when its lower end is above it."""
    statement = "measured beta_hat <= Prop. 4.2's beta"
    rows = select(summary, "beta_hat")
    if rows.empty:
        return Claim("stability", statement, Verdict.NOT_EVALUABLE,
                     "no stability measurements (lora-dropout probe --stability-k)")
    z = stats.norm.ppf(0.975)
    parts, verdicts = [], []
    for r in rows.itertuples():
        method = r.estimator
        theory = select(summary[summary["run_id"] == r.run_id], "bound", report=r.report)["value"]
        beta = float(theory.iloc[0]) if len(theory) else math.inf
        if not math.isfinite(beta):
            parts.append(f"{r.run_id} {method}: {r.value:.3g} vs vacuous")
            continue
        half = z * r.stderr if math.isfinite(r.stderr) else math.nan
        if r.value + half <= beta:
            verdicts.append(Verdict.HELD)
        elif r.value - half > beta:
            verdicts.append(Verdict.NOT_HELD)
        else:
            verdicts.append(Verdict.INCONCLUSIVE)
        parts.append(f"{r.run_id} {method}: {r.value:.3g} +/- {half:.3g} vs {beta:.3g} ({verdicts[-1].value})")
    if not verdicts:
        return Claim("stability", statement, Verdict.INCONCLUSIVE,
                     "; ".join(parts) + "; Prop. 4.2 is vacuous on every run (Lambda_min + 2 lam s <= 0)")
    verdict = (Verdict.NOT_HELD if Verdict.NOT_HELD in verdicts else
               Verdict.HELD if all(v is Verdict.HELD for v in verdicts) else Verdict.INCONCLUSIVE)
    return Claim("stability", statement, verdict, "; ".join(parts))


#: Flag a run whose leave-one-out estimators of beta (retrain, warm start, influence) differ by more.
DISAGREEMENT_FACTOR = 10.0


def estimator_disagreement(summary: pd.DataFrame, factor: float = DISAGREEMENT_FACTOR
                           ) -> list[tuple[str, tuple[str, str], float]]:
    """Runs whose ``beta_hat`` estimators disagree by more than ``factor`` (largest over smallest).

    Reads the ``beta_hat`` rows of a collected summary (``run_id, quantity, estimator, value``); runs with
    fewer than two finite estimates are not compared. A zero estimate against a positive one is an
    infinite ratio. Returns ``(run_id, (method of the largest, method of the smallest), ratio)`` per
    flagged run, in the summary's run order.

    >>> s = pd.DataFrame({"run_id": ["a", "a", "a", "b", "b"], "quantity": "beta_hat",
    ...     "estimator": ["retrain", "warm_start", "influence", "retrain", "influence"],
    ...     "value": [0.011, 0.0065, 1.5e-6, 0.01, 0.002]})
    >>> [(run, methods, round(ratio)) for run, methods, ratio in estimator_disagreement(s)]
    [('a', ('retrain', 'influence'), 7333)]
    """
    rows = select(summary, "beta_hat")
    rows = rows[np.isfinite(rows["value"].to_numpy(dtype=float))]
    flags = []
    for run_id, group in rows.groupby("run_id", sort=False):
        if len(group) < 2:
            continue
        values = group.set_index("estimator")["value"].astype(float)
        high, low = values.idxmax(), values.idxmin()
        if values[high] <= 0:
            continue  # all zero: they agree
        ratio = values[high] / values[low] if values[low] > 0 else math.inf
        if ratio > factor:
            flags.append((str(run_id), (str(high), str(low)), float(ratio)))
    return flags


def sparsity_matches(summary: pd.DataFrame) -> Claim:
    """Realised against nominal sparsity; 0.02 absolute is the slack allowed for sampling the masks."""
    statement = "realised zero fraction of dW_hat matches 2p - p^2"
    nominal = select(summary, "sparsity_nominal").set_index("run_id")["value"]
    realised = select(summary, "sparsity_realised").set_index("run_id")
    if nominal.empty:
        return Claim("sparsity", statement, Verdict.NOT_EVALUABLE, "no modules tables")
    diffs = (realised["value"] - nominal[realised.index]).abs()
    return Claim("sparsity", statement, Verdict.HELD if bool((diffs < 0.02).all()) else Verdict.NOT_HELD,
                 f"largest |realised - nominal| over runs: {diffs.max():.4f}")


#: The PAC-Bayes dropout certificate's report (bounds.report.certificate); its summary quantities
#: ``certificate`` and ``measured`` (the measured test Gibbs error) are the claims' evidence.
CERTIFICATE_REPORT = "pacbayes_dropout"


def certificate_non_vacuous(summary: pd.DataFrame, focus: Focus) -> Claim:
    """The toolkit's own PAC-Bayes dropout certificate (docs/certificate.md) is below 1 at the focus.

    One measurement per run, decided by it (no interval: the certificate already holds with probability
    ``1 - 2 (delta + delta_mc)``, and whether it is ``< 1`` is arithmetic): held when every certified
    LoRA run at the focus configuration (``p``, ``N``; every seed) has a certificate ``< 1 -``
    `VACUOUS_TOL`; did not hold when any has one within that of 1 or above (vacuous; a vacuous
    certificate is the outcome this claim is about, so it is decided, not inconclusive); not evaluable
    without a certified run at the focus. The evidence lists the
    focus values with their measured test Gibbs error, and the certificates at every other certified
    configuration.
    """
    name, statement = "certificate_non_vacuous", (f"the PAC-Bayes dropout certificate is non-vacuous (< 1) at p="
                                                  f"{focus.dropout_rate:g}, N={focus.n_instances} (toolkit's own)")
    lora = summary[summary["method"] == "lora"]
    cert = over_seeds(lora, "certificate", CERTIFICATE_REPORT, dropout_rate=focus.dropout_rate,
                      n_instances=focus.n_instances)
    if cert.empty:
        return Claim(name, statement, Verdict.NOT_EVALUABLE,
                     "no certified run at the focus configuration (PostTraining(certify=True) or lora-dropout certify)")
    measured = over_seeds(lora, "measured", CERTIFICATE_REPORT, dropout_rate=focus.dropout_rate,
                          n_instances=focus.n_instances)
    at_focus = "; ".join(f"seed {s}: certificate {c:.4f}, measured test Gibbs error {measured.get(s, math.nan):.4f}"
                         for s, c in cert.items())
    others = select(lora, "certificate", report=CERTIFICATE_REPORT)
    others = others[(others["dropout_rate"] != focus.dropout_rate) | (others["n_instances"] != focus.n_instances)]
    elsewhere = ", ".join(f"p={r.dropout_rate:g} N={r.n_instances} seed {r.seed}: {r.value:.4f}"
                          for r in others.itertuples())
    vacuous = cert[cert.map(is_vacuous)]
    verdict = Verdict.NOT_HELD if len(vacuous) else Verdict.HELD
    return Claim(name, statement, verdict,
                 f"{at_focus}; {len(vacuous)} of {len(cert)} focus runs vacuous (>= 1 - {VACUOUS_TOL:g})"
                 + (f"; other certified runs: {elsewhere}" if elsewhere else ""))


def certificate_selects_p(summary: pd.DataFrame, focus: Focus) -> Claim:
    """Model selection without a validation set: the p of the smallest certificate is the p of the smallest
    test error.

    On the p panel (`_p_panel`, certified runs only): ``p_cert`` minimises the mean certificate over seeds,
    ``p_test`` the mean measured test Gibbs error (of the same posteriors). Held when ``p_cert == p_test``
    and the test error at ``p_cert`` is below that at every other p with the paired 95% interval excluding
    0 (``p_test`` is decided). Did not hold when ``p_cert != p_test`` and the test error at ``p_cert`` is
    above that at ``p_test`` with the paired interval excluding 0. Inconclusive otherwise: one seed, an
    interval containing 0, a smallest certificate that is vacuous (within `VACUOUS_TOL` of 1 or
    above: the certificate selects nothing) or shared by several p. Not evaluable with fewer than two certified values of p.
    """
    name = "certificate_selects_p"
    statement = "the p that minimises the PAC-Bayes certificate minimises the test Gibbs error (toolkit's own)"
    panel = p_panel(summary, focus.n_instances)
    certs = by_seed(panel, "dropout_rate", "certificate", CERTIFICATE_REPORT)
    errors = by_seed(panel, "dropout_rate", "measured", CERTIFICATE_REPORT)
    ps = [p for p in certs if p in errors]
    if len(ps) < 2:
        return Claim(name, statement, Verdict.NOT_EVALUABLE, f"needs >= 2 certified values of p, have {ps}")
    cert_mean = {p: float(certs[p].mean()) for p in ps}
    err_mean = {p: float(errors[p].mean()) for p in ps}
    p_cert, p_test = min(ps, key=cert_mean.get), min(ps, key=err_mean.get)
    means = ", ".join(f"p={p:g}: certificate {cert_mean[p]:.4f}, test error {err_mean[p]:.4f}" for p in ps)
    tied = [p for p in ps if cert_mean[p] == cert_mean[p_cert]]
    if is_vacuous(cert_mean[p_cert]) or len(tied) > 1:
        why = ("the smallest certificate is vacuous (>= 1)" if is_vacuous(cert_mean[p_cert])
               else f"the smallest certificate is shared by p in {tied}")
        return Claim(name, statement, Verdict.INCONCLUSIVE, f"mean over seeds {means}; {why}: it selects no p")
    if p_cert == p_test:
        diffs = {p: paired(errors[p_cert], errors[p]) for p in ps if p != p_cert}
        verdict = Verdict.HELD if all(d.sign() == -1 for d in diffs.values()) else Verdict.INCONCLUSIVE
        steps = "; ".join(f"test error at p={p_cert:g} - at p={p:g}: {d.text()}" for p, d in diffs.items())
    else:
        diff = paired(errors[p_cert], errors[p_test])
        verdict = Verdict.NOT_HELD if diff.sign() == 1 else Verdict.INCONCLUSIVE
        steps = f"test error at p={p_cert:g} - at p={p_test:g}: {diff.text()}"
    return Claim(name, statement, verdict,
                 f"mean over seeds {means}; p_cert={p_cert:g}, p_test={p_test:g}; {steps}")


def check_all(coll: Collection, drop_test: pd.DataFrame, focus: Focus) -> list[Claim]:
    s = coll.summary
    return [
        beats_plain(s, focus, "lora"),
        beats_plain(s, focus, "adalora"),
        inverted_u_over_p(s, focus),
        rises_with_n(s, focus),
        ablation_order(s, drop_test, focus),
        lower_ece(s, focus),
        linear_cost(coll.runs, focus),
        jensen_holds(coll.compression),
        *bound_vs_measured(s),
        stability_vs_theory(s),
        sparsity_matches(s),
        certificate_non_vacuous(s, focus),
        certificate_selects_p(s, focus),
    ]
