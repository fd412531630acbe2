"""bounds.compression: sub-ensemble losses, Jensen gaps per ensemble size, the Thm 4.4 + 4.5 bound."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from numpy.testing import assert_allclose

from bounds.compression import COLUMNS, ensemble_compression, subensemble_losses
from bounds.formulas import ensemble_risk_bound, per_sample_jensen_gap
from bounds.settings import BoundSettings

from .test_estimators import N_TRAIN, TEST_MEMBERS, TRAIN_MEMBERS, P, ensemble_of, write_run

PROPERTY = settings(max_examples=100, deadline=None, derandomize=True)
member_losses = st.integers(1, 6).flatmap(
    lambda n_members: arrays(float, (n_members, 5), elements=st.floats(0.0, 50.0)))


def test_two_members_by_hand():
    losses = -np.log(np.array([[0.2, 0.9], [0.8, 0.9]]))
    out = subensemble_losses(losses)
    assert_allclose(out[0], losses[0])  # N = 1 is the first member
    assert_allclose(out[1], -np.log([0.5, 0.9]))  # averaged true-class probabilities
    # sample 0: (-ln 0.2 - ln 0.8) / 2 + ln 0.5 = ln(0.5 / sqrt(0.16)) = ln 1.25; sample 1: equal members, 0
    gap = per_sample_jensen_gap(losses, out[1])
    assert_allclose(gap, [math.log(1.25), 0.0], atol=1e-15)


@PROPERTY
@given(member_losses)
def test_jensen_gap_is_non_negative_and_zero_for_one_member(losses):
    out = subensemble_losses(losses)
    assert out.shape == losses.shape and np.isfinite(out).all()
    assert_allclose(out[0], losses[0], rtol=1e-12, atol=1e-12)
    for k in range(1, losses.shape[0] + 1):
        gap = per_sample_jensen_gap(losses[:k], out[k - 1])
        assert (gap >= -1e-9).all()
    # the ensemble's loss lies between its best and its worst member
    assert (out[-1] >= losses.min(axis=0) - 1e-9).all() and (out[-1] <= losses.max(axis=0) + 1e-9).all()


def test_extreme_losses_do_not_underflow():
    out = subensemble_losses(np.array([[1000.0], [2000.0]]))
    assert_allclose(out[1], 1000.0 + math.log(2.0))  # -log((e^-1000 + e^-2000) / 2)
    with pytest.raises(ValueError, match="shape"):
        subensemble_losses(np.zeros(3))


def test_compression_of_a_run(tmp_path):
    run = write_run(tmp_path / "c")
    t = ensemble_compression(run)
    assert list(t.columns) == list(COLUMNS)
    assert list(t["n_members"]) == [1, 2, 1, 2] and list(t["split"]) == ["train"] * 2 + ["test"] * 2
    test = t[t.split == "test"].set_index("n_members")
    first = TEST_MEMBERS[0].mean()
    assert_allclose(test.loc[1, ["ensemble_risk", "member_risk", "jensen_gap"]], [first, first, 0.0])
    assert test.loc[1, "jensen_gap_stderr"] == 0.0
    assert_allclose(test.loc[2, "ensemble_risk"], ensemble_of(TEST_MEMBERS).mean())
    assert_allclose(test.loc[2, "jensen_gap"], TEST_MEMBERS.mean() - ensemble_of(TEST_MEMBERS).mean())
    assert (t["jensen_gap"] >= 0).all()
    # the bound at N = 2 with the observed C = 4 and the first-2-member training risk
    c = 4.0
    expected = ensemble_risk_bound(TRAIN_MEMBERS.mean(), c, 2.0, 0.2, 1.0, P, N_TRAIN, 0.05).value
    assert_allclose(test.loc[2, "bound"], expected)
    expected_1 = ensemble_risk_bound(TRAIN_MEMBERS[0].mean(), c, 2.0, 0.2, 1.0, P, N_TRAIN, 0.05).value
    assert_allclose(test.loc[1, "bound"], expected_1)
    assert t[t.split == "train"]["bound"].isna().all()
    # lam and delta come from the settings
    other = ensemble_compression(run, BoundSettings(lam=0.5, delta=0.1)).query("split == 'test'")
    expected = ensemble_risk_bound(TRAIN_MEMBERS.mean(), c, 2.0, 0.2, 0.5, P, N_TRAIN, 0.1).value
    assert_allclose(other.set_index("n_members").loc[2, "bound"], expected)


def test_compression_with_clipping(tmp_path):
    t = ensemble_compression(write_run(tmp_path / "c"), BoundSettings(loss_range=2.0))
    test = t[t.split == "test"].set_index("n_members")
    assert_allclose(test.loc[2, "member_risk"], np.minimum(TEST_MEMBERS, 2.0).mean())
    assert_allclose(test.loc[2, "ensemble_risk"], np.minimum(ensemble_of(TEST_MEMBERS), 2.0).mean())


def test_logit_averaging_has_only_the_runs_ensemble(tmp_path):
    t = ensemble_compression(write_run(tmp_path / "l", average="logits"))
    assert list(t["n_members"]) == [2, 2]
    assert t["source"].str.contains("ensemble rows").all()
    assert_allclose(t.query("split == 'test'")["ensemble_risk"], ensemble_of(TEST_MEMBERS).mean())


def test_without_probes_there_is_no_bound_and_the_reason_says_why(tmp_path):
    run = write_run(tmp_path / "np", with_probes=False)
    t = ensemble_compression(run)
    assert t["bound"].isna().all()
    assert t["bound_reason"].str.contains(f"lora-dropout probe {run} --curvature").all()
    with pytest.raises(ValueError, match="lipschitz"):
        ensemble_compression(run, BoundSettings(lipschitz="q50"))
