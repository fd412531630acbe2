"""Tests of the PAC-Bayes part of bounds.formulas (docs/certificate.md): golden values, closed forms,
properties, coverage, errors."""

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
from scipy.optimize import brentq
from scipy.special import gammaln, xlogy

from bounds.formulas import (
    DEFAULT_TOL,
    DropoutKL,
    EnsembleCertificate,
    GibbsLoss,
    PacBayesCertificate,
    bernoulli_kl,
    certificate,
    dropout_kl,
    ensemble_transfer,
    grid_delta,
    kl_inv_upper,
    monte_carlo_upper,
    pac_bayes_kl_bound,
    pac_bayes_kl_rhs,
)

# derandomize: the same examples on every run, so CI cannot turn red by luck
PROPERTY = settings(max_examples=100, deadline=None, derandomize=True)

units = st.floats(0.0, 1.0)
budgets = st.floats(0.0, 20.0)
kls = st.floats(0.0, 1e4)
n_bounds = st.integers(1, 10**6)
draws = st.integers(1, 100)
deltas = st.floats(1e-9, 1.0, exclude_min=True, exclude_max=True)
grids = st.integers(1, 1000)
rates = st.floats(0.0, 1.0)
sq_dists = st.floats(0.0, 1e6)
stds = st.floats(1e-3, 10.0)

# The bracket the bisection guarantees (see kl_inv_upper): tol plus a few ulp of midpoint rounding.
SLACK = 1.01


def _exact_inverse(q: float, c: float) -> float:
    """sup {r in [q, 1] : kl(q || r) <= c} by an independent root finder (brentq)."""
    if q == 1.0 or c == 0.0:
        return q
    return brentq(lambda r: bernoulli_kl(q, r) - c, q, 1.0, xtol=1e-15)  # to within ~2e-15


def _non_decreasing(x: np.ndarray) -> bool:
    return bool(np.all(np.diff(x) >= 0.0))


# --------------------------------------------------------------------------------------------------
# Golden values (derived by hand in the comments)
# --------------------------------------------------------------------------------------------------


def test_bernoulli_kl_golden():
    # kl(0.1 || 0.2) = 0.1 ln(0.1/0.2) + 0.9 ln(0.9/0.8) = 0.1 * (-0.6931472) + 0.9 * 0.1177830
    #                = -0.0693147 + 0.1060047 = 0.0366900
    assert_allclose(bernoulli_kl(0.1, 0.2), 0.0366900, atol=5e-7)
    # kl(0 || 1/2) = 0 + 1 * ln(1 / (1/2)) = ln 2 = 0.6931472
    assert_allclose(bernoulli_kl(0.0, 0.5), 0.6931472, atol=5e-8)
    # kl(1 || 1/4) = 1 * ln(1 / (1/4)) + 0 = ln 4 = 1.3862944
    assert_allclose(bernoulli_kl(1.0, 0.25), 1.3862944, atol=5e-8)
    # kl(1/2 || 3/4) = 0.5 ln(2/3) + 0.5 ln(2) = 0.5 ln(4/3) = 0.1438410
    assert_allclose(bernoulli_kl(0.5, 0.75), 0.1438410, atol=5e-8)
    # kl(0.2 || 0.1) = 0.2 ln 2 + 0.8 ln(8/9) = 0.1386294 - 0.0942264 = 0.0444030 (not symmetric)
    assert_allclose(bernoulli_kl(0.2, 0.1), 0.0444030, atol=5e-7)
    assert type(bernoulli_kl(0.1, 0.2)) is float


def test_bernoulli_kl_edge_conventions():
    # 0 ln 0 = 0: kl(0 || 0) = kl(1 || 1) = 0; a ln(a / 0) = +inf for a > 0.
    q = np.array([0.0, 1.0, 0.0, 1.0, 0.5, 0.5, 0.3])
    p = np.array([0.0, 1.0, 1.0, 0.0, 0.0, 1.0, 0.3])
    assert_array_equal(bernoulli_kl(q, p), [0.0, 0.0, np.inf, np.inf, np.inf, np.inf, 0.0])
    # kl(0 || p) = -ln(1 - p) and kl(1 || p) = -ln p on a grid (no NaN from 0 * log 0)
    grid = np.linspace(0.0, 0.99, 12)
    assert_allclose(bernoulli_kl(0.0, grid), -np.log1p(-grid), rtol=1e-14, atol=1e-300)
    assert_allclose(bernoulli_kl(1.0, grid[1:]), -np.log(grid[1:]), rtol=1e-14)
    assert np.all(bernoulli_kl(np.linspace(0, 1, 11), np.linspace(0, 1, 11)) == 0.0)


def test_bernoulli_kl_is_accurate_near_the_diagonal():
    # kl(q || q + d) = d^2 / 2 (1/q + 1/(1-q)) - d^3 / 3 (1/q^2 - 1/(1-q)^2) + O(d^4). For q = 0.3:
    # 1/q + 1/(1-q) = 1 / 0.21 = 4.7619048; 1/q^2 - 1/(1-q)^2 = 11.1111111 - 2.0408163 = 9.0702948.
    # d is the float difference (exact: Sterbenz), so the input's rounding does not count.
    q = 0.3
    for step in (1e-9, 1e-6, -1e-7, 1e-4):
        d = (q + step) - q
        expected = d * d / 2.0 * 4.7619048 - d**3 / 3.0 * 9.0702948 + d**4 / 4.0 * (1 / q**3 + 1 / (1 - q) ** 3)
        # (the textbook form q ln(q/p) + (1-q) ln((1-q)/(1-p)) is off by ~1e-16 absolute, i.e. by
        # ~4% at step 1e-9, where kl ~ 2.4e-18)
        assert_allclose(bernoulli_kl(q, q + d), expected, rtol=1e-7)


def test_bernoulli_kl_relative_accuracy_against_mpmath():
    mpmath = pytest.importorskip("mpmath")  # installed with the training side; the check is optional
    mpmath.mp.prec = 200
    rng = np.random.default_rng(5)
    q = rng.uniform(0.0, 1.0, 300)
    # pairs far apart, close (|p - q| / q around 1e-2 .. 1e-12, both series and log1p branches), near 0 and 1
    p = np.concatenate([rng.uniform(0.0, 1.0, 100), q[100:200] * (1 + 10.0 ** rng.uniform(-12, -1, 100)),
                        rng.uniform(0.0, 1e-3, 50), 1 - rng.uniform(0.0, 1e-3, 50)])
    p = np.clip(p, 0.0, 1.0)
    got = bernoulli_kl(q, p)
    for a, b, g in zip(q, p, got, strict=True):
        qa, pb = mpmath.mpf(float(a)), mpmath.mpf(float(b))
        exact = qa * mpmath.log(qa / pb) + (1 - qa) * mpmath.log((1 - qa) / (1 - pb))
        assert abs(g - float(exact)) <= 1e-13 * float(exact) + 1e-300, (a, b, g, exact)


def test_kl_inv_upper_closed_form_at_zero():
    # kl(0 || r) = -ln(1 - r) = c  =>  r = 1 - exp(-c): c = 0.1 -> 0.0951626, c = 1 -> 0.6321206,
    # c = ln 2 -> 1/2.
    assert_allclose(kl_inv_upper(0.0, 0.1), 0.0951626, atol=5e-8)
    assert_allclose(kl_inv_upper(0.0, 1.0), 0.6321206, atol=5e-8)
    assert_allclose(kl_inv_upper(0.0, math.log(2.0)), 0.5, atol=DEFAULT_TOL)
    c = np.array([0.0, 1e-6, 0.01, 0.5, 3.0, 30.0])
    r = kl_inv_upper(0.0, c)
    exact = -np.expm1(-c)
    assert np.all(r >= exact) and np.all(r - exact <= SLACK * DEFAULT_TOL)


def test_kl_inv_upper_closed_form_at_one_half():
    # kl(1/2 || r) = -0.5 ln(4 r (1 - r)) = c  =>  r = (1 + sqrt(1 - exp(-2c))) / 2.
    # c = 0.5 ln(4/3) = 0.1438410: 4 r (1 - r) = 3/4, r = 3/4.
    assert_allclose(kl_inv_upper(0.5, 0.5 * math.log(4.0 / 3.0)), 0.75, atol=SLACK * DEFAULT_TOL)
    # c = ln(2) / 2: r = (1 + sqrt(1/2)) / 2 = 0.8535534
    assert_allclose(kl_inv_upper(0.5, math.log(2.0) / 2.0), 0.8535534, atol=5e-8)
    c = np.concatenate([[1e-14, 1e-12, 1e-10], np.linspace(0.0, 5.0, 11)])
    r = kl_inv_upper(0.5, c)
    exact = (1.0 + np.sqrt(-np.expm1(-2.0 * c))) / 2.0
    assert np.all(r >= exact - 4e-15) and np.all(r - exact <= SLACK * DEFAULT_TOL)


def test_kl_inv_upper_trivial_cases():
    assert kl_inv_upper(1.0, 0.7) == 1.0  # nothing above 1
    assert kl_inv_upper(0.3, np.inf) == 1.0  # an infinite budget allows everything
    assert 0.3 <= kl_inv_upper(0.3, 0.0) <= 0.3 + SLACK * DEFAULT_TOL  # c = 0: r* = q
    # a coarse tolerance rounds upward: never below the exact value, at most tol above it
    exact = 1.0 - math.exp(-0.1)
    r = kl_inv_upper(0.0, 0.1, tol=1e-3)
    assert exact <= r <= exact + 1e-3


def test_kl_inv_upper_against_brentq():
    rng = np.random.default_rng(0)
    q = rng.uniform(0.0, 1.0, 200)
    c = rng.exponential(0.5, 200)
    r = kl_inv_upper(q, c)
    exact = np.array([_exact_inverse(a, b) for a, b in zip(q, c, strict=True)])
    assert np.all(r >= exact - 4e-15)
    assert np.all(r - exact <= SLACK * DEFAULT_TOL)


def test_pac_bayes_bound_golden_at_zero_risk():
    # n = 100, delta = 0.05, KL = 5: ln(2 sqrt(100) / 0.05) = ln 400 = 2 ln 20 = 5.9914645;
    # rhs = (5 + 5.9914645) / 100 = 0.1099146; at R_hat = 0, R <= 1 - exp(-0.1099146) = 0.1040894.
    assert_allclose(pac_bayes_kl_rhs(5.0, 100, 0.05), 0.1099146, atol=5e-8)
    assert_allclose(pac_bayes_kl_bound(0.0, 5.0, 100, 0.05), 0.1040894, atol=5e-8)


def test_pac_bayes_bound_golden_at_one_half():
    # Choose KL so that rhs = 0.5 ln(4/3): KL = 100 * 0.5 ln(4/3) - ln 400 = 14.3841036 - 5.9914645
    # = 8.3926391 (n = 100, delta = 0.05). Then at R_hat = 1/2 the bound is exactly 3/4 (see above).
    kl = 50.0 * math.log(4.0 / 3.0) - math.log(400.0)
    assert_allclose(kl, 8.3926391, atol=5e-8)
    assert_allclose(pac_bayes_kl_bound(0.5, kl, 100, 0.05), 0.75, atol=1e-11)


def test_monte_carlo_upper_golden():
    # m = n_b k = 250 * 4 = 1000 draws, delta' = 0.01, estimate 0: ln(100) / 1000 = 0.0046052;
    # upper = 1 - exp(-0.0046052) = 1 - 0.01**(1/1000) = 0.0045946.
    assert_allclose(monte_carlo_upper(0.0, 1000, 0.01), 0.0045946, atol=5e-8)
    # estimate 1/2, m = 100, delta' = (3/4)**50: rhs = 50 ln(4/3) / 100 = 0.5 ln(4/3) -> upper = 3/4.
    assert_allclose(monte_carlo_upper(0.5, 100, 0.75**50), 0.75, atol=1e-11)


def test_grid_delta_golden():
    assert grid_delta(0.05, 5) == 0.01
    assert_allclose(grid_delta(0.05, np.array([1, 2, 10])), [0.05, 0.025, 0.005], rtol=1e-15)


def test_certificate_golden_terms():
    # gibbs_estimate 0.2, KL 50, n_b = 2000, k = 4, delta = delta' = 0.025, |grid| = 5:
    # per point delta = delta' = 0.005; mc_rhs = ln(200) / 8000 = 5.2983174 / 8000 = 6.622897e-4;
    # rhs = (50 + ln 2 + 0.5 ln 2000 + ln 200) / 2000
    #     = (50 + 0.6931472 + 3.8004512 + 5.2983174) / 2000 = 59.7919158 / 2000 = 0.0298960.
    c = certificate(0.2, 50.0, 2000, 4, 0.025, 0.025, 5)
    assert c.delta_per_point == 0.005 and c.delta_prime_per_point == 0.005
    assert_allclose(c.mc_rhs, 6.622897e-4, rtol=1e-6)
    assert_allclose(c.rhs, 0.0298960, atol=5e-8)
    assert c.failure_probability == 0.05
    assert c.loss is GibbsLoss.ZERO_ONE
    # Each step solves its kl equation (independent root finder): kl(0.2 || upper) = mc_rhs,
    # kl(upper || value) = rhs; values 0.2148191 and 0.3252323.
    assert 0.0 <= c.gibbs_upper - _exact_inverse(0.2, c.mc_rhs) <= SLACK * DEFAULT_TOL
    assert 0.0 <= c.value - _exact_inverse(c.gibbs_upper, c.rhs) <= 2 * SLACK * DEFAULT_TOL
    assert_allclose([c.gibbs_upper, c.value], [0.2148191, 0.3252323], atol=5e-8)


def test_certificate_composes_the_steps():
    est = np.array([0.0, 0.1, 0.24, 0.5])
    c = certificate(est, 120.0, 1500, 3, 0.04, 0.01, grid_size=8)
    upper = monte_carlo_upper(est, 1500 * 3, 0.01 / 8)
    assert_array_equal(c.gibbs_upper, upper)
    assert_array_equal(c.value, pac_bayes_kl_bound(upper, 120.0, 1500, grid_delta(0.04, 8)))
    assert_array_equal(c.gibbs_estimate, est)
    assert c.kl.shape == est.shape and np.all(c.kl == 120.0)


def test_certificate_at_zero_estimate_with_infinitely_many_draws_is_the_closed_form():
    # With k huge, the Monte Carlo term vanishes and the value tends to 1 - exp(-rhs) = 0.1040894
    # (the golden case above: KL 5, n_b 100, delta 0.05).
    c = certificate(0.0, 5.0, 100, 10**15, 0.05, 0.01)
    assert_allclose(c.value, 0.1040894, atol=5e-7)


def test_dropout_kl_golden():
    # p = 0.3, ||A-A_P||^2 + ||B-B_P||^2 = 4, ||head-head_P||^2 = 1, sigma = 0.1: 2 sigma^2 = 0.02;
    # factor term = 0.7 * 4 / 0.02 = 140, head term = 1 / 0.02 = 50, total 190.
    k = dropout_kl(0.3, 4.0, 1.0, 0.1)
    assert_allclose([k.factor_term, k.head_term, k.total], [140.0, 50.0, 190.0], rtol=1e-13)
    assert type(k.total) is float


def test_certificate_accepts_a_dropout_kl():
    k = dropout_kl(0.3, 4.0, 1.0, 0.1)
    assert certificate(0.2, k, 2000, 4, 0.05, 0.05).value == certificate(0.2, 190.0, 2000, 4, 0.05, 0.05).value


def test_ensemble_transfer_golden():
    e = ensemble_transfer(0.3)
    assert (e.linear_loss, e.zero_one_error) == (0.3, 0.6)
    assert ensemble_transfer(0.6).zero_one_error == 1.0  # min(1, 1.2)
    assert_array_equal(ensemble_transfer(np.array([0.0, 0.25, 0.5, 1.0])).zero_one_error, [0.0, 0.5, 1.0, 1.0])


def test_ensemble_transfer_takes_only_linear_loss_certificates():
    linear = certificate(0.2, 50.0, 2000, 4, 0.025, 0.025, loss="linear")
    assert ensemble_transfer(linear).linear_loss == linear.value
    assert ensemble_transfer(linear).zero_one_error == min(1.0, 2.0 * linear.value)
    zero_one = certificate(0.2, 50.0, 2000, 4, 0.025, 0.025)
    with pytest.raises(ValueError, match="linear loss.*loss='zero_one'"):
        ensemble_transfer(zero_one)


def test_ensemble_zero_one_error_is_at_most_twice_its_linear_loss():
    # The argument behind ensemble_transfer, on random probability averages: wrong argmax => o_y <= 1/2.
    rng = np.random.default_rng(1)
    for n_classes in (2, 3, 10):
        probs = rng.dirichlet(np.full(n_classes, 0.5), size=(5000, 4))  # 5000 examples, N = 4 members
        o = probs.mean(axis=1)
        y = rng.integers(0, n_classes, 5000)
        o_y = o[np.arange(5000), y]
        wrong = o.argmax(axis=1) != y
        assert np.all(wrong <= 2.0 * (1.0 - o_y))
        # the ensemble's linear loss is the mean member's linear loss, per example
        assert_allclose(1.0 - o_y, (1.0 - probs[np.arange(5000), :, y]).mean(axis=1), rtol=1e-12)


def test_maurer_constant_two_sqrt_n_holds_for_every_n():
    # xi(n) = sum_k C(n, k) (k/n)^k (1 - k/n)^(n - k) = E exp(n kl(R_hat || R)) at its worst (Maurer 2004);
    # the rhs's ln(2 sqrt(n)) needs xi(n) <= 2 sqrt(n); xi(1) = 2 (equality), xi(2) = 2.5.
    for n in range(1, 301):
        k = np.arange(n + 1)
        log_terms = gammaln(n + 1) - gammaln(k + 1) - gammaln(n - k + 1) + xlogy(k, k / n) + xlogy(n - k, 1 - k / n)
        xi = np.exp(log_terms).sum()
        assert xi <= 2.0 * math.sqrt(n) * (1 + 1e-12), n
    assert_allclose(np.exp(xlogy(np.arange(3), np.arange(3) / 2) + xlogy(2 - np.arange(3), 1 - np.arange(3) / 2))
                    @ np.array([1, 2, 1]), 2.5)


# --------------------------------------------------------------------------------------------------
# Coverage (the direction of every inverse is checked by simulation)
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mean", [0.02, 0.3, 0.7])
def test_monte_carlo_upper_covers_the_mean(mean):
    # Bernoulli losses (the worst case in [0, 1]); 20000 repetitions of m = 50 draws, delta' = 0.1.
    rng = np.random.default_rng(2)
    estimates = rng.binomial(50, mean, size=20000) / 50
    fails = np.mean(mean > monte_carlo_upper(estimates, 50, 0.1))
    assert fails <= 0.1  # Chernoff is conservative: about 0.03 here; an optimistic inverse fails ~half


def test_monte_carlo_upper_covers_a_mean_of_unequal_losses():
    # Independent, not identically distributed [0, 1] losses (one mean per example), as in the toolkit.
    rng = np.random.default_rng(3)
    means = rng.uniform(0.0, 0.6, size=40)  # per-example Gibbs risks; R_hat_Q = their mean
    a, b = 2.0 * means + 1e-3, 2.0 * (1.0 - means) + 1e-3
    losses = rng.beta(a, b, size=(5000, 5, 40))  # k = 5 draws for each of n_b = 40 examples
    target = float(np.mean(a / (a + b)))  # E beta(a, b) = a / (a + b), averaged over the examples
    fails = np.mean(target > monte_carlo_upper(losses.mean(axis=(1, 2)), 200, 0.1))
    assert fails <= 0.1


def test_pac_bayes_bound_covers_with_posterior_equal_to_prior():
    # Q = P (KL = 0): the bound must hold for the 0-1 risk of one fixed predictor w.p. >= 1 - delta.
    rng = np.random.default_rng(4)
    for risk in (0.05, 0.4):
        r_hat = rng.binomial(30, risk, size=20000) / 30
        fails = np.mean(risk > pac_bayes_kl_bound(r_hat, 0.0, 30, 0.2))
        assert fails <= 0.2


# --------------------------------------------------------------------------------------------------
# Properties
# --------------------------------------------------------------------------------------------------


@PROPERTY
@given(units, budgets)
def test_kl_inv_upper_brackets_the_exact_inverse(q, c):
    tol = 1e-9
    r = kl_inv_upper(q, c, tol=tol)
    assert q <= r <= 1.0
    # upper side: kl(q || r) >= c, or r = 1 (the certificate is never optimistic)
    assert r == 1.0 or bernoulli_kl(q, r) >= c
    # at most tol above: the point tol below r is still inside the set
    assert bernoulli_kl(q, max(q, r - SLACK * tol)) <= c


@PROPERTY
@given(units, st.lists(budgets, min_size=2, max_size=20))
def test_kl_inv_upper_is_monotone_in_c(q, cs):
    assert _non_decreasing(kl_inv_upper(q, np.sort(cs)))


@PROPERTY
@given(st.lists(units, min_size=2, max_size=20), budgets)
def test_kl_inv_upper_is_monotone_in_q(qs, c):
    assert _non_decreasing(kl_inv_upper(np.sort(qs), c))


@settings(max_examples=30, deadline=None, derandomize=True)  # scalar calls are slow: ~8 ms each
@given(st.lists(st.tuples(units, budgets), min_size=1, max_size=8))
def test_vector_inputs_match_scalar_ones(pairs):
    q, c = (np.array(x) for x in zip(*pairs, strict=True))
    assert_array_equal(kl_inv_upper(q, c), [kl_inv_upper(a, b) for a, b in pairs])
    assert_array_equal(bernoulli_kl(q, c / 20.0), [bernoulli_kl(a, b / 20.0) for a, b in pairs])
    n = np.arange(1, q.size + 1) * 37
    assert_array_equal(pac_bayes_kl_bound(q, c, n, 0.05), [pac_bayes_kl_bound(a, b, m, 0.05)
                                                          for a, b, m in zip(q, c, n, strict=True)])
    assert_array_equal(monte_carlo_upper(q, n, 0.05), [monte_carlo_upper(a, m, 0.05) for a, m in zip(q, n, strict=True)])
    cert = certificate(q, c * 10, n, 3, 0.05, 0.01, 4)
    for i, (a, b, m) in enumerate(zip(q, c, n, strict=True)):
        one = certificate(a, b * 10, m, 3, 0.05, 0.01, 4)
        assert cert.value[i] == one.value and cert.gibbs_upper[i] == one.gibbs_upper and cert.rhs[i] == one.rhs
    k = dropout_kl(q, c, c / 2, 0.5)
    assert_array_equal(k.total, [dropout_kl(a, b, b / 2, 0.5).total for a, b in pairs])


@PROPERTY
@given(units, kls, n_bounds, draws, deltas, deltas, grids)
def test_certificate_is_never_below_the_empirical_risk(est, kl, n, k, delta, delta_prime, g):
    c = certificate(est, kl, n, k, delta, delta_prime, g)
    assert est <= c.gibbs_upper <= c.value <= 1.0


@PROPERTY
@given(units, st.lists(kls, min_size=2, max_size=20), n_bounds, draws, deltas, deltas, grids)
def test_certificate_grows_with_kl(est, kl, n, k, delta, delta_prime, g):
    values = certificate(est, np.sort(kl), n, k, delta, delta_prime, g).value
    assert _non_decreasing(values)


def test_certificate_grows_strictly_with_kl_when_informative():
    values = certificate(0.1, np.array([0.0, 1.0, 10.0, 100.0]), 5000, 2, 0.05, 0.05).value
    assert np.all(np.diff(values) > 0.0) and values[-1] < 1.0


@PROPERTY
@given(units, kls, st.lists(n_bounds, min_size=2, max_size=20), draws, deltas, deltas, grids)
def test_certificate_shrinks_with_n(est, kl, ns, k, delta, delta_prime, g):
    values = certificate(est, kl, np.sort(ns), k, delta, delta_prime, g).value
    assert _non_decreasing(values[::-1])


@PROPERTY
@given(units, kls, n_bounds, st.lists(draws, min_size=2, max_size=20), deltas, deltas, grids)
def test_certificate_shrinks_with_posterior_draws(est, kl, n, ks, delta, delta_prime, g):
    assert _non_decreasing(certificate(est, kl, n, np.sort(ks), delta, delta_prime, g).value[::-1])


@PROPERTY
@given(units, kls, n_bounds, draws, deltas, deltas, st.lists(grids, min_size=2, max_size=20))
def test_certificate_pays_for_the_grid(est, kl, n, k, delta, delta_prime, gs):
    assert _non_decreasing(certificate(est, kl, n, k, delta, delta_prime, np.sort(gs)).value)


@PROPERTY
@given(units, kls, n_bounds, draws, st.lists(deltas, min_size=2, max_size=20), deltas, grids)
def test_certificate_shrinks_with_delta(est, kl, n, k, ds, delta_prime, g):
    assert _non_decreasing(certificate(est, kl, n, k, np.sort(ds), delta_prime, g).value[::-1])


@PROPERTY
@given(kls, st.lists(n_bounds, min_size=2, max_size=20), deltas)
def test_pac_bayes_rhs_falls_strictly_in_n(kl, ns, delta):
    rhs = pac_bayes_kl_rhs(kl, np.unique(ns), delta)
    assert np.all(np.diff(rhs) < 0.0)


@PROPERTY
@given(sq_dists, sq_dists, stds)
def test_dropout_kl_at_p_zero_is_the_gaussian_kl(f, h, sigma):
    k = dropout_kl(0.0, f, h, sigma)
    assert_allclose(k.total, (f + h) / (2.0 * sigma**2), rtol=1e-13)
    assert_allclose(k.factor_term, f / (2.0 * sigma**2), rtol=1e-13)


@PROPERTY
@given(sq_dists, sq_dists, stds)
def test_dropout_kl_at_p_one_keeps_only_the_head(f, h, sigma):
    k = dropout_kl(1.0, f, h, sigma)
    assert k.factor_term == 0.0
    assert k.total == k.head_term
    assert_allclose(k.head_term, h / (2.0 * sigma**2), rtol=1e-13)
    # and approaching 1 it tends there: the factor term is (1 - p) times the p = 0 one
    near = dropout_kl(1.0 - 1e-9, f, h, sigma)
    assert_allclose(near.factor_term, 1e-9 * f / (2.0 * sigma**2), rtol=1e-6, atol=1e-300)


@PROPERTY
@given(st.lists(rates, min_size=2, max_size=20), sq_dists, sq_dists, stds)
def test_dropout_kl_terms_add_up_and_fall_in_p(ps, f, h, sigma):
    k = dropout_kl(np.sort(ps), f, h, sigma)
    assert_array_equal(k.total, k.factor_term + k.head_term)
    assert _non_decreasing(k.total[::-1])
    assert np.all(k.head_term == k.head_term[0])


# --------------------------------------------------------------------------------------------------
# Records and errors
# --------------------------------------------------------------------------------------------------


def test_records_are_frozen_read_only_and_jsonable():
    c = certificate(np.array([0.1, 0.2]), 10.0, 1000, 2, 0.05, 0.05, 3)
    assert isinstance(c, PacBayesCertificate)
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.value = 0.0
    with pytest.raises(ValueError, match="read-only"):
        c.value[0] = 0.0
    assert c.n_bound.shape == (2,)  # every array field broadcast to one shape
    d = json.loads(json.dumps(c.to_dict()))
    assert d["loss"] == "zero_one" and d["grid_size"] == [3.0, 3.0]
    scalar = certificate(0.1, 10.0, 1000, 2, 0.05, 0.05)
    assert all(type(getattr(scalar, f.name)) is float for f in dataclasses.fields(scalar) if f.name != "loss")
    k = dropout_kl(np.array([0.1, 0.5]), 1.0, 1.0, 1.0)
    assert isinstance(k, DropoutKL) and k.head_term.shape == (2,)
    e = ensemble_transfer(np.array([0.1]))
    assert isinstance(e, EnsembleCertificate)
    assert json.loads(json.dumps(e.to_dict())) == {"linear_loss": [0.1], "zero_one_error": [0.2]}


def test_infinite_budgets_give_the_trivial_bound():
    assert pac_bayes_kl_bound(0.1, np.inf, 100, 0.05) == 1.0
    assert certificate(0.1, np.inf, 100, 2, 0.05, 0.05).value == 1.0
    assert dropout_kl(0.5, 1.0, 1.0, 1e-200).total == np.inf


VALID = {
    bernoulli_kl: dict(q=0.1, p=0.2),
    kl_inv_upper: dict(q=0.1, c=0.2),
    dropout_kl: dict(p=0.3, factor_sq_dist=1.0, head_sq_dist=1.0, posterior_std=0.1),
    pac_bayes_kl_rhs: dict(kl=1.0, n=100, delta=0.05),
    pac_bayes_kl_bound: dict(empirical_risk=0.1, kl=1.0, n=100, delta=0.05),
    monte_carlo_upper: dict(estimate=0.1, n_draws_total=100, delta_prime=0.05),
    grid_delta: dict(delta=0.05, grid_size=4),
    certificate: dict(gibbs_estimate=0.1, kl=1.0, n_bound=100, posterior_draws=2, delta=0.05,
                      delta_prime=0.05, grid_size=4),
    ensemble_transfer: dict(gibbs_linear_certificate=0.3),
}


@pytest.mark.parametrize(
    "fn, arg, bad, name, first",
    [
        (bernoulli_kl, "q", 1.5, "q", 1.5),
        (bernoulli_kl, "p", np.array([0.2, -0.1]), "p", -0.1),
        (kl_inv_upper, "q", np.nan, "q", np.nan),
        (kl_inv_upper, "c", -0.5, "c", -0.5),
        (kl_inv_upper, "c", -np.inf, "c", -np.inf),
        (kl_inv_upper, "tol", 0.0, "tol", 0.0),
        (dropout_kl, "p", 1.2, "dropout_rate p", 1.2),
        (dropout_kl, "factor_sq_dist", -1.0, "factor_sq_dist", -1.0),
        (dropout_kl, "head_sq_dist", np.inf, "head_sq_dist", np.inf),
        (dropout_kl, "posterior_std", 0.0, "posterior_std sigma", 0.0),
        (pac_bayes_kl_rhs, "n", 0, "n", 0.0),
        (pac_bayes_kl_bound, "empirical_risk", -0.01, "empirical_risk", -0.01),
        (pac_bayes_kl_bound, "kl", -2.0, "kl", -2.0),
        (pac_bayes_kl_bound, "n", 10.5, "n", 10.5),
        (pac_bayes_kl_bound, "delta", 1.0, "delta", 1.0),
        (monte_carlo_upper, "estimate", 2.0, "estimate", 2.0),
        (monte_carlo_upper, "n_draws_total", 0, "n_draws_total", 0.0),
        (monte_carlo_upper, "delta_prime", 0.0, "delta_prime", 0.0),
        (grid_delta, "grid_size", 0, "grid_size", 0.0),
        (grid_delta, "delta", 1.5, "delta", 1.5),
        (certificate, "gibbs_estimate", 1.1, "gibbs_estimate", 1.1),
        (certificate, "n_bound", 0, "n_bound", 0.0),
        (certificate, "posterior_draws", 2.5, "posterior_draws", 2.5),
        (certificate, "delta_prime", -0.1, "delta_prime", -0.1),
        (certificate, "grid_size", np.array([1, 0]), "grid_size", 0.0),
        (ensemble_transfer, "gibbs_linear_certificate", 1.5, "gibbs_linear_certificate", 1.5),
    ],
)
def test_bad_argument_is_named(fn, arg, bad, name, first):
    fn(**VALID[fn])  # the valid call works, so the error below is the bad argument's
    with pytest.raises(ValueError, match=rf"^{re.escape(name)} must be .*got {re.escape(repr(first))}"):
        fn(**{**VALID[fn], arg: bad})


def test_error_messages_read_well():
    with pytest.raises(ValueError, match=r"^c must be a number or \+inf >= 0, got -0.5$"):
        kl_inv_upper(0.1, -0.5)
    with pytest.raises(ValueError, match=r"^q must be a finite number in \[0, 1\], got 1.5 \(1 of 2 entries bad\)$"):
        bernoulli_kl(np.array([0.1, 1.5]), 0.2)
    with pytest.raises(ValueError, match=r"^delta must be a finite number in \(0, 1\), got 0.0$"):
        pac_bayes_kl_bound(0.1, 1.0, 10, 0.0)
    with pytest.raises(ValueError, match=r"^n_bound must be a finite integer >= 1, got 2.5$"):
        certificate(0.1, 1.0, 2.5, 1, 0.05, 0.05)
    with pytest.raises(ValueError, match="loss='hinge' is not one of 'zero_one', 'linear'"):
        certificate(0.1, 1.0, 10, 1, 0.05, 0.05, loss="hinge")
