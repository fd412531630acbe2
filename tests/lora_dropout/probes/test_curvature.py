"""Lanczos extremes and conjugate gradients against exact linear algebra
on L2-regularised logistic regression.
"""

import numpy as np
import pytest
import torch

from lora_dropout.probes.curvature import HVPCounter, conjugate_gradient, dense_hessian, lanczos_extremes

N, D, ALPHA = 200, 20, 1e-2


@pytest.fixture(scope="module")
def logistic():
    """``L(w) = mean BCE(X w, y) + alpha/2 ||w||^2`` at a random ``w``, its HVP and its exact Hessian.

    Feature scales spread over ``[0.2, 3]`` so the spectrum is not clustered (Lanczos must work).
    """
    g = torch.Generator().manual_seed(0)
    x = torch.randn(N, D, generator=g, dtype=torch.float64) * torch.linspace(0.2, 3.0, D, dtype=torch.float64)
    y = (torch.rand(N, generator=g, dtype=torch.float64) < 0.5).double()
    w = torch.randn(D, generator=g, dtype=torch.float64)

    def loss(w):
        return torch.nn.functional.binary_cross_entropy_with_logits(x @ w, y) + 0.5 * ALPHA * w @ w

    def hvp(v):
        w_ = w.clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(loss(w_), w_, create_graph=True)
        (hv,) = torch.autograd.grad(grad @ torch.from_numpy(v), w_)
        return hv.numpy()

    p = torch.sigmoid(x @ w)
    exact = (x.T * (p * (1 - p))) @ x / N + ALPHA * torch.eye(D, dtype=torch.float64)
    return {"loss": loss, "w": w, "hvp": hvp, "hessian": exact.numpy()}


def test_dense_hessian_matches_closed_form(logistic):
    # X^T diag(p (1 - p)) X / n + alpha I
    np.testing.assert_allclose(
        dense_hessian(logistic["loss"], logistic["w"]).numpy(), logistic["hessian"], rtol=1e-12, atol=1e-14
    )


def test_hvp_counter_counts_products_and_is_the_operator(logistic):
    op = HVPCounter(logistic["hvp"], D)
    v = np.arange(D, dtype=np.float64)
    np.testing.assert_allclose(op.matvec(v), logistic["hessian"] @ v, rtol=1e-12)
    np.testing.assert_allclose(op.rmatvec(v), logistic["hessian"] @ v, rtol=1e-12)
    assert op.count == 2


def test_lanczos_reaches_eigvalsh_at_tight_tolerance(logistic):
    exact = np.linalg.eigvalsh(logistic["hessian"])
    # ncv=6 < D forces restarts: with ncv = D one Lanczos cycle spans the whole space
    result = lanczos_extremes(logistic["hvp"], D, tol=1e-10, ncv=6)
    np.testing.assert_allclose([result["min_eig"], result["max_eig"]], [exact[0], exact[-1]], rtol=1e-8)
    assert result["min_converged"] and result["max_converged"]
    assert result["min_residual"] < 1e-8 * exact[-1] and result["max_residual"] < 1e-8 * exact[-1]
    v = result["min_vector"]
    np.testing.assert_allclose(np.linalg.norm(logistic["hessian"] @ v - exact[0] * v), 0.0, atol=1e-8)


def test_lanczos_default_tolerance_is_1e3_relative_and_counts_every_product(logistic):
    exact = np.linalg.eigvalsh(logistic["hessian"])
    calls = []

    def counted(v):
        calls.append(1)
        return logistic["hvp"](v)

    result = lanczos_extremes(counted, D, ncv=6)
    np.testing.assert_allclose(result["min_eig"], exact[0], rtol=1e-3)
    np.testing.assert_allclose(result["max_eig"], exact[-1], rtol=1e-3)
    # both ends come from one ARPACK run, whose products are counted once; each residual check adds one
    assert result["min_hvps"] == result["max_hvps"] > 0
    assert len(calls) == result["min_hvps"] + 2


def test_lanczos_one_end_only(logistic):
    exact = np.linalg.eigvalsh(logistic["hessian"])
    result = lanczos_extremes(logistic["hvp"], D, ends=("min",), tol=1e-10, ncv=6)
    assert set(result) == {"min_eig", "min_vector", "min_hvps", "min_residual", "min_converged"}
    np.testing.assert_allclose(result["min_eig"], exact[0], rtol=1e-8)
    with pytest.raises(ValueError, match="ends"):
        lanczos_extremes(logistic["hvp"], D, ends=("middle",))


def test_lanczos_without_convergence_warns_and_returns_the_ritz_estimate(logistic):
    h = logistic["hessian"]
    exact = np.linalg.eigvalsh(h)
    with pytest.warns(RuntimeWarning, match=r"did not reach tol=1e-12 within maxiter=1"):
        result = lanczos_extremes(logistic["hvp"], D, tol=1e-12, maxiter=1, ncv=5)
    assert not result["min_converged"] and not result["max_converged"]
    for key in ("min", "max"):
        x, value = result[f"{key}_vector"], result[f"{key}_eig"]
        np.testing.assert_allclose(x @ x, 1.0, rtol=1e-12)
        np.testing.assert_allclose(x @ h @ x, value, rtol=1e-10)  # a Rayleigh quotient ...
        np.testing.assert_allclose(np.linalg.norm(h @ x - value * x), result[f"{key}_residual"], rtol=1e-8)
    # ... hence variational: above Lambda_min, below Lambda_max, and here visibly not converged
    assert exact[0] < result["min_eig"] and result["max_eig"] < exact[-1]
    assert result["min_residual"] > 1e-6


@pytest.mark.parametrize("damping", [0.0, 0.3])
def test_conjugate_gradient_solves_the_damped_system(logistic, damping):
    a = logistic["hessian"] + damping * np.eye(D)
    b = np.linspace(-1.0, 2.0, D)
    tol = 1e-10
    x, info = conjugate_gradient(logistic["hvp"], b, damping=damping, tol=tol)
    true = np.linalg.norm(a @ x - b) / np.linalg.norm(b)
    # Tolerances come from the quantities, not from one machine's rounding. A residual ``A x - b``
    # evaluated in floating point (dense here, autograd HVP in the solver: reductions over N and D
    # terms in BLAS-dependent order) is only known to within ``(N + D) eps (||A|| ||x|| + ||b||)``; at
    # tol = 1e-10 the true residual is itself only 10-100 times that, so a relative comparison of two
    # evaluations of it measures BLAS, not CG.
    floor = (N + D) * np.finfo(np.float64).eps * (np.linalg.norm(a) * np.linalg.norm(x) + np.linalg.norm(b))
    floor /= np.linalg.norm(b)
    assert floor < 0.1 * tol  # the floor is a rounding allowance, below what is tested
    assert info["converged"] and not info["negative_curvature"]
    # CG stops on its recursive residual <= tol; the reported one is the true residual of x, recomputed
    assert abs(info["residual"] - true) <= floor
    assert true <= tol + floor
    # ||x - x*|| / ||x*|| <= cond(A) ||A x - b|| / ||b|| (x* itself solved to within cond(A) * eps)
    exact = np.linalg.solve(a, b)
    error = np.linalg.norm(x - exact) / np.linalg.norm(exact)
    assert error <= np.linalg.cond(a) * (true + floor)
    assert 0 < info["iterations"] <= info["hvps"]


def test_conjugate_gradient_reports_a_stop_before_tolerance(logistic):
    with pytest.warns(RuntimeWarning, match="hit maxiter after 2 steps"):
        _, info = conjugate_gradient(logistic["hvp"], np.ones(D), tol=1e-10, maxiter=2)
    assert not info["converged"] and info["iterations"] == 2 and info["residual"] > 1e-3


def test_conjugate_gradient_stops_at_once_on_an_indefinite_operator():
    # H + damping I with a negative eigenvalue: CG must not spend its budget (each product is costly)
    h = np.diag([-5.0, 1.0, 2.0, 3.0])
    with pytest.warns(RuntimeWarning, match="negative curvature"):
        _, info = conjugate_gradient(lambda v: h @ v, np.ones(4), damping=1.0, maxiter=1000)
    assert info["negative_curvature"] and not info["converged"] and info["hvps"] <= 5
