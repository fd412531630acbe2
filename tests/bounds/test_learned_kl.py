"""`learned_dropout_kl`: the KL bound of a dropout posterior with learned mean and per-tensor stds.

Held against `dropout_kl` where they coincide (every std equal to the prior's) and against the Gaussian
KL computed by numerical integration of the densities, entry by entry, weighted by the keep probability.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from numpy.testing import assert_allclose
from scipy import integrate, stats

from bounds.formulas import dropout_kl, learned_dropout_kl


def _gaussian_kl_by_quadrature(mu_q, s_q, mu_p, s_p):
    """KL(N(mu_q, s_q^2) || N(mu_p, s_p^2)) as the integral of q ln(q / p): independent of the closed form."""
    q, p = stats.norm(mu_q, s_q), stats.norm(mu_p, s_p)
    lo, hi = mu_q - 12 * s_q, mu_q + 12 * s_q
    value, err = integrate.quad(lambda x: q.pdf(x) * (q.logpdf(x) - p.logpdf(x)), lo, hi, epsabs=1e-13, limit=200)
    return value, err


def test_equal_stds_give_dropout_kl():
    # two factor tensors (p = 0.3) and one head tensor, all at the prior's std
    p, sigma = 0.3, 0.05
    kl = learned_dropout_kl(sigma, weight=[0.7, 0.7, 1.0], count=[12, 20, 3], posterior_std=[sigma] * 3,
                            sq_dist=[1.5, 2.5, 0.4])
    ref = dropout_kl(p, 4.0, 0.4, sigma)
    assert_allclose(kl.variance_term, 0.0, atol=1e-12 * ref.total)
    assert_allclose(kl.total, ref.total, rtol=1e-12)
    assert type(kl.total) is float


def test_each_entry_is_the_integrated_gaussian_kl_weighted_by_its_keep_probability():
    rng = np.random.default_rng(0)
    p, s_p = 0.4, 0.03
    # tensor 0: a LoRA factor of 3 entries, tensor 1: a head of 2 entries; learned means and stds
    theta_p = [rng.normal(size=3) * 0.1, rng.normal(size=2) * 0.1]
    mu = [t + rng.normal(size=t.shape) * 0.02 for t in theta_p]
    s_q = [0.012, 0.05]
    weight = [1.0 - p, 1.0]
    expected, tol = 0.0, 0.0
    for g in range(2):
        for m, t in zip(mu[g], theta_p[g], strict=True):
            value, err = _gaussian_kl_by_quadrature(m, s_q[g], t, s_p)
            expected += weight[g] * value
            tol += weight[g] * err
    kl = learned_dropout_kl(s_p, weight=weight, count=[3, 2], posterior_std=s_q,
                            sq_dist=[float(((m - t) ** 2).sum()) for m, t in zip(mu, theta_p, strict=True)])
    assert expected > 1.0  # not a trivial comparison
    assert abs(kl.total - expected) <= 10 * tol + 1e-9 * expected


def test_a_prior_std_grid_gives_one_value_per_point_and_the_best_std_matches_the_closed_form():
    # one tensor, no distance: the variance term ln(s_p / s) + s^2 / (2 s_p^2) - 1/2 is 0 only at s = s_p
    grid = np.array([0.5, 1.0, 2.0])
    kl = learned_dropout_kl(grid, weight=[1.0], count=[10], posterior_std=[1.0], sq_dist=[0.0])
    assert kl.total.shape == (3,)
    assert_allclose(kl.total, 10 * (np.log(grid) + 1 / (2 * grid**2) - 0.5), rtol=1e-13)
    assert kl.total[1] == 0.0 and (kl.total >= 0).all()


def test_bad_inputs_name_the_field():
    with pytest.raises(ValueError, match="posterior_std"):
        learned_dropout_kl(1.0, weight=[1.0], count=[1], posterior_std=[0.0], sq_dist=[0.0])
    with pytest.raises(ValueError, match="count"):
        learned_dropout_kl(1.0, weight=[1.0], count=[1.5], posterior_std=[1.0], sq_dist=[0.0])
    with pytest.raises(ValueError, match="one length"):
        learned_dropout_kl(1.0, weight=[1.0, 1.0], count=[1], posterior_std=[1.0], sq_dist=[0.0])
    with pytest.raises(ValueError, match="prior_std"):
        learned_dropout_kl(-1.0, weight=[1.0], count=[1], posterior_std=[1.0], sq_dist=[0.0])
    assert math.isinf(learned_dropout_kl(1e-300, weight=[1.0], count=[1], posterior_std=[1.0], sq_dist=[1.0]).total)
