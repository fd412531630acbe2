"""The leave-one-out estimators of the LoRA code path (`LoraLooProblem`, `estimate_stability`) against exact
values on a convex problem.

The model: fixed features ``x_i`` (a frozen embedding table, one token per example) feed a frozen
``nn.Linear`` head ``(d -> C - 1)`` that carries a peft LoRA adapter of full rank ``C - 1`` (scaling 1);
the logits are ``[0, (W0 + dW) x + b0]`` (class 0 as reference, so no direction of ``dW`` is flat). As
a function of the merged ``dW`` every objective below is multinomial logistic regression, strictly
convex, and its minimisers (with or without example ``i``, with or without ``lam s ||dW||^2``) are
computed here to ~1e-15 by Newton's method on the explicit objective (`Exact`), which shares nothing
with the code under test (no peft, no hooks, no `ParamSpace`). The code runs for real: `fit` trains the
LoRA factors with AdamW, `LoraLooProblem` retrains, warm-starts and computes the influence with its
Hessian-vector products and conjugate gradients. Every tolerance is derived from a solver tolerance
(the trainer's final gradient norm, the CG residual, the finite-difference step), and every test first
asserts that the quantities a plausible bug would change (``1/n``, ``2 lam s``, the mean gradient, the
removed example) move the result by far more than that tolerance.
"""

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers.modeling_outputs import SequenceClassifierOutput

import lora_dropout.runs.train as train_module
from lora_dropout import apply_lora_dropout
from lora_dropout.probes.stability import LoraLooProblem, choose_indices, estimate_stability
from lora_dropout.runs.config import RunConfig, derive_seed
from lora_dropout.runs.train import fit
from lora_dropout.tasks.classification import EncodedSplit

N, D, C = 60, 4, 3  # examples, feature dimension, classes (dW is (C - 1) x D = 2 x 4)
FIRST_ID = 100  # sample ids are FIRST_ID + position
CG_TOL = 1e-4  # the relative residual LoraLooProblem.influence asks conjugate gradients for
EPS32 = float(np.finfo(np.float32).eps)  # LoraLooProblem.loss returns a float32 cross-entropy


def _problem_data(seed: int = 0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(N, D))
    w0, b0 = 0.5 * rng.normal(size=(C - 1, D)), 0.3 * rng.normal(size=C - 1)
    w_true = rng.normal(size=(C - 1, D))
    logits = np.concatenate([np.zeros((N, 1)), x @ w_true.T], axis=1)
    probs = np.exp(logits - logits.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    y = np.array([rng.choice(C, p=row) for row in probs])
    return x, y, w0, b0


X, Y, W0, B0 = _problem_data()
DATA = EncodedSplit(tuple({"input_ids": [i]} for i in range(N)), Y.astype(np.int64),
                    FIRST_ID + np.arange(N, dtype=np.int64), 0)


class FeatureClassifier(torch.nn.Module):
    """Logits ``[0, head(x_token)]`` of fixed features: multinomial logistic regression as a model."""

    def __init__(self):
        super().__init__()
        self.features = torch.nn.Embedding.from_pretrained(torch.as_tensor(X), freeze=True)
        self.head = torch.nn.Linear(D, C - 1, dtype=torch.float64)
        with torch.no_grad():
            self.head.weight.copy_(torch.as_tensor(W0))
            self.head.bias.copy_(torch.as_tensor(B0))

    def forward(self, input_ids, attention_mask=None, **_):
        z = self.head(self.features(input_ids[:, 0]))
        return SequenceClassifierOutput(logits=torch.cat([torch.zeros_like(z[:, :1]), z], dim=1))


def _config(p: float, *, epochs: int, lr: float = 0.1) -> RunConfig:
    # full batch, no clipping: AdamW then converges on the (benign) factorised convex problem
    return RunConfig().replace(
        train={"batch_size": N, "epochs": epochs, "lr": lr, "max_grad_norm": None, "device": "cpu",
               "n_train": N, "seed": 3},
        adapter={"r": C - 1, "lora_alpha": C - 1, "target_modules": ("head",)},
        lora_dropout={"dropout_rate": p, "n_instances": 1 if p == 0 else 2},
    )


def _build_model(config: RunConfig, num_labels: int = C, total_steps: int = 0):
    """What `lora_dropout.runs.train.build_model` does for a pretrained checkpoint, for the in-code model."""
    tc = config.train
    torch.manual_seed(derive_seed(tc.seed, "init"))
    base = FeatureClassifier()
    for param in base.parameters():
        param.requires_grad_(False)
    model = get_peft_model(base, LoraConfig(r=config.adapter.r, lora_alpha=config.adapter.lora_alpha,
                                            target_modules=list(config.adapter.target_modules)))
    handle = apply_lora_dropout(model, config.lora_dropout.replace(seed=derive_seed(tc.seed, "masks")))
    return model, handle


def _trained_run(monkeypatch, config: RunConfig, *, train: bool = True):
    """A `lora_dropout.runs.run.LoadedRun` look-alike: the model after `fit` on the whole of ``DATA``."""
    monkeypatch.setattr(train_module, "build_model", _build_model)  # LoraLooProblem rebuilds the init with it
    model, handle = _build_model(config)
    if train:
        fit(model, handle, DATA, config.train)
    return SimpleNamespace(model=model, handle=handle, config=config, n_steps=config.train.epochs,
                           prepared=SimpleNamespace(train=DATA, splits=SimpleNamespace(label_names=list(range(C)))))


def _merged(theta) -> np.ndarray:
    """``dW = (alpha / r) B A`` (scaling 1) from a LoraLooProblem state ``[A, B]``, flattened, float64."""
    a, b = theta
    return (b.detach().double() @ a.detach().double()).reshape(-1).numpy()


class Exact:
    """``F(dW) = sum_j w_j loss_j(dW) + reg ||dW||^2`` on ``(X, Y, W0, B0)``, minimised by Newton's method."""

    @staticmethod
    def losses(flat: torch.Tensor) -> torch.Tensor:
        dw = flat.view(C - 1, D)
        z = torch.as_tensor(X) @ (torch.as_tensor(W0) + dw).T + torch.as_tensor(B0)
        logits = torch.cat([torch.zeros(N, 1, dtype=torch.float64), z], dim=1)
        return torch.nn.functional.cross_entropy(logits, torch.as_tensor(Y), reduction="none")

    @classmethod
    def objective(cls, weights: np.ndarray, reg: float):
        w = torch.as_tensor(weights)
        return lambda flat: (w * cls.losses(flat)).sum() + reg * flat.square().sum()

    @classmethod
    def grad(cls, fn, at: np.ndarray) -> np.ndarray:
        return torch.autograd.functional.jacobian(fn, torch.as_tensor(at)).numpy()

    @classmethod
    def hessian(cls, fn, at: np.ndarray) -> np.ndarray:
        return torch.autograd.functional.hessian(fn, torch.as_tensor(at)).numpy()

    @classmethod
    def minimise(cls, weights: np.ndarray, reg: float = 0.0) -> np.ndarray:
        fn, at = cls.objective(weights, reg), np.zeros((C - 1) * D)
        for _ in range(50):
            step = np.linalg.solve(cls.hessian(fn, at), cls.grad(fn, at))
            at = at - step
            if np.linalg.norm(step) < 1e-14:
                return at
        raise AssertionError("Newton did not converge")

    @classmethod
    def loss(cls, flat: np.ndarray, i: int) -> float:
        return float(cls.losses(torch.as_tensor(flat))[i])

    @classmethod
    def loss_grad(cls, flat: np.ndarray, i: int) -> np.ndarray:
        return cls.grad(lambda f: cls.losses(f)[i], flat)


def _mean(without: int | None = None) -> np.ndarray:
    """Weights of the mean loss over S (``without=None``) or S^i."""
    w = np.full(N, 1.0 / (N if without is None else N - 1))
    if without is not None:
        w[without] = 0.0
    return w


def _changes(table, method):
    rows = table[table.method == method]
    return rows.sample_id.to_numpy(), (rows.loss_si - rows.loss_s).to_numpy(), rows.param_distance.to_numpy()


def _record(problem, name: str, into: dict) -> None:
    """Keep what ``problem.<name>(i)`` returns in ``into[name, i]`` (the estimator still runs as written)."""
    method = getattr(problem, name)

    def recorded(i):
        into[name, i] = method(i)
        return into[name, i]

    setattr(problem, name, recorded)


# -- coupled retraining and warm start --------------------------------------------------------------------


def test_retraining_and_warm_start_reach_the_exact_leave_one_out_minimisers(monkeypatch):
    """p = 0: the run minimises the mean cross-entropy, convex in dW; both estimators must land on the
    exact minimiser over S^i, up to the distance the trainer's final gradient norm allows.

    The warm start continues with the run's optimiser settings. AdamW restarted at a minimum with the
    learning rate that trained from scratch (0.1 here) is unstable (fresh moments: the first step is
    normalised to lr per coordinate, and later spikes whenever the second moment decays), so it never
    settles within 300-700 steps; the warm-started problem therefore reads a configuration with lr 0.003
    (its theta(S) is the same converged point)."""
    config = _config(0.0, epochs=300)
    run = _trained_run(monkeypatch, config)
    problems = {"retrain": LoraLooProblem(run),
                "warm_start": LoraLooProblem(SimpleNamespace(**{**vars(run), "config": config.replace(
                    train={"lr": 0.003})}), warm_epochs=300)}
    produced = {}  # the parameters the estimators computed, to measure how far they are from converged
    for name, problem in problems.items():
        _record(problem, name, produced)
    indices = choose_indices(N, 3, seed=1)

    full = Exact.minimise(_mean())
    # strong convexity of every objective here, measured at the exact minimiser over S; halved for the
    # change of the Hessian over the ball the trained points lie in (radius < 1e-3, checked below)
    mu = 0.5 * min(np.linalg.eigvalsh(Exact.hessian(Exact.objective(_mean(i), 0.0), full))[0] for i in indices)

    def distance_bound(theta, weights) -> float:
        """``||dW - dW*|| <= ||grad F(dW)|| / mu`` for the code's trained point ``theta``."""
        radius = np.linalg.norm(Exact.grad(Exact.objective(weights, 0.0), _merged(theta))) / mu
        assert radius < 1e-3, (f"the estimator's parameters are not the minimiser of its objective (distance bound "
                               f"{radius:.3g}): training did not converge, or it removed another example")
        return radius

    for method, problem in problems.items():
        table = estimate_stability(problem, indices, methods=(method,), progress=False)
        base = problem.theta_s() if method == "retrain" else produced["warm_start", None]
        base_radius = distance_bound(base, _mean())
        ids, change, distance = _changes(table, method)
        np.testing.assert_array_equal(ids, FIRST_ID + indices)
        for k, i in enumerate(indices):
            loo = Exact.minimise(_mean(i))
            exact = Exact.loss(loo, i) - Exact.loss(full, i)
            radius = base_radius + distance_bound(produced[method, i], _mean(i))
            g = max(np.linalg.norm(Exact.loss_grad(loo, i)), np.linalg.norm(Exact.loss_grad(full, i)))
            rounding = 4 * EPS32 * (1 + Exact.loss(full, i))  # two float32 cross-entropies
            tol = 1.01 * g * radius + rounding
            assert tol < 1e-3 * abs(exact)  # the check can see an error of 0.1% of the effect
            assert abs(change[k] - exact) <= tol, (method, i, change[k], exact, tol)
            # merged dW moved by the exact leave-one-out step
            assert abs(distance[k] - np.linalg.norm(loo - full)) <= radius + 1e-9, (method, i)
            # the effect of removing i on x_i: what another removed example does is far smaller
            neighbour = Exact.loss(Exact.minimise(_mean((i + 1) % N)), i) - Exact.loss(full, i)
            assert abs(neighbour - exact) > 100 * tol


# -- influence ------------------------------------------------------------------------------------------------

P, LAM = 0.3, 0.7
S = 2 * P - P**2


def _dense_influence(dw: np.ndarray, i: int, *, lam_s: float = LAM * S, mean_gradient: bool = True):
    """``(1/n) g_i^T (H + 2 lam s I)^{-1} (g_i - g_bar)`` and ``||step||``, dense, at ``dw``; the CG error bound."""
    h = Exact.hessian(Exact.objective(_mean(), 0.0), dw)
    a = h + 2 * lam_s * np.eye(h.shape[0])
    g_i = Exact.loss_grad(dw, i)
    g_bar = Exact.grad(Exact.objective(_mean(), 0.0), dw)
    b = g_i - g_bar if mean_gradient else g_i
    x = np.linalg.solve(a, b)
    # CG stops at ||A x - b|| <= CG_TOL ||b||: |g^T (x - x*)| <= ||g|| ||A^{-1}|| CG_TOL ||b||
    cg = np.linalg.norm(b) * CG_TOL / np.linalg.eigvalsh(a)[0]
    return float(g_i @ x) / N, float(np.linalg.norm(x)) / N, np.linalg.norm(g_i) * cg / N + 1e-15, cg / N


def _influence_table(problem, indices):
    table = estimate_stability(problem, indices, methods=("influence",), progress=False)
    assert table.attrs["skipped"] == {}
    ids, change, distance = _changes(table, "influence")
    np.testing.assert_array_equal(ids, FIRST_ID + np.asarray(indices))
    return change, distance


def test_influence_matches_the_dense_formula_at_a_trained_point(monkeypatch):
    """At the run's theta(S) (a LoRA Dropout run, not a stationary point of ``L_lam``): the code's CG
    solve against the same formula with the Hessian and gradients of the explicit objective."""
    run = _trained_run(monkeypatch, _config(P, epochs=15, lr=0.05))
    problem = LoraLooProblem(run, lam=LAM)
    dw = _merged(problem.theta_s())
    assert np.linalg.norm(Exact.grad(Exact.objective(_mean(), LAM * S), dw)) > 0.05  # not stationary
    indices = choose_indices(N, 4, seed=2)
    change, distance = _influence_table(problem, indices)
    for k, i in enumerate(indices):
        value, step, tol, step_tol = _dense_influence(dw, i)
        for wrong in (_dense_influence(dw, i, lam_s=LAM * S / 2)[0],  # damping lam s
                      _dense_influence(dw, i, mean_gradient=False)[0],  # g_i alone
                      value * N,  # no 1/n
                      _dense_influence(dw, (i + 1) % N)[0]):  # the next example
            assert abs(wrong - value) > 20 * tol
        assert abs(change[k] - value) <= tol, (i, change[k], value, tol)
        assert abs(distance[k] - step) <= step_tol, (i, distance[k], step)


def _set_merged(run, dw: np.ndarray) -> None:
    """Factors with ``B A = dW`` (full rank, scaling 1), from the SVD."""
    u, sigma, vt = np.linalg.svd(dw.reshape(C - 1, D), full_matrices=False)
    site = run.handle.sites[0]
    with torch.no_grad():
        site.layer.lora_B[site.adapter].weight.copy_(torch.as_tensor(u * np.sqrt(sigma)))
        site.layer.lora_A[site.adapter].weight.copy_(torch.as_tensor(np.sqrt(sigma)[:, None] * vt))
    np.testing.assert_allclose(site.delta_weight().detach().numpy().reshape(-1), dw, rtol=0, atol=1e-13)


def test_influence_is_the_first_order_term_of_the_exact_leave_one_out_change(monkeypatch):
    """At the exact minimiser of ``L_lam = (1/n) sum_j loss_j + lam s ||dW||^2``, removing ``x_i`` is the
    point ``eps = 1/n`` of the path ``dW(eps) = argmin L_lam - eps (loss_i + lam s ||dW||^2)``, and the
    influence must equal ``(1/n) d/deps loss_i(dW(eps))`` at 0 (central differences of exact minimisers),
    and the exact leave-one-out change up to the second-order term ``f''(0) / (2 n^2)``."""
    run = _trained_run(monkeypatch, _config(P, epochs=1), train=False)
    lam_s = LAM * S
    full = Exact.minimise(_mean(), lam_s)
    _set_merged(run, full)
    problem = LoraLooProblem(run, lam=LAM)
    indices = choose_indices(N, 4, seed=3)
    change, distance = _influence_table(problem, indices)

    def path(i, eps):
        weights = _mean() - eps * np.eye(N)[i]
        dw = Exact.minimise(weights, lam_s * (1 - eps))
        return Exact.loss(dw, i), dw

    for k, i in enumerate(indices):
        (f0, _), (fp, dp), (fm, dm), (fp2, dp2), (fm2, dm2) = (
            path(i, e) for e in (0.0, 1e-3, -1e-3, 5e-4, -5e-4))
        d_coarse, d_fine = (fp - fm) / 2e-3, (fp2 - fm2) / 1e-3
        derivative = (4 * d_fine - d_coarse) / 3  # Richardson; its error is far below |d_fine - d_coarse|
        second = (fp - 2 * f0 + fm) / 1e-6
        value, step, cg_tol, step_tol = _dense_influence(full, i)
        fd_tol = abs(d_fine - d_coarse) / N + 1e-12
        # the path's derivative is what the influence formula estimates (both exact: a check on the check)
        assert abs(derivative / N - value) <= 2 * fd_tol
        # the code: against the exact derivative ...
        for wrong in (value * N, _dense_influence(full, i, mean_gradient=False)[0],
                      _dense_influence(full, i, lam_s=lam_s / 2)[0], _dense_influence(full, (i + 1) % N)[0]):
            assert abs(wrong - derivative / N) > 20 * (cg_tol + fd_tol)
        assert abs(change[k] - derivative / N) <= cg_tol + fd_tol, (i, change[k], derivative / N)
        # ... and against exact retraining without x_i, up to the second-order remainder
        loo = Exact.minimise(_mean(i), lam_s)
        exact = Exact.loss(loo, i) - Exact.loss(full, i)
        remainder = abs(second) / N**2  # twice f''(0) eps^2 / 2
        assert remainder < 0.1 * abs(exact)
        assert abs(change[k] - exact) <= remainder + cg_tol, (i, change[k], exact)
        # the predicted step ||dW(1/n) - dW(0)|| ~ ||dW'(0)|| / n, dW'(0) by central differences
        d_step = (4 * (dp2 - dm2) / 1e-3 - (dp - dm) / 2e-3) / 3
        assert abs(distance[k] - np.linalg.norm(d_step) / N) <= step_tol + np.linalg.norm(
            (dp2 - dm2) / 1e-3 - (dp - dm) / 2e-3) / N + 1e-12
        assert distance[k] == pytest.approx(np.linalg.norm(loo - full), rel=0.1)
