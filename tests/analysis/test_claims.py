"""Every claim's verdict on hand-built tables: one case per outcome (held, did not hold, inconclusive,
not evaluable), with the paired differences chosen so the 95% t-interval is known by hand.

Paired differences over three seeds ``d = (m - e, m, m + e)``: mean ``m``, sample std ``e``, half width
``t_{0.975, 2} * e / sqrt(3) = 4.3027 * e / 1.7321 = 2.484 e``. With ``e = 0.01`` the interval excludes 0
when ``|m| > 0.02484``.
"""

import math

import numpy as np
import pandas as pd
import pytest

from analysis import claims
from analysis.presets import Focus
from analysis.summary import row
from analysis.verdicts import Verdict, t_interval

FOCUS = Focus(0.3, 2)
SEEDS = (0, 1, 2)
E = 0.01


def rows(quantity, values, *, method="lora", p=0.3, n=2, stderr=math.nan, seeds=SEEDS, **keys):
    """Summary rows (`analysis.summary.row`, key columns in ``keys``) of one configuration over seeds."""
    return [{"run_id": f"{method}-p{p}-n{n}-s{s}", **row(quantity, v, stderr, **keys), "seed": s, "method": method,
             "dropout_rate": p, "n_instances": n}
            for s, v in zip(seeds, values, strict=True)]


def offsets(m):
    """Per-seed values whose paired difference with zeros has mean ``m`` and std ``E``."""
    return np.array([m - E, m, m + E])


def frame(*parts):
    return pd.DataFrame([r for part in parts for r in part])


def test_t_interval_matches_the_closed_form():
    mean, low, high = t_interval(offsets(0.05))
    half = 4.302652729911275 * E / math.sqrt(3)  # t_{0.975, 2}, from a t table
    np.testing.assert_allclose([mean, low, high], [0.05, 0.05 - half, 0.05 + half], rtol=1e-9)
    assert math.isnan(t_interval([0.3])[1])


@pytest.mark.parametrize(("m", "seeds", "verdict"), [
    (0.05, SEEDS, Verdict.HELD),            # interval [0.025, 0.075] excludes 0
    (-0.05, SEEDS, Verdict.NOT_HELD),       # LoRA Dropout worse, decided
    (0.02, SEEDS, Verdict.INCONCLUSIVE),    # interval [-0.005, 0.045] contains 0
    (0.30, (0,), Verdict.INCONCLUSIVE),     # one seed: no interval, however large the difference
])
@pytest.mark.parametrize("method", ["lora", "adalora"])
def test_beats_plain(m, seeds, verdict, method):
    base = np.full(len(seeds), 0.7)
    ours = base + (offsets(m) if len(seeds) == 3 else m)
    s = frame(rows("test_accuracy_ensemble", ours, method=method, seeds=seeds),
              rows("test_accuracy_full", base, method=method, p=0.0, n=1, seeds=seeds))
    claim = claims.beats_plain(s, FOCUS, method)
    assert claim.verdict is verdict, claim
    other = "adalora" if method == "lora" else "lora"
    assert claims.beats_plain(s, FOCUS, other).verdict is Verdict.NOT_EVALUABLE


def p_panel(interior, right):
    """Accuracy at p = 0 (plain), 0.1, 0.3, 0.5; ``interior``/``right`` are offsets from p = 0."""
    base = np.array([0.70, 0.72, 0.68])
    return frame(rows("test_accuracy_ensemble", base, p=0.0, n=1),
                 rows("test_accuracy_ensemble", base + offsets(interior), p=0.1),
                 rows("test_accuracy_ensemble", base + offsets(interior / 2), p=0.3),
                 rows("test_accuracy_ensemble", base + offsets(right), p=0.5))


@pytest.mark.parametrize(("interior", "right", "verdict"), [
    (0.06, 0.0, Verdict.HELD),           # p=0.1 beats p=0 by 0.06 and p=0.5 by 0.06 (std of the pair 0)
    (0.06, 0.12, Verdict.NOT_HELD),      # p=0.5 beats the best interior p: monotone, decided
    (0.02, 0.0, Verdict.INCONCLUSIVE),   # against p=0 the interval contains 0
])
def test_inverted_u(interior, right, verdict):
    claim = claims.inverted_u_over_p(p_panel(interior, right), FOCUS)
    assert claim.verdict is verdict, claim


def test_inverted_u_needs_three_values_of_p():
    s = frame(rows("test_accuracy_ensemble", [0.7] * 3, p=0.0, n=1), rows("test_accuracy_ensemble", [0.7] * 3))
    assert claims.inverted_u_over_p(s, FOCUS).verdict is Verdict.NOT_EVALUABLE


@pytest.mark.parametrize(("m", "verdict"), [(0.05, Verdict.HELD), (-0.05, Verdict.NOT_HELD),
                                            (0.0, Verdict.INCONCLUSIVE)])
def test_rises_with_n(m, verdict):
    base = np.array([0.70, 0.71, 0.69])
    s = frame(rows("test_accuracy_ensemble", base, n=1), rows("test_accuracy_ensemble", base + 0.01, n=2),
              rows("test_accuracy_ensemble", base + offsets(m), n=4))
    assert claims.rises_with_n(s, FOCUS).verdict is verdict
    assert claims.rises_with_n(frame(rows("test_accuracy_ensemble", base, n=1)), FOCUS).verdict \
        is Verdict.NOT_EVALUABLE


def ablation_tables(step):
    """Drop - Drop_train = offsets(step) (std E); Drop_train - NoDrop = NoDrop - Drop_test = step exactly."""
    base = np.array([0.60, 0.62, 0.58])
    s = frame(rows("test_accuracy_ensemble", base + 2 * step + offsets(step)),
              rows("test_accuracy_full", base + 2 * step),
              rows("test_accuracy_full", base + step, p=0.0, n=1))
    drop_test = pd.DataFrame({"run_id": [f"r{s}" for s in SEEDS], "seed": SEEDS, "dropout_rate": 0.3,
                              "accuracy": base, "risk": 0.5})
    return s, drop_test


@pytest.mark.parametrize(("step", "verdict"), [(0.05, Verdict.HELD), (-0.05, Verdict.NOT_HELD),
                                               (0.01, Verdict.INCONCLUSIVE)])
def test_ablation_order(step, verdict):
    s, drop_test = ablation_tables(step)
    claim = claims.ablation_order(s, drop_test, FOCUS)
    assert claim.verdict is verdict, claim
    assert claims.ablation_order(s, drop_test.iloc[0:0], FOCUS).verdict is Verdict.NOT_EVALUABLE


@pytest.mark.parametrize(("m", "verdict"), [(-0.05, Verdict.HELD), (0.05, Verdict.NOT_HELD),
                                            (-0.02, Verdict.INCONCLUSIVE)])
def test_lower_ece(m, verdict):
    base = np.array([0.10, 0.12, 0.08])
    s = frame(rows("test_ece_ensemble", base + offsets(m)), rows("test_ece_deterministic", base, p=0.0, n=1))
    assert claims.lower_ece(s, FOCUS).verdict is verdict


def runs_table(ratios):
    out = []
    for s, r in enumerate(ratios):
        out += [{"run_id": f"n1-{s}", "seed": s, "method": "lora", "dropout_rate": 0.3, "n_instances": 1,
                 "wall_s": 100.0},
                {"run_id": f"n4-{s}", "seed": s, "method": "lora", "dropout_rate": 0.3, "n_instances": 4,
                 "wall_s": 100.0 * r}]
    return pd.DataFrame(out)


@pytest.mark.parametrize(("ratios", "verdict"), [
    ([3.9, 4.0, 4.1], Verdict.HELD),          # interval [3.75, 4.25] inside [2, 8]
    ([1.0, 1.1, 1.2], Verdict.NOT_HELD),      # interval [0.85, 1.35] below 2
    ([1.5, 2.5, 3.5], Verdict.INCONCLUSIVE),  # interval [0.02, 4.98] straddles 2
    ([4.0], Verdict.INCONCLUSIVE),            # one seed
])
def test_linear_cost(ratios, verdict):
    assert claims.linear_cost(runs_table(ratios), FOCUS).verdict is verdict


def test_jensen():
    ok = pd.DataFrame({"average": ["probs", "probs"], "jensen_gap": [0.0, 0.02]})
    bad = pd.DataFrame({"average": ["probs", "logits"], "jensen_gap": [-1e-3, 0.02]})
    assert claims.jensen_holds(ok).verdict is Verdict.HELD
    assert claims.jensen_holds(bad).verdict is Verdict.NOT_HELD
    assert claims.jensen_holds(bad[bad["average"] == "logits"]).verdict is Verdict.NOT_EVALUABLE


def bound_rows(vacuous, measured, bound, eig, converged=True):
    theorem44 = {"report": "theorem44", "hypothesis": "unmasked", "seeds": (0,)}
    probe = {"space": "delta_w", "hypothesis": "unmasked", "seeds": (0,)}
    return frame(rows("vacuous", [float(vacuous)], **theorem44), rows("measured", [measured], **theorem44),
                 rows("bound_on_measured", [bound], **theorem44), rows("hessian_min_eig", [eig], **probe),
                 rows("hessian_min_eig_converged", [float(converged)], **probe),
                 # the same probe at the other hypothesis is not the claim's evidence
                 rows("hessian_min_eig", [-9.0], space="delta_w", hypothesis="expected", seeds=(0,)))


def test_theorem44_and_psd_premise():
    held, psd = claims.bound_vs_measured(bound_rows(False, 0.1, 0.3, 0.0))
    assert held.verdict is Verdict.HELD and psd.verdict is Verdict.HELD  # Lambda_min = 0 is PSD
    broken, _ = claims.bound_vs_measured(bound_rows(False, 0.4, 0.3, 0.5))
    assert broken.verdict is Verdict.NOT_HELD
    vacuous, not_psd = claims.bound_vs_measured(bound_rows(True, 0.1, math.inf, -2.0))
    assert vacuous.verdict is Verdict.INCONCLUSIVE and not_psd.verdict is Verdict.NOT_HELD
    (missing,) = claims.bound_vs_measured(frame(rows("test_accuracy_full", [0.7], seeds=(0,))))
    assert missing.verdict is Verdict.NOT_EVALUABLE
    # an unconverged Ritz value is an upper bound on Lambda_min: it refutes PSD when negative, shows nothing else
    assert claims.psd_premise(bound_rows(True, 0.1, math.inf, -2.0, converged=False)).verdict is Verdict.NOT_HELD
    assert claims.psd_premise(bound_rows(False, 0.1, 0.3, 0.5, converged=False)).verdict is Verdict.INCONCLUSIVE


@pytest.mark.parametrize(("beta_hat", "stderr", "beta", "verdict"), [
    (0.01, 0.001, 0.02, Verdict.HELD),          # 0.01 + 1.96e-3 <= 0.02
    (0.03, 0.001, 0.02, Verdict.NOT_HELD),      # 0.03 - 1.96e-3 > 0.02
    (0.019, 0.001, 0.02, Verdict.INCONCLUSIVE),  # the interval contains beta
    (0.01, 0.001, math.inf, Verdict.INCONCLUSIVE),  # Prop. 4.2 vacuous
])
def test_stability(beta_hat, stderr, beta, verdict):
    prop42 = {"report": "prop42[retrain]", "estimator": "retrain", "hypothesis": "unmasked", "seeds": (0,)}
    s = frame(rows("beta_hat", [beta_hat], stderr=stderr, **prop42), rows("bound", [beta], **prop42))
    assert claims.stability_vs_theory(s).verdict is verdict
    assert claims.stability_vs_theory(frame(rows("test_accuracy_full", [0.7], seeds=(0,)))).verdict is Verdict.NOT_EVALUABLE


def test_sparsity():
    nominal = rows("sparsity_nominal", [0.51], seeds=(0,))
    assert claims.sparsity_matches(frame(nominal, rows("sparsity_realised", [0.515], seeds=(0,)))).verdict \
        is Verdict.HELD
    assert claims.sparsity_matches(frame(nominal, rows("sparsity_realised", [0.40], seeds=(0,)))).verdict \
        is Verdict.NOT_HELD


def certificate_panel(cert, err, seeds=SEEDS):
    """Certificates and measured test Gibbs errors per p of the panel (p = 0 is plain LoRA, N = 1)."""
    parts = []
    for p, values in cert.items():
        n = 1 if p == 0 else 2
        parts += [rows("certificate", values, p=p, n=n, seeds=seeds, report="pacbayes_dropout"),
                  rows("measured", err[p], p=p, n=n, seeds=seeds, report="pacbayes_dropout")]
    return frame(*parts)


@pytest.mark.parametrize(("focus_values", "verdict"), [
    ([0.30, 0.32, 0.31], Verdict.HELD),
    ([0.30, 1.0, 0.31], Verdict.NOT_HELD),  # one seed vacuous: decided, not inconclusive
    ([0.30, 1 - 2.6e-12, 0.31], Verdict.NOT_HELD),  # the kl inverse's bisection where nothing is certified
    ([0.999, 0.98, 0.99], Verdict.HELD),    # below 1 is below 1: no interval around an exact inequality
])
def test_certificate_non_vacuous(focus_values, verdict):
    s = certificate_panel({0.0: [1.0] * 3, 0.3: focus_values}, {0.0: [0.3] * 3, 0.3: [0.25] * 3})
    claim = claims.certificate_non_vacuous(s, FOCUS)
    assert claim.verdict is verdict, claim
    assert f"certificate {focus_values[1]:.4f}" in claim.evidence and "p=0 N=1" in claim.evidence
    # vacuous elsewhere (p = 0) does not decide the claim at the focus; no certificate there: not evaluable
    only_p0 = certificate_panel({0.0: [0.5] * 3}, {0.0: [0.3] * 3})
    assert claims.certificate_non_vacuous(only_p0, FOCUS).verdict is Verdict.NOT_EVALUABLE


BASE_ERR = np.array([0.25, 0.26, 0.24])


@pytest.mark.parametrize(("cert", "err", "seeds", "verdict"), [
    # p_cert = p_test = 0.3 and its test error is below both others by 0.05 (interval excludes 0)
    ({0.0: [0.9] * 3, 0.3: [0.5] * 3, 0.6: [0.7] * 3},
     {0.0: BASE_ERR + offsets(0.05), 0.3: BASE_ERR, 0.6: BASE_ERR + offsets(0.06)}, SEEDS, Verdict.HELD),
    # the certificate picks p = 0.6, whose test error is above p = 0.3's by 0.05: decided against
    ({0.0: [0.9] * 3, 0.3: [0.7] * 3, 0.6: [0.5] * 3},
     {0.0: BASE_ERR + offsets(0.05), 0.3: BASE_ERR, 0.6: BASE_ERR + offsets(0.05)}, SEEDS, Verdict.NOT_HELD),
    # the certificate picks p = 0.6, above p = 0.3 by only 0.02 (interval contains 0)
    ({0.0: [0.9] * 3, 0.3: [0.7] * 3, 0.6: [0.5] * 3},
     {0.0: BASE_ERR + offsets(0.05), 0.3: BASE_ERR, 0.6: BASE_ERR + offsets(0.02)}, SEEDS, Verdict.INCONCLUSIVE),
    # same p, but p = 0.3 against p = 0.6 is not decided
    ({0.0: [0.9] * 3, 0.3: [0.5] * 3, 0.6: [0.7] * 3},
     {0.0: BASE_ERR + offsets(0.05), 0.3: BASE_ERR, 0.6: BASE_ERR + offsets(0.02)}, SEEDS, Verdict.INCONCLUSIVE),
    # one seed: no interval, however clear the means
    ({0.0: [0.9], 0.3: [0.5], 0.6: [0.7]}, {0.0: [0.4], 0.3: [0.2], 0.6: [0.4]}, (0,), Verdict.INCONCLUSIVE),
    # vacuous everywhere (1 up to the bisection's rounding): the certificate selects no p
    ({0.0: [1.0] * 3, 0.3: [1.0] * 3, 0.6: [1 - 2.6e-12] * 3},
     {0.0: BASE_ERR + offsets(0.05), 0.3: BASE_ERR, 0.6: BASE_ERR + offsets(0.06)}, SEEDS, Verdict.INCONCLUSIVE),
    # a tie at the smallest certificate
    ({0.0: [0.9] * 3, 0.3: [0.5] * 3, 0.6: [0.5] * 3},
     {0.0: BASE_ERR + offsets(0.05), 0.3: BASE_ERR, 0.6: BASE_ERR + offsets(0.06)}, SEEDS, Verdict.INCONCLUSIVE),
])
def test_certificate_selects_p(cert, err, seeds, verdict):
    claim = claims.certificate_selects_p(certificate_panel(cert, err, seeds), FOCUS)
    assert claim.verdict is verdict, claim


def test_certificate_selects_p_needs_two_certified_p():
    s = certificate_panel({0.3: [0.5] * 3}, {0.3: BASE_ERR})
    assert claims.certificate_selects_p(s, FOCUS).verdict is Verdict.NOT_EVALUABLE
    # runs at another N are not on the p panel
    other_n = frame(rows("certificate", [0.4] * 3, p=0.6, n=4, report="pacbayes_dropout"),
                    rows("measured", BASE_ERR, p=0.6, n=4, report="pacbayes_dropout"))
    assert claims.certificate_selects_p(pd.concat([s, other_n]), FOCUS).verdict is Verdict.NOT_EVALUABLE


def test_check_all_includes_the_certificate_claims():
    from analysis.collect import Collection

    s = certificate_panel({0.0: [0.9] * 3, 0.3: [0.5] * 3}, {0.0: BASE_ERR + offsets(0.05), 0.3: BASE_ERR})
    empty = pd.DataFrame()
    coll = Collection(runs=pd.DataFrame(columns=["run_id", "seed", "method", "dropout_rate", "n_instances",
                                                 "wall_s"]),
                      summary=s, curves=empty, reliability=empty, compression=pd.DataFrame(columns=["jensen_gap"]),
                      bounds=empty, modules=empty)
    found = {c.name: c.verdict for c in claims.check_all(coll, empty, FOCUS)}
    assert found["certificate_non_vacuous"] is Verdict.HELD and found["certificate_selects_p"] is Verdict.HELD
