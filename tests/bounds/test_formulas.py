"""Tests of bounds.formulas: golden values (docs/bounds.md and hand-computed), properties, errors."""

from __future__ import annotations

import dataclasses
import json
import math
import re

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from numpy.testing import assert_allclose, assert_array_equal

from bounds.formulas import (
    BoundValue,
    Estimate,
    Lemma43Form,
    ensemble_risk_bound,
    estimate_jensen_gap,
    estimate_mean,
    lam_needed,
    lemma43_bound,
    n_needed,
    per_sample_jensen_gap,
    sparsity,
    stability_bound,
    theorem44_bound,
    theorem44_gap,
    uniform_stability_bound,
)

# The worked example of docs/bounds.md: C = 1, eta = 1, Lambda_min = 0, lambda = 1, n = 3668, delta = 0.05.
WORKED = dict(loss_range=1.0, lipschitz=1.0, hessian_min_eig=0.0, lam=1.0, n=3668, delta=0.05)

# Ranges for property tests: wide enough to cover vacuous and non-vacuous cases, narrow enough that
# 24 C eta^2 / D cannot overflow (overflow would be +inf, not NaN, and is tested separately).
loss_ranges = st.floats(0.01, 10.0)
lipschitzes = st.floats(0.0, 10.0)
hessian_mins = st.floats(-2.0, 5.0)
lams = st.floats(0.0, 10.0)
rates = st.floats(0.0, 1.0, exclude_max=True)
n_trains = st.integers(1, 10**6)
deltas = st.floats(1e-6, 1.0, exclude_min=True, exclude_max=True)
risks = st.floats(0.0, 5.0)
stabilities = st.floats(0.0, 1.0)
# derandomize: the same examples on every run, so CI cannot turn red by luck
PROPERTY = settings(max_examples=100, deadline=None, derandomize=True)


def _non_increasing(values: np.ndarray) -> bool:
    """True if each entry is at most its predecessor, up to rounding (inf <= inf counts as equal)."""
    return bool(np.all(values[1:] <= values[:-1] * (1.0 + 1e-12)))


# --------------------------------------------------------------------------------------------------
# Golden values
# --------------------------------------------------------------------------------------------------


def test_sparsity_golden():
    # s = 2p - p^2: 0 -> 0; 0.1 -> 0.2 - 0.01 = 0.19; 0.5 -> 1 - 0.25 = 0.75; 1 -> 2 - 1 = 1.
    assert_allclose(sparsity(np.array([0.0, 0.1, 0.5, 1.0])), [0.0, 0.19, 0.75, 1.0], rtol=1e-15)
    assert sparsity(0.5) == 0.75
    assert type(sparsity(0.5)) is float


def test_stability_bound_worked_example():
    # D = 0 + 2 * 1 * 0.75 = 1.5; beta = 2 * 1^2 / (1.5 * 3668) = 2 / 5502 = 3.6350e-4.
    b = stability_bound(lipschitz=1.0, hessian_min_eig=0.0, lam=1.0, p=0.5, n=3668)
    assert_allclose(b.value, 2.0 / 5502.0, rtol=1e-14)
    assert_allclose(b.value, 3.635e-4, rtol=1e-4)
    assert b.terms == {"beta": b.value}
    assert not b.vacuous and b.reason == ""


def test_stability_bound_hand_computed():
    # eta = 2, Lambda_min = 0.5, lam = 0.25, p = 1 (s = 1): D = 0.5 + 2 * 0.25 * 1 = 1;
    # beta = 2 * 4 / (1 * 100) = 0.08.
    b = stability_bound(lipschitz=2.0, hessian_min_eig=0.5, lam=0.25, p=1.0, n=100)
    assert_allclose(b.value, 0.08, rtol=1e-14)


@pytest.mark.parametrize(
    "p, gap",
    [
        # s = 0.75, D = 1.5: sqrt((1 + 24 / 1.5) / (2 * 3668 * 0.05)) = sqrt(17 / 366.8) = 0.21528
        (0.5, 0.2153),
        # s = 0.19, D = 0.38: sqrt((1 + 24 / 0.38) / 366.8) = sqrt(64.158 / 366.8) = 0.41822
        (0.1, 0.4182),
    ],
)
def test_theorem44_worked_example(p, gap):
    b = theorem44_bound(r_hat=0.1, p=p, **WORKED)
    assert round(b.terms["gap"], 4) == gap
    assert_allclose(b.value, 0.1 + b.terms["gap"], rtol=1e-15)
    assert round(theorem44_gap(p=p, **WORKED).value, 4) == gap


def test_lemma43_printed_hand_computed():
    # C = 1, n = 10, delta = 0.5, beta = 0.0125: 12 * 1 * 10 * 0.0125 = 1.5;
    # (1 + 1.5) / (2 * 10 * 0.5) = 2.5 / 10 = 0.25; gap = sqrt(0.25) = 0.5; R <= 0.2 + 0.5 = 0.7.
    b = lemma43_bound(r_hat=0.2, loss_range=1.0, n=10, delta=0.5, stability=0.0125)
    assert_allclose([b.terms["r_hat"], b.terms["gap"], b.value], [0.2, 0.5, 0.7], rtol=1e-15)
    assert not b.vacuous


def test_lemma43_corrected_hand_computed():
    # beta_1 = 0.0375, beta = 0.0125: 6 * 1 * 10 * (0.0375 + 0.0125) = 3;
    # (1 + 3) / (2 * 10 * 0.5) = 0.4; gap = sqrt(0.4) = 0.6324555320; R <= 0.8324555320.
    b = lemma43_bound(0.2, 1.0, 10, 0.5, stability=0.0125, stability_1=0.0375, form="corrected")
    assert_allclose(b.terms["gap"], 0.6324555320336759, rtol=1e-14)
    assert_allclose(b.value, 0.8324555320336759, rtol=1e-14)
    # The enum and the plain string are the same option.
    same = lemma43_bound(0.2, 1.0, 10, 0.5, stability=0.0125, stability_1=0.0375, form=Lemma43Form.CORRECTED)
    assert same.value == b.value


def test_uniform_stability_hand_computed():
    # C = 1, n = 50, delta = 1/e (ln(1/delta) = 1), beta = 0.005: 2 beta = 0.01;
    # (4 * 50 * 0.005 + 1) * sqrt(1 / (2 * 50)) = 2 * 0.1 = 0.2; R <= 0.1 + 0.01 + 0.2 = 0.31.
    b = uniform_stability_bound(r_hat=0.1, loss_range=1.0, n=50, delta=math.exp(-1.0), stability=0.005)
    assert_allclose(
        [b.terms["r_hat"], b.terms["two_beta"], b.terms["concentration"], b.value],
        [0.1, 0.01, 0.2, 0.31],
        rtol=1e-14,
    )


def test_ensemble_risk_bound_is_theorem44_at_member_risk():
    # Worked example at p = 0.5 with member training risk 0.3: 0.3 + 0.21528 = 0.51528.
    b = ensemble_risk_bound(member_train_risk=0.3, p=0.5, **WORKED)
    assert round(b.value, 4) == 0.5153
    assert_allclose(b.value, theorem44_bound(r_hat=0.3, p=0.5, **WORKED).value, rtol=0)
    assert set(b.terms) == {"r_hat", "gap"}


def test_jensen_gap_hand_computed():
    # Members give the true class 0.2 and 0.8: mean CE = -(ln 0.2 + ln 0.8) / 2 = 0.916291;
    # the ensemble gives 0.5: CE = ln 2 = 0.693147; gap = ln 0.5 - ln 0.4 = ln 1.25 = 0.223144.
    member = -np.log(np.array([[0.2, 0.5], [0.8, 0.5]]))
    ensemble = -np.log(np.array([0.5, 0.5]))
    assert_allclose(per_sample_jensen_gap(member, ensemble), [math.log(1.25), 0.0], atol=1e-15)


def test_jensen_gap_is_not_clamped():
    # A cross-entropy clipped at C = 1 is not convex: members with true-class probability 0 and 1
    # have clipped losses 1 and 0 (mean 0.5), the ensemble (probability 0.5) has ln 2 = 0.693147.
    # The measured gap 0.5 - 0.693147 = -0.193147 must come back negative, not clamped to 0.
    gap = per_sample_jensen_gap(np.array([[1.0], [0.0]]), np.array([math.log(2.0)]))
    assert_allclose(gap, [0.5 - math.log(2.0)], rtol=1e-15)


def test_estimate_mean_hand_computed():
    # Values 1, 2, 3, 4: mean 2.5; sample sd = sqrt((2.25 + 0.25 + 0.25 + 2.25) / 3) = sqrt(5/3)
    # = 1.2909944; stderr = 1.2909944 / 2 = 0.6454972; t(0.975, df=3) = 3.1824463;
    # half-width = 2.0542603; CI = [0.4457397, 4.5542603].
    e = estimate_mean(np.array([1.0, 2.0, 3.0, 4.0]))
    assert_allclose(
        [e.value, e.stderr, e.ci_low, e.ci_high], [2.5, 0.6454972, 0.4457397, 4.5542603], rtol=1e-6
    )
    assert e.n == 4 and e.confidence == 0.95


def test_estimate_jensen_gap_hand_computed():
    # Member means 1, 2, 3, 4 against an ensemble loss of 0: the per-sample gaps are 1, 2, 3, 4, so
    # the estimate is the one of test_estimate_mean_hand_computed.
    member = np.array([[2.0, 4.0, 6.0, 8.0], [0.0, 0.0, 0.0, 0.0]])
    e = estimate_jensen_gap(member, np.zeros(4), confidence=0.95)
    assert_allclose([e.value, e.ci_low, e.ci_high], [2.5, 0.4457397, 4.5542603], rtol=1e-6)
    assert e.n == 4


# --------------------------------------------------------------------------------------------------
# Vacuous bounds
# --------------------------------------------------------------------------------------------------


def test_negative_denominator_is_vacuous_with_reason():
    # lam = 0: D = Lambda_min = -0.3.
    b = theorem44_bound(
        r_hat=0.1, loss_range=1.0, lipschitz=1.0, hessian_min_eig=-0.3, lam=0.0, p=0.5, n=100, delta=0.05
    )
    assert b.vacuous is True
    assert b.value == math.inf and b.terms["gap"] == math.inf
    assert b.terms["r_hat"] == 0.1
    assert "Lambda_min + 2*lam*s" in b.reason and "= -0.3 <= 0" in b.reason


def test_plain_lora_with_flat_curvature_is_vacuous():
    # p = 0 gives s = 0, so D = Lambda_min = 0: not positive.
    for bound in (theorem44_gap(p=0.0, **WORKED), stability_bound(1.0, 0.0, 1.0, 0.0, 3668)):
        assert bound.vacuous and bound.value == math.inf and "= 0 <= 0" in bound.reason


def test_exactly_zero_denominator_is_vacuous_and_positive_is_not():
    s = sparsity(0.3)
    # Lambda_min = -2 lam s makes D exactly 0.0 in floating point.
    exact_zero = theorem44_gap(1.0, 1.0, hessian_min_eig=-2.0 * 1.5 * s, lam=1.5, p=0.3, n=10, delta=0.1)
    assert exact_zero.vacuous
    barely = theorem44_gap(1.0, 1.0, hessian_min_eig=-2.0 * 1.5 * s + 1e-9, lam=1.5, p=0.3, n=10, delta=0.1)
    assert not barely.vacuous and math.isfinite(barely.value) and barely.reason == ""


def test_vacuous_elements_in_an_array():
    b = theorem44_bound(
        r_hat=np.array([0.1, 0.2, 0.3]),
        loss_range=1.0,
        lipschitz=1.0,
        hessian_min_eig=np.array([-1.0, 0.0, 1.0]),
        lam=0.0,
        p=0.5,
        n=100,
        delta=0.05,
    )
    assert_array_equal(b.vacuous, [True, True, False])
    assert_array_equal(np.isinf(b.value), [True, True, False])
    assert_array_equal(b.terms["r_hat"], [0.1, 0.2, 0.3])
    assert b.reason[0].endswith("= -1 <= 0") and b.reason[1].endswith("= 0 <= 0") and b.reason[2] == ""


def test_overflow_is_inf_not_nan():
    # D = 1e-300 makes 24 C eta^2 / D overflow: the value is +inf (not vacuous: D > 0), never NaN.
    b = theorem44_bound(0.1, 1.0, lipschitz=1e10, hessian_min_eig=1e-300, lam=0.0, p=0.5, n=1, delta=0.5)
    assert b.value == math.inf and not b.vacuous


# --------------------------------------------------------------------------------------------------
# Types and records
# --------------------------------------------------------------------------------------------------


def test_scalars_in_scalars_out():
    b = theorem44_bound(r_hat=0.1, p=0.5, **WORKED)
    assert type(b.value) is float and type(b.vacuous) is bool and type(b.reason) is str
    assert all(type(t) is float for t in b.terms.values())


def test_arrays_in_arrays_out():
    b = lemma43_bound(r_hat=0.1, loss_range=1.0, n=np.array([10, 100]), delta=0.05, stability=0.01)
    assert isinstance(b.value, np.ndarray) and b.value.shape == (2,)
    assert b.vacuous.dtype == bool and b.vacuous.shape == (2,) and b.reason.shape == (2,)
    # r_hat is broadcast so that every term has the shape of the value.
    assert b.terms["r_hat"].shape == (2,) and b.terms["gap"].shape == (2,)


def test_broadcasting_grid():
    p = np.linspace(0.1, 0.9, 5)[:, None]
    n = np.array([100, 1000, 10000])[None, :]
    b = theorem44_gap(1.0, 1.0, 0.0, 1.0, p, n, 0.05)
    assert b.value.shape == (5, 3)
    assert_allclose(b.value[2, 1], theorem44_gap(1.0, 1.0, 0.0, 1.0, 0.5, 1000, 0.05).value, rtol=1e-15)


def test_bound_value_to_dict_is_json():
    b = theorem44_bound(r_hat=np.array([0.1, 0.2]), p=np.array([0.0, 0.5]), **WORKED)
    d = json.loads(json.dumps(b.to_dict()))
    assert d["vacuous"] == [True, False]
    assert d["value"][0] == math.inf and d["value"][1] == pytest.approx(0.2 + 0.2153, abs=1e-4)
    assert d["terms"]["r_hat"] == [0.1, 0.2]
    assert d["reason"][1] == "" and "<= 0" in d["reason"][0]


def test_bound_value_is_immutable():
    b = theorem44_bound(r_hat=np.array([0.1, 0.2]), p=0.5, **WORKED)
    with pytest.raises(dataclasses.FrozenInstanceError):
        b.value = 0.0
    with pytest.raises(TypeError):
        b.terms["gap"] = 0.0
    with pytest.raises(ValueError, match="read-only"):
        b.value[0] = 0.0
    assert isinstance(b, BoundValue)


def test_estimate_to_dict():
    e = Estimate(value=1.0, stderr=0.1, ci_low=0.8, ci_high=1.2, n=10)
    assert json.loads(json.dumps(e.to_dict())) == {
        "value": 1.0,
        "stderr": 0.1,
        "ci_low": 0.8,
        "ci_high": 1.2,
        "n": 10,
        "confidence": 0.95,
    }


# --------------------------------------------------------------------------------------------------
# Input validation
# --------------------------------------------------------------------------------------------------

VALID = {
    stability_bound: dict(lipschitz=1.0, hessian_min_eig=0.0, lam=1.0, p=0.5, n=100),
    theorem44_gap: dict(
        loss_range=1.0, lipschitz=1.0, hessian_min_eig=0.0, lam=1.0, p=0.5, n=100, delta=0.05
    ),
    theorem44_bound: dict(
        r_hat=0.1, loss_range=1.0, lipschitz=1.0, hessian_min_eig=0.0, lam=1.0, p=0.5, n=100, delta=0.05
    ),
    ensemble_risk_bound: dict(
        member_train_risk=0.1,
        loss_range=1.0,
        lipschitz=1.0,
        hessian_min_eig=0.0,
        lam=1.0,
        p=0.5,
        n=100,
        delta=0.05,
    ),
    lemma43_bound: dict(r_hat=0.1, loss_range=1.0, n=100, delta=0.05, stability=0.01),
    uniform_stability_bound: dict(r_hat=0.1, loss_range=1.0, n=100, delta=0.05, stability=0.01),
}

# (argument, bad value, name expected in the message, first bad value expected in the message)
BAD = [
    ("n", 0, "n_train", 0.0),
    ("n", 2.5, "n_train", 2.5),
    ("n", np.array([10, 100, -3]), "n_train", -3.0),
    ("delta", 0.0, "delta", 0.0),
    ("delta", 1.0, "delta", 1.0),
    ("loss_range", 0.0, "loss_range", 0.0),
    ("lam", -1.0, "lam", -1.0),
    ("lipschitz", -0.5, "lipschitz", -0.5),
    ("stability", -0.1, "stability", -0.1),
    ("p", 1.5, "dropout_rate", 1.5),
    ("p", -0.1, "dropout_rate", -0.1),
    ("p", math.nan, "dropout_rate", math.nan),
    ("hessian_min_eig", math.inf, "hessian_min_eig", math.inf),
    ("r_hat", math.nan, "r_hat", math.nan),
    ("member_train_risk", math.nan, "r_hat", math.nan),
]
CASES = [
    pytest.param(fn, arg, bad, name, first, id=f"{fn.__name__}-{arg}-{bad}")
    for fn, valid in VALID.items()
    for arg, bad, name, first in BAD
    if arg in valid
]


@pytest.mark.parametrize("fn, arg, bad, name, first", CASES)
def test_bad_argument_is_named(fn, arg, bad, name, first):
    fn(**VALID[fn])  # the valid call works, so the error below is the bad argument's
    with pytest.raises(ValueError, match=rf"{name}.*got {re.escape(repr(first))}"):
        fn(**{**VALID[fn], arg: bad})


def test_sparsity_rejects_rates_outside_unit_interval():
    with pytest.raises(ValueError, match=r"dropout_rate p must be a finite number in \[0, 1\], got 1.5"):
        sparsity(1.5)
    with pytest.raises(ValueError, match=r"dropout_rate.*got -0.2 \(1 of 3 entries bad\)"):
        sparsity(np.array([0.1, -0.2, 0.3]))


def test_lemma43_forms_and_stability_1():
    with pytest.raises(ValueError, match="stability_1"):
        lemma43_bound(0.1, 1.0, 100, 0.05, 0.01, form="corrected")
    with pytest.raises(ValueError, match="stability_1"):
        lemma43_bound(0.1, 1.0, 100, 0.05, 0.01, stability_1=0.01, form="printed")
    with pytest.raises(ValueError, match="stability_1 beta_1.*got -1.0"):
        lemma43_bound(0.1, 1.0, 100, 0.05, 0.01, stability_1=-1.0, form="corrected")
    with pytest.raises(ValueError, match="form='fixed' is not one of 'printed', 'corrected'"):
        lemma43_bound(0.1, 1.0, 100, 0.05, 0.01, form="fixed")


def test_jensen_gap_shape_errors_name_the_shapes():
    with pytest.raises(ValueError, match=r"member_losses \(3, 5\) and ensemble_loss \(4,\)"):
        per_sample_jensen_gap(np.zeros((3, 5)), np.zeros(4))
    with pytest.raises(ValueError, match=r"member_losses \(5,\)"):
        per_sample_jensen_gap(np.zeros(5), np.zeros(5))
    with pytest.raises(ValueError, match=r"member_losses \(0, 5\)"):
        per_sample_jensen_gap(np.zeros((0, 5)), np.zeros(5))
    with pytest.raises(ValueError, match="member_losses must be a finite number, got inf"):
        per_sample_jensen_gap(np.array([[np.inf, 1.0]]), np.zeros(2))


def test_estimate_needs_two_values_and_a_valid_confidence():
    with pytest.raises(ValueError, match=r"at least 2 entries.*\(1,\)"):
        estimate_mean(np.array([1.0]))
    with pytest.raises(ValueError, match="confidence.*got 1.0"):
        estimate_mean(np.array([1.0, 2.0]), confidence=1.0)


# --------------------------------------------------------------------------------------------------
# Properties
# --------------------------------------------------------------------------------------------------


@PROPERTY
@given(
    loss_ranges, lipschitzes, hessian_mins, lams, rates, st.lists(n_trains, min_size=2, max_size=20), deltas
)
def test_theorem44_gap_falls_in_n(c, eta, hmin, lam, p, ns, delta):
    gap = theorem44_gap(c, eta, hmin, lam, p, np.sort(ns), delta).value
    assert _non_increasing(gap)


@PROPERTY
@given(
    loss_ranges, lipschitzes, hessian_mins, lams, st.lists(rates, min_size=2, max_size=20), n_trains, deltas
)
def test_theorem44_gap_falls_in_p(c, eta, hmin, lam, ps, n, delta):
    gap = theorem44_gap(c, eta, hmin, lam, np.sort(ps), n, delta).value
    assert _non_increasing(gap)


@PROPERTY
@given(
    loss_ranges, lipschitzes, hessian_mins, st.lists(lams, min_size=2, max_size=20), rates, n_trains, deltas
)
def test_theorem44_gap_falls_in_lam(c, eta, hmin, lams_, p, n, delta):
    gap = theorem44_gap(c, eta, hmin, np.sort(lams_), p, n, delta).value
    assert _non_increasing(gap)


@PROPERTY
@given(
    loss_ranges, lipschitzes, st.lists(hessian_mins, min_size=2, max_size=20), lams, rates, n_trains, deltas
)
def test_theorem44_gap_falls_in_hessian_min_eig(c, eta, hmins, lam, p, n, delta):
    gap = theorem44_gap(c, eta, np.sort(hmins), lam, p, n, delta).value
    assert _non_increasing(gap)


@PROPERTY
@given(
    loss_ranges, lipschitzes, hessian_mins, lams, rates, n_trains, st.lists(deltas, min_size=2, max_size=20)
)
def test_theorem44_gap_rises_as_delta_shrinks(c, eta, hmin, lam, p, n, deltas_):
    # Sorted ascending in delta, the gap must not rise: equivalently it rises as delta shrinks.
    gap = theorem44_gap(c, eta, hmin, lam, p, n, np.sort(deltas_)).value
    assert _non_increasing(gap)


@PROPERTY
@given(risks, loss_ranges, lipschitzes, hessian_mins, lams, rates, n_trains, deltas)
def test_theorem44_matches_formula_and_vacuous_iff_denominator_not_positive(
    r, c, eta, hmin, lam, p, n, delta
):
    b = theorem44_bound(r, c, eta, hmin, lam, p, n, delta)
    denom = hmin + 2.0 * lam * sparsity(p)
    assert b.vacuous == (denom <= 0.0)
    assert stability_bound(eta, hmin, lam, p, n).vacuous == (denom <= 0.0)
    assert not math.isnan(b.value)
    if denom > 0.0:
        assert_allclose(
            b.terms["gap"], math.sqrt((c**2 + 24 * c * eta**2 / denom) / (2 * n * delta)), rtol=1e-12
        )
        assert_allclose(b.value, b.terms["r_hat"] + b.terms["gap"], rtol=1e-15)
        assert b.reason == ""
    else:
        assert b.value == math.inf and b.terms["gap"] == math.inf and b.reason.endswith("<= 0")


@PROPERTY
@given(risks, loss_ranges, lipschitzes, hessian_mins, lams, rates, n_trains, deltas)
def test_theorem44_is_lemma43_with_prop42_stability(r, c, eta, hmin, lam, p, n, delta):
    beta = stability_bound(eta, hmin, lam, p, n)
    thm = theorem44_bound(r, c, eta, hmin, lam, p, n, delta)
    # a denormal positive denominator overflows beta to inf: not vacuous, but not a number to compare
    if not beta.vacuous and math.isfinite(beta.value):
        lemma = lemma43_bound(r, c, n, delta, beta.value)
        assert_allclose(thm.value, lemma.value, rtol=1e-10)


@PROPERTY
@given(risks, loss_ranges, n_trains, deltas, stabilities, stabilities)
def test_terms_add_up_for_stability_bounds(r, c, n, delta, beta, beta_1):
    bounds = [
        lemma43_bound(r, c, n, delta, beta),
        lemma43_bound(r, c, n, delta, beta, stability_1=beta_1, form="corrected"),
        uniform_stability_bound(r, c, n, delta, beta),
    ]
    for b in bounds:
        assert not b.vacuous and b.reason == ""
        assert_allclose(b.value, sum(b.terms.values()), rtol=1e-15)
        assert b.terms["r_hat"] == r and math.isfinite(b.value)
    # The corrected form with beta_1 = beta is the printed one: 6 C n (2 beta) = 12 C n beta.
    assert_allclose(lemma43_bound(r, c, n, delta, beta, beta, "corrected").value, bounds[0].value, rtol=1e-14)


@PROPERTY
@given(
    st.lists(
        st.tuples(risks, loss_ranges, lipschitzes, hessian_mins, lams, rates, n_trains, deltas, stabilities),
        min_size=1,
        max_size=12,
    )
)
def test_vector_and_scalar_inputs_agree(rows):
    r, c, eta, hmin, lam, p, n, delta, beta = (np.array(col) for col in zip(*rows, strict=True))
    vector = {
        "theorem44": theorem44_bound(r, c, eta, hmin, lam, p, n, delta),
        "stability": stability_bound(eta, hmin, lam, p, n),
        "lemma43": lemma43_bound(r, c, n, delta, beta),
        "uniform": uniform_stability_bound(r, c, n, delta, beta),
    }
    for i, row in enumerate(rows):
        ri, ci, etai, hmini, lami, pi, ni, deltai, betai = row
        scalar = {
            "theorem44": theorem44_bound(ri, ci, etai, hmini, lami, pi, ni, deltai),
            "stability": stability_bound(etai, hmini, lami, pi, ni),
            "lemma43": lemma43_bound(ri, ci, ni, deltai, betai),
            "uniform": uniform_stability_bound(ri, ci, ni, deltai, betai),
        }
        for key, s in scalar.items():
            v = vector[key]
            assert_allclose(v.value[i], s.value, rtol=1e-15)
            assert v.vacuous[i] == s.vacuous and v.reason[i] == s.reason
            for name, term in s.terms.items():
                assert_allclose(v.terms[name][i], term, rtol=1e-15)


@PROPERTY
@given(
    st.floats(1e-6, 1e3),
    st.floats(0.0, 1e8),
    st.floats(-1e8, 1e8),
    st.floats(0.0, 1e8),
    st.floats(0.0, 1.0),
    st.integers(1, 10**12),
    st.floats(1e-300, 1.0, exclude_max=True),
)
def test_never_nan_on_wide_inputs(c, eta, hmin, lam, p, n, delta):
    values = [
        theorem44_bound(0.5, c, eta, hmin, lam, p, n, delta).value,
        stability_bound(eta, hmin, lam, p, n).value,
        uniform_stability_bound(0.5, c, n, delta, eta).value,
        lemma43_bound(0.5, c, n, delta, eta).value,
    ]
    assert not np.isnan(values).any()


@PROPERTY
@given(
    seed=st.integers(0, 2**32 - 1),
    n_members=st.integers(1, 8),
    n_samples=st.integers(1, 20),
    n_classes=st.integers(2, 10),
    scale=st.floats(0.1, 20.0),
)
def test_jensen_gap_nonnegative_for_cross_entropy(seed, n_members, n_samples, n_classes, scale):
    rng = np.random.default_rng(seed)
    logits = scale * rng.standard_normal((n_members, n_samples, n_classes))  # (N, n, K)
    labels = rng.integers(0, n_classes, size=n_samples)  # (n,)
    picked = np.arange(n_samples), labels

    def log_softmax(z):
        z = z - z.max(axis=-1, keepdims=True)
        return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))

    log_probs = log_softmax(logits)  # (N, n, K)
    member_ce = -log_probs[:, picked[0], picked[1]]  # (N, n)
    # Averaging probabilities (Eq. 8, default) and averaging logits are both convex for CE.
    ensemble_probs_ce = -np.log(np.exp(log_probs).mean(axis=0)[picked])  # (n,)
    ensemble_logits_ce = -log_softmax(logits.mean(axis=0))[picked]  # (n,)
    for ensemble_ce in (ensemble_probs_ce, ensemble_logits_ce):
        gap = per_sample_jensen_gap(member_ce, ensemble_ce)
        assert gap.shape == (n_samples,)
        assert np.all(gap >= -1e-12)
    if n_members == 1:  # a single member is its own ensemble
        assert_allclose(per_sample_jensen_gap(member_ce, ensemble_probs_ce), 0.0, atol=1e-12)


@PROPERTY
@given(
    st.lists(st.floats(-100.0, 100.0), min_size=2, max_size=50),
    st.floats(0.5, 0.99),
)
def test_estimate_interval_contains_the_mean_and_widens_with_confidence(values, confidence):
    x = np.array(values)
    e = estimate_mean(x, confidence)
    assert_allclose(e.value, x.mean(), rtol=1e-12, atol=1e-12)
    assert e.ci_low <= e.value <= e.ci_high
    assert_allclose(e.ci_high - e.value, e.value - e.ci_low, rtol=1e-9, atol=1e-9)
    wider = estimate_mean(x, min(confidence + 0.005, 0.999))
    assert wider.ci_high - wider.ci_low >= e.ci_high - e.ci_low
    assert e.n == len(values)


# --------------------------------------------------------------------------------------------------
# What Theorem 4.4 would need: lam_needed, n_needed
# --------------------------------------------------------------------------------------------------


def test_lam_needed_hand_computed():
    # the probes of a real run at p = 0.6: Lambda_min = -7.3, s = 0.84 -> 7.3 / 1.68
    assert_allclose(lam_needed(-7.3, 0.6), 7.3 / 1.68)
    assert lam_needed(-1.5, 0.5) == 1.0  # 1.5 / (2 * 0.75)
    assert lam_needed(-0.3, 0.1) == pytest.approx(0.3 / 0.38)  # s = 0.19
    assert lam_needed(0.2, 0.5) == 0.0 and lam_needed(0.2, 0.0) == 0.0  # PSD: any lam
    assert lam_needed(0.0, 0.5) == 0.0 and math.copysign(1.0, lam_needed(0.0, 0.5)) == 1.0  # no -0.0
    assert lam_needed(0.0, 0.0) == math.inf and lam_needed(-1.0, 0.0) == math.inf  # plain LoRA: none
    assert_array_equal(lam_needed(np.array([-1.5, 0.2]), 0.5), [1.0, 0.0])
    with pytest.raises(ValueError, match="dropout_rate"):
        lam_needed(-1.0, 1.5)


def test_n_needed_hand_computed():
    # worked example: D = 1.5, (1 + 24 / 1.5) / (2 * 0.05) = 170
    assert_allclose(n_needed(1.0, 1.0, 0.0, 1.0, 0.5, 0.05), 170.0)
    # C = 2, eta = 3, Lambda_min = -0.5, lam = 1, p = 0.5: D = 1, (4 + 24*2*9/1) / (2*0.1*4) = 436 / 0.8
    assert_allclose(n_needed(2.0, 3.0, -0.5, 1.0, 0.5, 0.1), 545.0)
    assert n_needed(1.0, 1.0, -0.5, 0.1, 0.5, 0.05) == math.inf  # D = -0.35: vacuous at any n
    assert n_needed(1.0, 1.0, 0.0, 1.0, 0.0, 0.05) == math.inf  # D = 0 exactly
    assert_allclose(n_needed(1.0, 0.0, 0.0, 1.0, 0.5, 0.05), 10.0)  # eta = 0: C^2 / (2 delta C^2)
    out = n_needed(1.0, 1.0, np.array([0.0, -2.0]), 1.0, 0.5, 0.05)
    assert_allclose(out, [170.0, np.inf])


def test_n_needed_is_where_the_gap_crosses_the_loss_range():
    args = dict(loss_range=2.0, lipschitz=3.0, hessian_min_eig=-0.5, lam=1.0, p=0.5, delta=0.1)
    n_star = n_needed(**args)  # 545
    gaps = theorem44_gap(n=np.array([n_star, n_star - 1, n_star + 1]), **args).value
    assert_allclose(gaps[0], 2.0)
    assert gaps[1] > 2.0 > gaps[2]


@PROPERTY
@given(c=loss_ranges, eta=lipschitzes, hmin=hessian_mins, lam=lams, p=rates, delta=deltas)
def test_n_needed_matches_the_gap(c, eta, hmin, lam, p, delta):
    n_star = n_needed(c, eta, hmin, lam, p, delta)
    d = hmin + 2 * lam * sparsity(p)
    if d <= 0:
        assert n_star == math.inf
        return
    if n_star == math.inf:  # D so small that 24 C eta^2 / D overflows: +inf, the right limit
        return
    assert n_star >= (1.0 - 1e-12) / (2.0 * delta)  # the C^2 term alone
    n = max(1, math.ceil(n_star * 1.001))  # beyond the threshold the gap is below C
    assert theorem44_gap(c, eta, hmin, lam, p, n, delta).value < c * (1 + 1e-12)


@PROPERTY
@given(hmin=hessian_mins, p=st.one_of(st.just(0.0), st.floats(1e-6, 1.0, exclude_max=True)))
def test_lam_needed_is_where_the_denominator_turns_positive(hmin, p):
    lam_star = lam_needed(hmin, p)
    s = sparsity(p)
    if lam_star == math.inf:
        assert hmin <= 0 and s == 0
        return
    assert lam_star >= 0
    assert hmin + 2 * (lam_star * (1 + 1e-9) + 1e-6) * s > 0  # just above: D > 0
    if lam_star > 1e-9:  # (not a subnormal Lambda_min, where lam_star * 0.99 rounds to lam_star)
        assert hmin + 2 * lam_star * s == pytest.approx(0.0, abs=1e-12)  # at it: D = 0
        assert stability_bound(1.0, hmin, lam_star * 0.99, p, 10).vacuous
