"""bounds.estimators on synthetic run directories with hand-computed values.

`write_run` builds a complete run directory that follows `bounds.runlog.TABLES` exactly; the other
bounds test modules import it.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from numpy.testing import assert_allclose

from bounds.estimators import (
    MissingMeasurementError,
    choose_loss_range,
    estimate_lam_eff,
    estimate_risks,
    estimate_stability,
    final_step,
    loss_matrix,
    per_sample_diversity,
    per_sample_jensen_gap_table,
    per_sample_perturbation,
    probe_quantity,
    stability_methods,
)
from bounds.runlog import SCHEMA_VERSION, TABLES, RunLogError, validate_run

# --------------------------------------------------------------------------------------------------
# The synthetic run: 2 members, 4 train and 4 test samples, final step 5 (step 0 is a decoy).
# --------------------------------------------------------------------------------------------------

FINAL = 5
TRAIN_MEMBERS = np.array([[0.2, 0.4, 0.6, 3.0],
                          [0.4, 0.2, 0.8, 1.0]])
TRAIN_DET = np.array([0.25, 0.25, 0.5, 1.5])
TEST_MEMBERS = np.array([[0.5, 1.0, 0.3, 2.5],
                         [0.7, 0.6, 0.5, 4.0]])
TEST_DET = np.array([0.6, 0.9, 0.4, 3.0])
TRAIN_IDS, TEST_IDS = np.arange(4), np.arange(10, 14)
DW_NORMS = (1.0, 2.0)  # sum of squares 5
P, N_TRAIN = 0.5, 100
STABILITY = pd.DataFrame({
    "sample_id": [0, 1, 2, 3, 0, 1],
    "method": ["retrain"] * 4 + ["warm_start"] * 2,
    "loss_s": [0.1, 0.2, 0.3, 0.4, 0.1, 0.2],
    "loss_si": [0.2, 0.1, 0.6, 3.4, 0.15, 0.1],
    "param_distance": [0.01, 0.02, 0.03, 0.04, 0.01, np.nan],
    "wall_s": 1.0,
})


def ensemble_of(members: np.ndarray) -> np.ndarray:
    """Cross-entropy of the probability-averaged ensemble, straight from the definition."""
    return -np.log(np.exp(-members).mean(axis=0))


def probe_rows(hessian_min_eig: float = 0.2, grad_norm: float = 0.05, lam: float = 1.0) -> pd.DataFrame:
    rows = [("lipschitz_max", "delta_w", 2.0, lam), ("lipschitz_q99", "delta_w", 1.5, lam),
            ("lipschitz_mean", "delta_w", 1.0, lam), ("hessian_min_eig", "delta_w", hessian_min_eig, np.nan),
            ("hessian_max_eig", "delta_w", 10.0, np.nan), ("grad_norm", "delta_w", grad_norm, np.nan),
            ("lipschitz_max", "factors", 3.0, lam), ("hessian_min_eig", "factors", 0.1, np.nan)]
    return pd.DataFrame({
        "quantity": [r[0] for r in rows], "space": [r[1] for r in rows], "value": [r[2] for r in rows],
        "stderr": np.nan, "iterations": 20, "residual": np.nan, "converged": True, "n": N_TRAIN,
        "lam": [r[3] for r in rows],
    })


def _split_rows(step: int, split: str, ids: np.ndarray, members: np.ndarray, det: np.ndarray,
                full: bool = False) -> list[dict]:
    rows = []
    singles = [("deterministic", -1, det), ("ensemble", -1, ensemble_of(members))]
    if full:  # the writer adds the unmasked model at the final evaluation; here it equals deterministic
        singles.append(("full", -1, det))
    for predictor, instance, losses in [*(("member", r, m) for r, m in enumerate(members)), *singles]:
        for sample_id, loss in zip(ids, losses, strict=True):
            prob = math.exp(-loss)  # binary task: probability of the true class
            rows.append({"step": step, "split": split, "sample_id": int(sample_id), "predictor": predictor,
                         "instance": instance, "loss": float(loss), "correct": bool(prob > 0.5),
                         "confidence": max(prob, 1.0 - prob)})
    return rows


def samples_frame(train_members=TRAIN_MEMBERS, test_members=TEST_MEMBERS) -> pd.DataFrame:
    decoy = np.full((2, 4), 0.69)
    rows = (_split_rows(0, "train", TRAIN_IDS, decoy, decoy[0])
            + _split_rows(0, "test", TEST_IDS, decoy, decoy[0])
            + _split_rows(FINAL, "train", TRAIN_IDS, train_members, TRAIN_DET, full=True)
            + _split_rows(FINAL, "test", TEST_IDS, test_members, TEST_DET, full=True))
    return pd.DataFrame(rows, columns=TABLES["samples"].column_names)


def modules_frame() -> pd.DataFrame:
    rows = []
    for step, norms in ((0, (0.0, 0.0)), (FINAL, DW_NORMS)):
        for k, norm in enumerate(norms):
            rows.append({"step": step, "module": f"layer.{k}.query::default", "in_features": 8,
                         "out_features": 8, "n_masks": 16, "nominal_keep": 1 - P, "keep_in": 0.5,
                         "keep_out": 0.5, "nominal_sparsity": P * (2 - P), "dw_zero_fraction": 0.75,
                         "nominal_all_dropped": 0.0, "all_dropped": 0.0, "dw_norm": norm})
    return pd.DataFrame(rows, columns=TABLES["modules"].column_names)


def write_run(path: Path, *, probes: pd.DataFrame | None = None, stability: pd.DataFrame | None = STABILITY,
              modules: bool = True, samples: pd.DataFrame | None = None, average: str = "probs",
              with_probes: bool = True) -> Path:
    """A complete synthetic run directory.

    ``probes=None`` writes `probe_rows()`, ``with_probes=False`` no probes table, ``stability=None`` no
    stability table, ``modules=False`` no modules table.
    """
    path.mkdir(parents=True)
    meta = {"schema_version": SCHEMA_VERSION, "run_id": path.name, "status": "success", "error": None,
            "config": {"train": {"n_train": N_TRAIN},
                       "lora_dropout": {"dropout_rate": P, "n_instances": 2, "n_eval_instances": 2,
                                        "ensemble_average": average, "eval_mode": "ensemble"}},
            "started_at": "2026-01-01T00:00:00+00:00",
            "data": {"n_train": N_TRAIN, "label_names": ["a", "b"]}}
    (path / "meta.json").write_text(json.dumps(meta))
    (path / "steps.jsonl").write_text("")
    (samples if samples is not None else samples_frame()).to_parquet(path / "samples.parquet")
    if modules:
        modules_frame().to_parquet(path / "modules.parquet")
    if with_probes:
        (probes if probes is not None else probe_rows()).to_parquet(path / "probes.parquet")
    if stability is not None:
        stability.to_parquet(path / "stability.parquet")
    return path


# --------------------------------------------------------------------------------------------------
# Tests
# --------------------------------------------------------------------------------------------------


def test_synthetic_run_follows_the_schema(tmp_path):
    run = validate_run(write_run(tmp_path / "r"), require=("samples", "modules", "probes", "stability"))
    assert set(run.table("samples")["predictor"]) == {"member", "deterministic", "ensemble", "full"}


def test_final_step_is_the_last_with_both_splits():
    samples = samples_frame()
    assert final_step(samples) == FINAL
    later_train = samples[(samples.step == FINAL) & (samples.split == "train")].assign(step=9)
    only_train = pd.concat([samples, later_train])
    assert final_step(only_train) == FINAL
    with pytest.raises(RunLogError, match="both splits"):
        final_step(samples[samples.split == "train"])


def test_loss_matrix_aligns_members_and_predictors():
    m = loss_matrix(samples_frame().sample(frac=1.0, random_state=0), "test")  # row order must not matter
    assert m.step == FINAL
    assert_allclose(m.sample_ids, TEST_IDS)
    assert_allclose(m.member, TEST_MEMBERS)
    assert_allclose(m.deterministic, TEST_DET)
    assert_allclose(m.ensemble, ensemble_of(TEST_MEMBERS))
    broken = samples_frame().drop(index=samples_frame().query("step == 5 and predictor == 'member'").index[0])
    with pytest.raises(RunLogError, match="one row per member"):
        loss_matrix(broken, "train")


def test_clipped_risks_by_hand():
    r = estimate_risks(samples_frame(), "deterministic", loss_range=2.0)
    # train: 0.25, 0.25, 0.5, min(1.5, 2) -> mean 0.625; test: 0.6, 0.9, 0.4, min(3.0, 2) -> 0.975
    assert_allclose([r.train.value, r.test.value, r.gap], [0.625, 0.975, 0.35])
    assert r.loss_range.rigorous and r.loss_range.label == "clipped" and r.loss_range.clip == 2.0
    # standard error of the train mean: std(0.25, 0.25, 0.5, 1.5; ddof=1) / 2
    assert_allclose(r.train.stderr, np.std([0.25, 0.25, 0.5, 1.5], ddof=1) / 2)
    assert r.step == FINAL and r.train.n == 4


def test_member_mean_is_the_mean_over_member_rows():
    r = estimate_risks(samples_frame(), "member_mean", loss_range=2.0)
    # train members clipped at 2: (0.2 + 0.4 + 0.6 + 2.0 + 0.4 + 0.2 + 0.8 + 1.0) / 8 = 0.7
    assert_allclose(r.train.value, 0.7)
    s = samples_frame()
    rows = s[(s.step == FINAL) & (s.split == "test") & (s.predictor == "member")]
    assert_allclose(r.test.value, rows["loss"].clip(upper=2.0).mean())


def test_observed_loss_range_is_heuristic_and_unclipped():
    r = estimate_risks(samples_frame(), "deterministic")
    assert r.loss_range.value == 4.0  # the largest loss at the final step (a test member)
    assert not r.loss_range.rigorous and r.loss_range.label == "observed (heuristic)"
    assert_allclose(r.test.value, (0.6 + 0.9 + 0.4 + 3.0) / 4)
    assert "heuristic" in r.loss_range.quantity().note
    with pytest.raises(ValueError, match="loss_range"):
        choose_loss_range(samples_frame(), -1.0)


def test_ensemble_risk_comes_from_the_ensemble_rows():
    r = estimate_risks(samples_frame(), "ensemble")
    assert_allclose(r.test.value, ensemble_of(TEST_MEMBERS).mean())
    with pytest.raises(ValueError, match="predictor"):
        estimate_risks(samples_frame(), "majority")


def test_lam_eff_by_hand():
    e = estimate_lam_eff(samples_frame(), modules_frame(), P)
    # per-sample differences: mean member (0.3, 0.3, 0.7, 2.0) - deterministic (0.25, 0.25, 0.5, 1.5)
    # = (0.05, 0.05, 0.2, 0.5), mean 0.2; denominator s * sum ||dW||^2 = 0.75 * 5 = 3.75
    assert_allclose(e.value, 0.2 / 3.75)
    # std(ddof=1) = sqrt(0.135 / 3); stderr = that / sqrt(4), scaled by 1 / 3.75
    assert_allclose(e.stderr, math.sqrt(0.135 / 3) / 2 / 3.75)
    assert e.ci_low < e.value < e.ci_high and e.n == 4
    with pytest.raises(ValueError, match="undefined"):
        estimate_lam_eff(samples_frame(), modules_frame(), 0.0)
    with pytest.raises(MissingMeasurementError, match="step=5"):
        estimate_lam_eff(samples_frame(), modules_frame().query("step == 0"), P)


def test_stability_mean_stderr_and_max_by_hand():
    e = estimate_stability(STABILITY, "retrain")
    changes = np.array([0.1, 0.1, 0.3, 3.0])  # |loss_si - loss_s|
    assert_allclose(e.beta_hat.value, 0.875)
    assert_allclose(e.beta_hat.stderr, changes.std(ddof=1) / 2)
    assert_allclose(e.max_change, 3.0)
    assert_allclose([e.param_distance_max, e.param_distance_mean], [0.04, 0.025])
    clipped = estimate_stability(STABILITY, "retrain", loss_range=2.0)  # loss_si 3.4 -> 2.0: change 1.6
    assert_allclose([clipped.beta_hat.value, clipped.max_change], [(0.1 + 0.1 + 0.3 + 1.6) / 4, 1.6])
    assert "clipped at C=2" in clipped.source
    warm = estimate_stability(STABILITY, "warm_start")
    assert_allclose([warm.beta_hat.value, warm.param_distance_max], [0.075, 0.01])  # NaN distance skipped
    assert stability_methods(STABILITY) == ["retrain", "warm_start"]
    with pytest.raises(MissingMeasurementError, match="method=influence"):
        estimate_stability(STABILITY, "influence")


def test_probe_quantity_and_its_missing_row():
    q = probe_quantity(probe_rows(), "lipschitz_q99", "delta_w", name="lipschitz")
    assert (q.name, q.value, q.n) == ("lipschitz", 1.5, N_TRAIN)
    assert "quantity=lipschitz_q99 space=delta_w" in q.source and "lam=1" in q.source
    with pytest.raises(MissingMeasurementError,
                       match=r"grad_norm space=factors.*lora-dropout probe /x --curvature"):
        probe_quantity(probe_rows(), "grad_norm", "factors", run_dir="/x")
    with pytest.raises(ValueError, match="space"):
        probe_quantity(probe_rows(), "grad_norm", "weights")


def test_per_sample_perturbation_by_hand():
    t = per_sample_perturbation(samples_frame(), split="train")
    assert list(t.index) == list(TRAIN_IDS)
    assert_allclose(t["member_minus_deterministic"], [0.05, 0.05, 0.2, 0.5])
    # two members: std(ddof=1) = |a - b| / sqrt(2)
    assert_allclose(t["member_loss_std"], np.abs(TRAIN_MEMBERS[0] - TRAIN_MEMBERS[1]) / math.sqrt(2))
    one = samples_frame().query("instance != 1")
    assert per_sample_perturbation(one)["member_loss_std"].isna().all()


def test_per_sample_jensen_gap_table_by_hand():
    t = per_sample_jensen_gap_table(samples_frame())
    expected = TEST_MEMBERS.mean(axis=0) - ensemble_of(TEST_MEMBERS)
    assert_allclose(t["jensen_gap"], expected)
    assert (t["jensen_gap"] > 0).all()  # the members differ on every sample


def test_diversity_is_the_minority_fraction():
    # three members; correct patterns per sample: all right, 2 of 3, 1 of 3, none
    correct = np.array([[1, 1, 1, 0], [1, 1, 0, 0], [1, 0, 0, 0]], dtype=bool)
    members = np.where(correct, 0.1, 2.0)
    t = per_sample_diversity(samples_frame(members[:, :4], members[:, :4]), n_classes=2)
    assert_allclose(t["member_accuracy"], [1.0, 2 / 3, 1 / 3, 0.0])
    assert_allclose(t["disagreement"], [0.0, 1 / 3, 1 / 3, 0.0])
    assert t["exact"].all()
    multi = per_sample_diversity(samples_frame(members[:, :4], members[:, :4]), n_classes=3)
    assert list(multi["exact"]) == [True, True, False, False]  # exact only where the majority is right
    with pytest.raises(ValueError, match="n_classes"):
        per_sample_diversity(samples_frame(), n_classes=1)
