"""bounds.curves: a bound over p, lam, n or delta moves as theory says and flags vacuous points."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from numpy.testing import assert_allclose

from bounds.curves import bound_curve
from bounds.formulas import lemma43_bound, theorem44_bound
from bounds.runlog import RunLogError
from bounds.settings import BoundSettings

from .test_estimators import N_TRAIN, STABILITY, TRAIN_DET, P, write_run

PROPERTY = settings(max_examples=60, deadline=None, derandomize=True)
WORKED = dict(loss_range=1.0, lipschitz=1.0, hessian_min_eig=0.0, lam=1.0, n=3668, delta=0.05, p=0.5)
positive_curvature = st.fixed_dictionaries({
    "loss_range": st.floats(0.1, 10.0), "lipschitz": st.floats(0.1, 10.0),
    "hessian_min_eig": st.floats(0.01, 5.0), "lam": st.floats(0.01, 10.0), "p": st.floats(0.01, 0.99),
    "n": st.integers(1, 10**5), "delta": st.floats(0.001, 0.999),
})


def _strictly_falling(values: np.ndarray) -> bool:
    return bool(np.all(np.diff(values) < 0))


@PROPERTY
@given(positive_curvature)
def test_gap_falls_in_p_lam_and_n_and_rises_as_delta_shrinks(inputs):
    grids = {"p": np.linspace(0.01, 0.99, 9), "lam": np.geomspace(0.01, 100.0, 9),
             "n": np.unique(np.geomspace(1, 10**6, 9).round()), "delta": np.geomspace(0.999, 1e-4, 9)}
    for vary, grid in grids.items():
        curve = bound_curve("theorem44_gap", vary, grid, inputs=inputs)
        assert not curve["vacuous"].any()
        values = curve["value"].to_numpy()
        assert (np.all(np.diff(values) > 0) if vary == "delta" else _strictly_falling(values)), vary


def test_worked_example_and_vacuous_flags():
    curve = bound_curve("theorem44_gap", "p", [0.0, 0.1, 0.5], inputs=WORKED)
    assert_allclose(curve["value"].to_numpy()[1:], [0.4182, 0.2153], atol=5e-5)
    assert list(curve["vacuous"]) == [True, False, False]
    # Lambda_min = -0.3: vacuous exactly where D = -0.3 + 2 * 1 * s(p) <= 0, i.e. s <= 0.15
    p = np.linspace(0.0, 1.0, 101)
    curve = bound_curve("theorem44", "p", p, inputs={**WORKED, "hessian_min_eig": -0.3, "r_hat": 0.1})
    s = p * (2 - p)
    assert_allclose(curve["vacuous"], -0.3 + 2 * s <= 0)
    assert np.isinf(curve.loc[curve["vacuous"], "value"]).all()
    assert curve.loc[curve["vacuous"], "reason"].str.contains("<= 0").all()
    assert (curve.loc[~curve["vacuous"], "reason"] == "").all()
    stability = bound_curve("stability", "lam", [0.0, 1.0], inputs={**WORKED, "hessian_min_eig": -0.3})
    assert list(stability["vacuous"]) == [True, False]


def test_inputs_from_a_run_and_overrides(tmp_path):
    run = write_run(tmp_path / "r")
    lam = np.array([0.5, 1.0, 2.0])
    clipped = BoundSettings(loss_range=2.0)
    curve = bound_curve("theorem44", "lam", lam, run, settings=clipped)
    expected = theorem44_bound(np.minimum(TRAIN_DET, 2.0).mean(), 2.0, 2.0, 0.2, lam, P, N_TRAIN, 0.05).value
    assert_allclose(curve["value"], expected)
    assert curve.attrs["inputs"]["p"] == P and "lam" not in curve.attrs["inputs"]
    override = bound_curve("theorem44", "lam", lam, run, settings=clipped, inputs={"lipschitz": 1.0, "delta": 0.1})
    r_hat = np.minimum(TRAIN_DET, 2.0).mean()
    assert_allclose(override["value"], theorem44_bound(r_hat, 2.0, 1.0, 0.2, lam, P, N_TRAIN, 0.1).value)
    n = np.array([10, 100, 1000])
    lemma = bound_curve("lemma43", "n", n, run, settings=clipped)
    beta_hat = (0.1 + 0.1 + 0.3 + 1.6) / 4  # retrain, clipped at 2
    assert_allclose(lemma["value"], lemma43_bound(r_hat, 2.0, n, 0.05, beta_hat).value)
    # the settings' delta is used unless passed or varied, and inputs still win over it
    at = bound_curve("lemma43", "n", n, run, settings=BoundSettings(loss_range=2.0, delta=0.2))
    assert_allclose(at["value"], lemma43_bound(r_hat, 2.0, n, 0.2, beta_hat).value)
    assert at.attrs["inputs"]["delta"] == 0.2


def test_errors_name_the_problem(tmp_path):
    with pytest.raises(ValueError, match="cannot vary 'p'"):
        bound_curve("lemma43", "p", [0.1], inputs=WORKED)
    with pytest.raises(ValueError, match="bound="):
        bound_curve("theorem99", "p", [0.1], inputs=WORKED)
    with pytest.raises(ValueError, match="needs"):
        bound_curve("theorem44", "p", [0.1], inputs=WORKED)  # r_hat missing, no run
    with pytest.raises(ValueError, match="not inputs"):
        bound_curve("stability", "p", [0.1], inputs={**WORKED, "eta": 1.0})
    with pytest.raises(ValueError, match="1-D"):
        bound_curve("stability", "p", [[0.1]], inputs=WORKED)
    with pytest.raises(RunLogError, match="--curvature"):
        bound_curve("stability", "p", [0.1], write_run(tmp_path / "np", with_probes=False))
    with pytest.raises(RunLogError, match="no rows"):
        bound_curve("lemma43", "n", [10], write_run(tmp_path / "empty", stability=STABILITY.iloc[:0]))
