"""Calibration metrics against straightforward loop implementations on random inputs."""

import numpy as np
import pytest

from lora_dropout.runs.metrics import (
    expected_calibration_error,
    per_sample_brier,
    per_sample_nll,
    reliability,
    summarize,
)


def _random(n=500, c=4, seed=0):
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(n, c)) * 3
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    return probs, rng.integers(0, c, size=n)


def _reference_ece(probs, labels, n_bins=15):
    total = 0.0
    for b in range(n_bins):
        lo, hi = b / n_bins, (b + 1) / n_bins
        members = [i for i in range(len(labels)) if (lo < probs[i].max() <= hi) or (b == 0 and probs[i].max() == 0)]
        if not members:
            continue
        conf = np.mean([probs[i].max() for i in members])
        acc = np.mean([probs[i].argmax() == labels[i] for i in members])
        total += len(members) / len(labels) * abs(acc - conf)
    return total


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ece_matches_a_loop_reference(seed):
    probs, labels = _random(seed=seed)
    assert expected_calibration_error(probs, labels) == pytest.approx(_reference_ece(probs, labels), abs=1e-12)


def test_nll_and_brier_match_their_definitions():
    probs, labels = _random()
    nll = [-np.log(probs[i, labels[i]]) for i in range(len(labels))]
    brier = [sum((probs[i, k] - (k == labels[i])) ** 2 for k in range(probs.shape[1])) for i in range(len(labels))]
    np.testing.assert_allclose(per_sample_nll(probs, labels), nll, rtol=1e-12)
    np.testing.assert_allclose(per_sample_brier(probs, labels), brier, rtol=1e-12)
    s = summarize(probs, labels)
    assert s["nll"] == pytest.approx(np.mean(nll)) and s["risk"] == s["nll"]
    assert s["brier"] == pytest.approx(np.mean(brier))
    assert s["accuracy"] == pytest.approx(np.mean(probs.argmax(1) == labels))


def test_reliability_bins_count_every_prediction_and_perfect_calibration_has_zero_ece():
    probs, labels = _random()
    rel = reliability(probs, labels)
    assert rel.count.sum() == len(labels) and len(rel.count) == 15
    # labels drawn from the predictive itself are calibrated in expectation: small ECE
    rng = np.random.default_rng(5)
    many = np.repeat(probs, 40, axis=0)
    drawn = np.array([rng.choice(4, p=p) for p in many])
    assert expected_calibration_error(many, drawn) < 0.02
    # a confidently wrong predictor is maximally miscalibrated
    wrong = np.tile([[0.0, 1.0]], (10, 1))
    assert expected_calibration_error(wrong, np.zeros(10, dtype=int)) == pytest.approx(1.0)


def test_shapes_are_checked():
    with pytest.raises(ValueError, match="labels"):
        summarize(np.ones((3, 2)) / 2, np.zeros(4, dtype=int))
