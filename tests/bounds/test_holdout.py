"""The hold-out baseline (`bounds.formulas.holdout_bound`): by hand, and its coverage simulated."""

import math

import numpy as np
import pytest
from scipy.stats import binom

from bounds.formulas import bernoulli_kl, holdout_bound


def test_by_hand_and_the_kl_it_inverts():
    # at zero error the kl inverse has a closed form: kl(0 || r) = -ln(1 - r)
    assert holdout_bound(0.0, 500, 0.1) == pytest.approx(1 - 0.1 ** (1 / 500), abs=1e-9)
    value = holdout_bound(0.2, 1000, 0.05)
    assert value > 0.2 and bernoulli_kl(0.2, value) == pytest.approx(math.log(20) / 1000, abs=1e-7)
    # more examples and a larger delta give a tighter bound; vectors match scalars
    assert holdout_bound(0.2, 4000, 0.05) < value < holdout_bound(0.2, 1000, 0.01)
    np.testing.assert_allclose(holdout_bound(np.array([0.2, 0.3]), 1000, 0.05),
                               [value, holdout_bound(0.3, 1000, 0.05)])
    with pytest.raises(ValueError, match="n"):
        holdout_bound(0.2, 0, 0.05)


def test_it_covers_the_risk_at_its_level():
    # 20,000 held-out sets of n = 200 examples whose losses are Bernoulli(R): the bound fails at most delta of
    # the time (up to the 99.9% quantile of Binomial(M, delta) / M); with ln(1/delta) divided by 4 it fails more
    rng = np.random.default_rng(0)
    m, n, risk, delta = 20_000, 200, 0.3, 0.05
    errors = rng.binomial(n, risk, size=m) / n
    fails = np.mean(holdout_bound(errors, n, delta) < risk)
    assert fails <= binom.ppf(0.999, m, delta) / m, fails
    loose = np.mean(holdout_bound(errors, 4 * n, delta) < risk)
    assert loose > binom.ppf(1 - 1e-6, m, delta) / m, loose
