"""Measured pointwise hypothesis stability (Def. 4.1): leave-one-out with coupled randomness.

    beta_hat = mean_{i in I} | loss(x_i; theta(S^i)) - loss(x_i; theta(S)) |

over a random subset ``I`` of ``k`` training indices. Three estimators of ``theta(S^i)``:

``retrain``
    Train from scratch without example ``i``, with everything else coupled: the same initialisation,
    the same per-epoch data order with ``i`` skipped, the same masks for every other example
    (masks are keyed by sample id, `lora_dropout.method.masks`). The estimate docs/measurement.md describes; costs one
    training run per index.
``warm_start``
    From ``theta(S)``, train ``warm_epochs`` more epochs twice on the continued streams: once on ``S``
    (the reference, shared by all indices) and once on ``S^i``; compare the loss of ``x_i`` under the
    two. Coupling again removes everything but the effect of ``i``; costs ``warm_epochs`` per index.
``influence``
    First-order approximation (Koh & Liang 2017) at ``theta(S)`` of the regularised objective
    ``L_lam = (1/n) sum_j loss_j + lam * s * ||theta - theta0||^2``:
    ``loss(x_i; theta(S^i)) - loss(x_i; theta(S)) ~= (1/n) g_i^T H_lam^{-1} (g_i - g_bar)`` with
    ``H_lam = H + 2 lam s I`` and ``g_bar`` the mean training gradient, solved by conjugate gradients (a
    few dozen Hessian-vector products). The second factor is not ``g_i`` alone (the issue's
    ``(1/n) g_i^T H^{-1} g_i``): ``S^i`` averages over ``n - 1`` examples, so removing ``x_i`` perturbs the
    objective by ``-(1/n) (loss_i + lam s ||theta - theta0||^2)``, whose gradient at a stationary point of
    ``L_lam`` is ``g_i + 2 lam s (theta - theta0) = g_i - g_bar`` (the logistic-regression test shows a
    30% error without the correction). ``g_i - g_bar`` is used because a LoRA Dropout run minimises
    Eq. 7, not ``L_lam`` for the bound's arbitrary ``lam``: with ``g_bar`` measured, the estimate stays
    the change caused by removing ``x_i`` rather than by a regulariser the run never had.

The estimators are written against a small `LooProblem` interface, so the same code runs on
L2-regularised logistic regression (where every quantity is exact, for tests) and on a LoRA Dropout
model (`LoraLooProblem`).
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Iterable, Sequence
from typing import Any, Protocol

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from bounds.runlog import StabilityMethod


class InfluenceUndefined(RuntimeError):
    """The influence approximation does not exist here (``H + 2 lam s I`` is not positive definite) or
    could not be computed (conjugate gradients did not converge)."""


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


def estimate_stability(problem: LooProblem, indices: Sequence[int],
                       methods: Iterable[StabilityMethod | str] = tuple(StabilityMethod),
                       *, progress: bool = True) -> pd.DataFrame:
    """Leave-one-out pairs for every index and method: the rows of the ``stability`` table.

    A method the problem cannot evaluate (influence where ``H + 2 lam s I`` is indefinite) is skipped
    with a warning; ``frame.attrs["skipped"]`` maps it to the reason.
    """
    methods = list(methods)
    known = [m.value for m in StabilityMethod]
    unknown = sorted(set(methods) - set(known))
    if unknown:
        raise ValueError(f"unknown stability method(s) {unknown}; known: {known}")
    methods = [StabilityMethod(m).value for m in methods]  # the table holds the plain strings
    theta = problem.theta_s()
    reference = problem.warm_start(None) if StabilityMethod.WARM_START in methods else None
    rows = []
    skipped: dict[str, str] = {}  # method -> why it cannot be evaluated on this problem
    bar = tqdm(total=len(indices) * len(methods), desc="leave-one-out", disable=not progress, leave=False)
    for i in indices:
        for method in methods:
            t0 = time.perf_counter()
            if method in skipped:
                continue
            if method == StabilityMethod.INFLUENCE:
                try:
                    delta, step = problem.influence(i)
                except InfluenceUndefined as exc:
                    skipped[method] = str(exc)
                    warnings.warn(f"influence estimates skipped: {exc}", RuntimeWarning, stacklevel=2)
                    continue
                loss_s = problem.loss(theta, i)
                row = {"loss_s": loss_s, "loss_si": loss_s + delta, "param_distance": step}
            else:
                if method == StabilityMethod.RETRAIN:
                    base, other = theta, problem.retrain(i)
                else:
                    base, other = reference, problem.warm_start(i)
                row = {"loss_s": problem.loss(base, i), "loss_si": problem.loss(other, i),
                       "param_distance": problem.distance(base, other)}
            rows.append({"sample_id": problem.sample_id(i), "method": method, **row,
                         "wall_s": time.perf_counter() - t0})
            bar.update(1)
    bar.close()
    frame = pd.DataFrame(rows, columns=["sample_id", "method", "loss_s", "loss_si", "param_distance", "wall_s"])
    frame.attrs["skipped"] = skipped
    return frame


def _gradient(space, batch) -> np.ndarray:
    """Gradient of the mean loss of ``batch`` in ``space`` at theta(S), float64 numpy."""
    import torch

    with space.active():
        flat = space.flat().requires_grad_(True)
        (g,) = torch.autograd.grad(space.loss(flat, batch), flat)
    return g.double().cpu().numpy()


class LoraLooProblem:
    """Leave-one-out on a trained LoRA Dropout run (`lora_dropout.runs.run.load_run`).

    ``theta`` is the state of the trainable parameters (LoRA factors and the classification head); the
    loss of an example is the cross-entropy of the UNMASKED model in eval mode, the hypothesis
    ``theta(S)`` of the theory (as in `lora_dropout.probes.space`). Parameter distances are measured on the
    merged updates, ``sqrt(sum_k ||dW_k(S^i) - dW_k(S)||_F^2)``.

    Retraining rebuilds the run's initial parameters (same seeds) and trains with `fit` and the run's
    configuration, skipping one sample id; warm starts continue the run's streams for
    ``warm_epochs`` epochs (epochs numbered after the run's own). The influence estimate works in the
    ``delta_w`` space of `lora_dropout.probes.space` on ``probe_data`` (a subset of the training set, so the
    Hessian is estimated on it); it is undefined, and raises, where ``H + 2 lam s I`` is not positive
    definite, the same condition that makes Thm 4.4 vacuous.
    """

    def __init__(self, loaded, *, lam: float = 1.0, warm_epochs: int = 1, probe_data=None,
                 batch_size: int = 16):
        import torch

        from ..runs.train import build_model, phases, trainable_parameters

        if loaded.config.train.prior_fraction > 0:
            raise ValueError(
                f"prior_fraction={loaded.config.train.prior_fraction!r}: this run trained a data-dependent prior "
                "before its posterior, and leave-one-out retraining from the initialisation is implemented for "
                "runs without one (prior_fraction=0)")
        self.run = loaded
        # the run's training is its posterior phase (from the initialisation when prior_fraction = 0)
        self._phases = phases(loaded.config.train, len(loaded.prepared.train))
        self.lam = lam
        self.warm_epochs = warm_epochs
        self.data = loaded.prepared.train
        self.n = len(self.data)
        self.probe_data = probe_data or self.data
        self.batch_size = batch_size
        self._params = [p for p in trainable_parameters(loaded.model)]
        self._theta = self._snapshot()
        fresh, _ = build_model(loaded.config, len(loaded.prepared.splits.label_names), loaded.n_steps)
        self._init = [p.detach().clone() for p in trainable_parameters(fresh)]
        del fresh
        self._torch = torch
        self._influence_state = None

    # -- parameter states ---------------------------------------------------------------------------

    def _snapshot(self) -> list:
        return [p.detach().clone() for p in self._params]

    def _load(self, theta: list) -> None:
        with self._torch.no_grad():
            for p, value in zip(self._params, theta, strict=True):
                p.copy_(value)

    def theta_s(self) -> list:
        return self._theta

    def sample_id(self, i: int) -> int:
        return int(self.data.sample_ids[i])

    def loss(self, theta: list, i: int) -> float:
        import torch.nn.functional as F

        from ..method.objective import KEY_FIELD

        self._load(theta)
        model, handle = self.run.model, self.run.handle
        batch = self.data.collate([i], device=self._device)
        was_training = model.training
        model.eval()
        try:
            with self._torch.no_grad(), handle.use_scale(1.0):
                inputs = {k: v for k, v in batch.items() if k not in ("labels", KEY_FIELD)}
                logits = model(**inputs).logits
        finally:
            model.train(was_training)
        return float(F.cross_entropy(logits.float(), batch["labels"]))

    def _merged(self, theta: list) -> list:
        self._load(theta)
        return [s.delta_weight().detach().double() for s in self.run.handle.sites]

    def distance(self, a: list, b: list) -> float:
        pairs = zip(self._merged(a), self._merged(b), strict=True)
        return sum(float(((x - y) ** 2).sum()) for x, y in pairs) ** 0.5

    @property
    def _device(self):
        return self._params[0].device

    # -- estimators ---------------------------------------------------------------------------------

    def _train(self, start: list, exclude: set[int], *, epochs: int | None, first_epoch: int, first_step: int):
        from ..runs.train import fit, make_optimizer

        self._load(start)
        tc = self.run.config.train
        optimizer, scheduler = make_optimizer(self.run.model, tc, lr=self._phases.posterior_lr)
        fit(self.run.model, self.run.handle, self.data, tc, exclude=exclude, epochs=epochs,
            first_epoch=first_epoch, first_step=first_step, optimizer=optimizer, scheduler=scheduler)
        return self._snapshot()

    def retrain(self, i: int | None) -> list:
        """theta(S^i) by coupled retraining from the run's initialisation (``i=None``: theta(S) again)."""
        exclude = set() if i is None else {self.sample_id(i)}
        return self._train(self._init, exclude, epochs=self._phases.posterior_epochs, first_epoch=0, first_step=0)

    def warm_start(self, i: int | None) -> list:
        exclude = set() if i is None else {self.sample_id(i)}
        return self._train(self._theta, exclude, epochs=self.warm_epochs, first_epoch=self._phases.posterior_epochs,
                           first_step=self.run.n_steps)

    def influence(self, i: int) -> tuple[float, float]:
        from .curvature import conjugate_gradient
        from .gradients import hessian_hvp
        from .space import ParamSpace

        self._load(self._theta)
        model, handle = self.run.model, self.run.handle
        if self._influence_state is None:
            hvp, _ = hessian_hvp(model, handle, self.probe_data, space="delta_w", batch_size=self.batch_size)
            space = ParamSpace(model, handle, "delta_w")
            g_bar = sum(_gradient(space, b) * (len(b["labels"]) / len(self.probe_data))
                        for b in self.probe_data.batches(self.batch_size, device=self._device))
            self._influence_state = hvp, g_bar
        hvp, g_bar = self._influence_state
        space = ParamSpace(model, handle, "delta_w")
        batch = self.data.collate([i], device=self._device)
        g = _gradient(space, batch)
        damping = 2.0 * self.lam * handle.config.sparsity
        b = g - g_bar  # = gradient of the regularised per-sample loss at a stationary point (module doc)
        x, info = conjugate_gradient(hvp, b, damping=damping, tol=1e-4)
        if info["negative_curvature"] or float(b @ x) < 0:
            raise InfluenceUndefined(
                f"influence undefined: H + 2 lam s I (2 lam s = {damping:.3g}) is not positive definite on "
                "this run (conjugate gradients met a direction of negative curvature)"
            )
        if not info["converged"]:
            raise InfluenceUndefined(
                f"influence not estimated: conjugate gradients did not reach 1e-4 in {info['iterations']} steps "
                f"(relative residual {info['residual']:.3g})"
            )
        return float(g @ x) / self.n, float((x @ x) ** 0.5) / self.n
