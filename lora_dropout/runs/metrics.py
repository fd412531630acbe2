"""Risk and calibration of a predictive distribution: pure numpy functions.

Every function takes the predictive probabilities ``q`` of shape ``(n, C)`` that is being evaluated
(a single model's softmax, or the ensemble's aggregate) and integer labels ``(n,)``. Calibration is
measured on the same predictive whose risk is reported, never on a proxy.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: Equal-width confidence bins on [0, 1] for ECE and reliability diagrams (Guo et al. 2017 use 15).
N_BINS = 15


def _check(probs: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    probs = np.asarray(probs, dtype=np.float64)
    labels = np.asarray(labels)
    if probs.ndim != 2 or labels.shape != (probs.shape[0],):
        raise ValueError(f"probs must be (n, C) and labels (n,), got {probs.shape} and {labels.shape}")
    return probs, labels.astype(np.int64)


def per_sample_nll(probs: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """``-log q_y`` per example (cross-entropy of the predictive; ``q_y = 0`` gives ``+inf``)."""
    probs, labels = _check(probs, labels)
    with np.errstate(divide="ignore"):
        return -np.log(probs[np.arange(len(labels)), labels])


def per_sample_brier(probs: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """``sum_k (q_k - 1[y = k])^2`` per example (multi-class Brier score, in [0, 2])."""
    probs, labels = _check(probs, labels)
    onehot = np.eye(probs.shape[1])[labels]
    return ((probs - onehot) ** 2).sum(axis=1)


@dataclass(frozen=True)
class Reliability:
    """Reliability-diagram bins: ``(N_BINS,)`` arrays; confidence and accuracy are NaN in empty bins."""

    lower: np.ndarray
    upper: np.ndarray
    confidence: np.ndarray
    accuracy: np.ndarray
    count: np.ndarray

    @property
    def ece(self) -> float:
        """``sum_b (n_b / n) |acc_b - conf_b|`` over non-empty bins."""
        filled = self.count > 0
        n = self.count.sum()
        gaps = np.abs(self.accuracy[filled] - self.confidence[filled])
        return float((self.count[filled] / n * gaps).sum()) if n else float("nan")


def reliability(probs: np.ndarray, labels: np.ndarray, n_bins: int = N_BINS) -> Reliability:
    """Bin predictions by confidence ``max_k q_k`` into ``n_bins`` equal-width bins on [0, 1].

    Bins are right-closed, ``(lo, hi]``, with the first bin also holding confidence 0; confidence 1
    falls in the last bin.
    """
    probs, labels = _check(probs, labels)
    conf = probs.max(axis=1)
    correct = probs.argmax(axis=1) == labels
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    index = np.clip(np.searchsorted(edges, conf, side="left") - 1, 0, n_bins - 1)
    count = np.bincount(index, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        confidence = np.bincount(index, weights=conf, minlength=n_bins) / count
        accuracy = np.bincount(index, weights=correct.astype(float), minlength=n_bins) / count
    return Reliability(edges[:-1], edges[1:], confidence, accuracy, count)


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, n_bins: int = N_BINS) -> float:
    """ECE with ``n_bins`` equal-width confidence bins (default 15)."""
    return reliability(probs, labels, n_bins).ece


def summarize(probs: np.ndarray, labels: np.ndarray, losses: np.ndarray | None = None) -> dict[str, float]:
    """``risk``, ``accuracy``, ``ece``, ``nll`` and ``brier`` of one predictive on one split.

    ``risk`` is the mean cross-entropy, the loss the bounds are about; for a predictive distribution
    it equals ``nll``, and both are kept so that a later change of the risk's loss stays visible.
    ``losses`` (per-example cross-entropy computed in log space from logits) avoids ``-log 0`` when a
    probability underflows; by default they are computed from ``probs``.
    """
    probs, labels = _check(probs, labels)
    nll = float((per_sample_nll(probs, labels) if losses is None else np.asarray(losses)).mean())
    return {
        "risk": nll,
        "accuracy": float((probs.argmax(axis=1) == labels).mean()),
        "ece": expected_calibration_error(probs, labels),
        "nll": nll,
        "brier": float(per_sample_brier(probs, labels).mean()),
    }
