"""Measured pointwise hypothesis stability (Def. 4.1): leave-one-out with coupled randomness.

    beta_hat = mean_{i in I} | loss(x_i; theta(S^i)) - loss(x_i; theta(S)) |

over a random subset ``I`` of ``k`` training indices. Three estimators of ``theta(S^i)``:

``retrain``
    Train from scratch without example ``i``, with everything else coupled: the same initialisation,
    the same per-epoch data order with ``i`` skipped, the same masks for every other example
    (masks are keyed by sample id, `lora_dropout.masks`). The estimate theory.md asks for; costs one
    training run per index.
``warm_start``
    From ``theta(S)``, train ``warm_epochs`` more epochs twice on the continued streams: once on ``S``
    (the reference, shared by all indices) and once on ``S^i``; compare the loss of ``x_i`` under the
    two. Coupling again removes everything but the effect of ``i``; costs ``warm_epochs`` per index.
``influence``
    First-order approximation (Koh & Liang 2017) at ``theta(S)`` of the regularised objective
    ``L_lam = (1/n) sum_j loss_j + lam * s * ||theta - theta0||^2``:
    ``loss(x_i; theta(S^i)) - loss(x_i; theta(S)) ~= (1/n) g_i^T H_lam^{-1} (g_i + 2 lam s (theta - theta0))``
    with ``H_lam = H + 2 lam s I``, solved by conjugate gradients (a few dozen Hessian-vector products).
    The second factor is the gradient of the regularised per-sample loss rather than ``g_i`` alone
    (the issue's ``(1/n) g_i^T H^{-1} g_i``): ``S^i`` averages over ``n - 1`` examples, so removing ``x_i``
    perturbs the objective by ``-(1/n) (loss_i + lam s ||theta - theta0||^2)``, and the regulariser's
    share is of the same order as ``g_i``'s (the logistic-regression test shows a 30% error without it).

The estimators are written against a small `LooProblem` interface, so the same code runs on
L2-regularised logistic regression (where every quantity is exact, for tests) and on a LoRA Dropout
model (`LoraLooProblem`).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from typing import Any, Protocol

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

METHODS = ("retrain", "warm_start", "influence")


class LooProblem(Protocol):
    """What the stability estimators need from a learning problem."""

    n: int  # training set size

    def theta_s(self) -> Any: ...

    def sample_id(self, i: int) -> int: ...

    def loss(self, theta: Any, i: int) -> float: ...

    def distance(self, a: Any, b: Any) -> float: ...

    def retrain(self, i: int) -> Any: ...

    def warm_start(self, i: int | None) -> Any:
        """Parameters after continuing from theta(S) on S (``i=None``) or on S^i."""

    def influence(self, i: int) -> tuple[float, float]:
        """``(predicted loss change of x_i, ||predicted parameter change||)`` (see the module docstring)."""


def choose_indices(n: int, k: int, seed: int) -> np.ndarray:
    """``k`` distinct training positions, a seeded random subset (sorted)."""
    if not 1 <= k <= n:
        raise ValueError(f"stability k={k} must be in [1, n={n}]")
    return np.sort(np.random.default_rng(seed).choice(n, size=k, replace=False))


def estimate_stability(problem: LooProblem, indices: Sequence[int], methods: Iterable[str] = METHODS,
                       *, progress: bool = True) -> pd.DataFrame:
    """Leave-one-out pairs for every index and method: the rows of the ``stability`` table."""
    methods = list(methods)
    unknown = sorted(set(methods) - set(METHODS))
    if unknown:
        raise ValueError(f"unknown stability method(s) {unknown}; known: {list(METHODS)}")
    theta = problem.theta_s()
    reference = problem.warm_start(None) if "warm_start" in methods else None
    rows = []
    bar = tqdm(total=len(indices) * len(methods), desc="leave-one-out", disable=not progress, leave=False)
    for i in indices:
        for method in methods:
            t0 = time.perf_counter()
            if method == "influence":
                delta, step = problem.influence(i)
                loss_s = problem.loss(theta, i)
                row = {"loss_s": loss_s, "loss_si": loss_s + delta, "param_distance": step}
            else:
                base, other = (theta, problem.retrain(i)) if method == "retrain" else (reference,
                                                                                    problem.warm_start(i))
                row = {"loss_s": problem.loss(base, i), "loss_si": problem.loss(other, i),
                       "param_distance": problem.distance(base, other)}
            rows.append({"sample_id": problem.sample_id(i), "method": method, **row,
                         "wall_s": time.perf_counter() - t0})
            bar.update(1)
    bar.close()
    return pd.DataFrame(rows, columns=["sample_id", "method", "loss_s", "loss_si", "param_distance", "wall_s"])
