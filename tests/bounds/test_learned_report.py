"""`learned_certificate_table`: the learned posterior's certificate against a computation by hand (closed-form KL,
both Bernoulli-KL inversions by scipy's brentq)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy.optimize import brentq
from scipy.special import xlogy

from bounds.formulas import DEFAULT_TOL
from bounds.report.learned import learned_certificate_table

RECORD = {
    "prior_std_grid": [0.01, 0.03],
    "tensors": {  # a LoRA factor at p = 0.2 and a head tensor
        "a": {"posterior_std": 0.02, "count": 300, "weight": 0.8, "sq_dist": 0.05},
        "h": {"posterior_std": 0.015, "count": 10, "weight": 1.0, "sq_dist": 0.002},
    },
}


def _frame(kl=None):
    rows = []
    for sp in RECORD["prior_std_grid"]:
        rows.append({"prior_std": sp, "p": 0.2, "n_bound": 1000, "n_test": 500, "draws": 4, "kl": kl or 0.0,
                     "train_gibbs_error": 0.2, "train_gibbs_linear": 0.25, "test_gibbs_error": 0.22,
                     "test_gibbs_linear": 0.27, "prior": "trained", "grid_size": 2, "delta": 0.05,
                     "delta_mc": 0.01, "seed": 0})
    return pd.DataFrame(rows)


def _kl_inv(q, c):
    """max { r in [q, 1] : kl(q || r) <= c }, by brentq."""
    def kl(r):
        return xlogy(q, q / r) + xlogy(1 - q, (1 - q) / (1 - r)) - c
    return 1.0 if kl(1 - 1e-15) <= 0 else brentq(kl, q, 1 - 1e-15, xtol=1e-14)


def test_the_table_is_the_certificate_computed_by_hand():
    table = learned_certificate_table(_frame(), RECORD)
    for row in table.itertuples():
        sp = row.prior_std
        kl = sum(t["weight"] * (t["count"] * (math.log(sp / t["posterior_std"]) + t["posterior_std"] ** 2
                                               / (2 * sp**2) - 0.5) + t["sq_dist"] / (2 * sp**2))
                 for t in RECORD["tensors"].values())
        assert row.kl == pytest.approx(kl, rel=1e-12)
        upper = _kl_inv(0.2, math.log(2 / 0.01) / (1000 * 4))
        value = _kl_inv(upper, (kl + math.log(2 * math.sqrt(1000) * 2 / 0.05)) / 1000)
        assert row.gibbs_upper == pytest.approx(upper, abs=2 * DEFAULT_TOL)
        assert row.certificate == pytest.approx(value, abs=4 * DEFAULT_TOL)
        assert row.certificate > row.gibbs_upper > row.train_gibbs_error
    # the variance term vanishes only where the learned stds equal the prior's; here both points pay it
    assert (table.kl_variance_term > 0).all()
    assert np.all(table.kl == table.kl_variance_term + table.kl_distance_term)


def test_the_table_check_names_what_is_wrong():
    from bounds.runlog import check_learned_certificates

    assert check_learned_certificates(_frame()) == []
    two_risks = _frame()
    two_risks.loc[1, "train_gibbs_error"] = 0.3  # the posterior is one: its risk cannot change with the prior
    bad = _frame().assign(test_gibbs_error=1.5, grid_size=3)
    assert any("train_gibbs_error must be one value" in p for p in check_learned_certificates(two_risks))
    problems = check_learned_certificates(bad)
    assert any("test_gibbs_error must lie in [0, 1]" in p for p in problems)
    assert any("grid_size 3 but 2 rows" in p for p in problems)
