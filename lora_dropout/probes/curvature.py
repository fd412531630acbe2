"""Generic curvature numerics on Hessian-vector products: extreme eigenvalues, linear solves, references.

Everything here works on a callable ``hvp(v: np.ndarray) -> np.ndarray`` (a symmetric operator ``H``
of size ``dim``) and knows nothing about models; `lora_dropout.probes.gradients.hessian_hvp` builds such
callables for a LoRA Dropout model. The quantities serve the stability bound (docs/bounds.md and docs/measurement.md):

- Prop. 4.2 / Thm 4.4 need ``Lambda_min``, the smallest eigenvalue of the Hessian of the mean
  training loss; the bound is defined only when ``Lambda_min + 2 lambda s > 0``. ``Lambda_max`` is
  reported next to it (conditioning, step sizes).
- The influence cross-check of ``beta`` needs ``(H + lambda I)^{-1} g``: `conjugate_gradient`.
"""

from __future__ import annotations

import warnings
from collections import deque
from collections.abc import Callable

import numpy as np
import torch
from scipy.sparse.linalg import ArpackNoConvergence, LinearOperator, eigsh

HVP = Callable[[np.ndarray], np.ndarray]


class HVPCounter(LinearOperator):
    """A symmetric `scipy.sparse.linalg.LinearOperator` around ``hvp`` that counts products.

    Parameters
    ----------
    hvp : callable
        ``v -> H v`` for 1-D arrays of length ``dim``.
    dim : int
    dtype : numpy dtype
        Dtype of the vectors handed to ``hvp`` and of its results.
    window : int
        Keep the last ``window`` pairs ``(v, H v)`` for `ritz` (costs ``2 * window * dim`` numbers);
        0 keeps none.

    Attributes
    ----------
    count : int
        Products computed so far (each costs one HVP, i.e. a forward and a double backward).
    """

    def __init__(self, hvp: HVP, dim: int, dtype=np.float64, window: int = 0):
        super().__init__(dtype=np.dtype(dtype), shape=(dim, dim))
        self._hvp = hvp
        self.count = 0
        self._recent: deque[tuple[np.ndarray, np.ndarray]] = deque(maxlen=window)

    def _matvec(self, v: np.ndarray) -> np.ndarray:
        v = np.asarray(v, dtype=self.dtype).reshape(-1)
        hv = np.asarray(self._hvp(v), dtype=self.dtype).reshape(-1)
        self.count += 1
        if self._recent.maxlen:
            self._recent.append((v.copy(), hv.copy()))
        return hv

    def _rmatvec(self, v: np.ndarray) -> np.ndarray:
        return self._matvec(v)  # H is symmetric

    def ritz(self, which: str) -> tuple[float, np.ndarray, float]:
        """Rayleigh-Ritz on the span of the kept vectors, with no further product.

        With ``Q`` an orthonormal basis of the kept ``v``'s, ``T = Q^T H Q`` is known from the kept
        ``H v``'s; its extreme eigenpair ``(theta, y)`` gives the Ritz vector ``x = Q y`` with
        ``theta = x^T H x``, so ``theta >= Lambda_min`` (``which="SA"``) or ``<= Lambda_max``
        (``"LA"``): a variational estimate, and ``||H x - theta x||`` its exact residual.

        Returns
        -------
        (theta, x, residual)
        """
        if not self._recent:
            raise RuntimeError("no products kept: construct HVPCounter with window > 0")
        vs = np.stack([v for v, _ in self._recent], axis=1)  # (dim, m)
        hvs = np.stack([hv for _, hv in self._recent], axis=1)
        # SVD instead of QR: drops directions the kept vectors span only numerically.
        u, sigma, wt = np.linalg.svd(vs, full_matrices=False)
        keep = sigma > sigma[0] * vs.shape[0] * np.finfo(self.dtype).eps
        q = u[:, keep]
        hq = hvs @ (wt[keep].T / sigma[keep])  # H Q, since V = U S W^T
        t = q.T @ hq
        values, vectors = np.linalg.eigh((t + t.T) / 2)
        j = 0 if which == "SA" else -1
        x, hx = q @ vectors[:, j], hq @ vectors[:, j]
        return float(values[j]), x, float(np.linalg.norm(hx - values[j] * x))


_WHICH = {("min",): (1, "SA"), ("max",): (1, "LA"), ("min", "max"): (2, "BE")}


def lanczos_extremes(
    hvp: HVP,
    dim: int,
    *,
    ends: tuple[str, ...] = ("min", "max"),
    tol: float = 1e-3,
    maxiter: int | None = None,
    dtype=np.float64,
    ncv: int | None = None,
    seed: int = 0,
) -> dict:
    """Extreme eigenvalues of a symmetric operator by implicitly restarted Lanczos (ARPACK).

    ``Lambda_min`` of Prop. 4.2 (docs/measurement.md: "Lanczos on Hessian-vector products ...
    eigsh(which="SA"/"LA") on a LinearOperator") and ``Lambda_max``. Both ends come from ONE Krylov
    space (``eigsh(k=2, which="BE")``), so asking for both costs about what one costs.

    Parameters
    ----------
    hvp : callable
        ``v -> H v`` on 1-D arrays of length ``dim`` (``dim >= 3``).
    ends : tuple
        ``("min", "max")`` (default), ``("min",)`` or ``("max",)``.
    tol : float
        ARPACK's stopping criterion: relative accuracy of the Ritz values, ``||H x - theta x|| <=
        tol * |theta|``.
    maxiter : int, optional
        Maximum restarts (ARPACK default ``10 * dim``).
    ncv : int, optional
        Lanczos vectors per restart (default ``min(dim, 20)``, as scipy); also the window of kept products
        for the fallback below (``2 * ncv * dim`` numbers held during the run).
    seed : int
        Seeds the starting vector, so repeated calls make the same products.

    Returns
    -------
    dict
        For each requested end ``e``: ``e_eig`` (the eigenvalue), ``e_vector`` (unit eigenvector),
        ``e_hvps`` (products the ARPACK run made; shared by both ends), ``e_residual``
        (``||H x - lambda x||``, one extra product each, not counted) and ``e_converged``.

    Warns
    -----
    RuntimeWarning
        When the run stops at ``maxiter`` without converging (`ArpackNoConvergence`). A value is then
        the pair ARPACK did converge on, if any, else the Rayleigh-Ritz estimate on the last ``ncv``
        products (`HVPCounter.ritz`; an upper bound for ``Lambda_min``, a lower bound for
        ``Lambda_max``), and ``*_converged`` is False; its residual says how far from an eigenpair.
    """
    key = tuple(e for e in ("min", "max") if e in ends)
    if key not in _WHICH or len(key) != len(ends):
        raise ValueError(f"ends={ends!r} must be ('min', 'max'), ('min',) or ('max',)")
    k, which = _WHICH[key]
    ncv = ncv or min(dim, 20)
    v0 = np.random.default_rng(seed).standard_normal(dim).astype(dtype)
    op = HVPCounter(hvp, dim, dtype, window=ncv)
    found: dict[str, tuple[float, np.ndarray, bool]] = {}
    try:
        values, vectors = eigsh(op, k=k, which=which, tol=tol, maxiter=maxiter, ncv=ncv, v0=v0)
        order = np.argsort(values)
        pairs = {"min": order[0], "max": order[-1]}
        found = {e: (float(values[pairs[e]]), vectors[:, pairs[e]], True) for e in key}
    except ArpackNoConvergence as exc:
        for e in key:
            if len(exc.eigenvalues):  # ARPACK converged on some pair even though it stopped early
                j = int(np.argmin(exc.eigenvalues) if e == "min" else np.argmax(exc.eigenvalues))
                value, vector = float(exc.eigenvalues[j]), exc.eigenvectors[:, j]
            else:
                value, vector, _ = op.ritz("SA" if e == "min" else "LA")
            found[e] = (value, vector, False)
        warnings.warn(
            f"Lanczos did not reach tol={tol} within maxiter={maxiter} ({op.count} Hessian-vector products); "
            f"returning the best estimates {[round(found[e][0], 6) for e in key]} with their residuals",
            RuntimeWarning,
            stacklevel=2,
        )
    hvps = op.count
    out = {}
    for e, (value, vector, converged) in found.items():
        residual = float(np.linalg.norm(op.matvec(vector) - value * vector))  # not in the count
        out.update({f"{e}_eig": value, f"{e}_vector": vector, f"{e}_hvps": hvps, f"{e}_residual": residual,
                    f"{e}_converged": converged})
    return out


def conjugate_gradient(
    hvp: HVP,
    b: np.ndarray,
    *,
    damping: float = 0.0,
    tol: float = 1e-6,
    maxiter: int | None = None,
) -> tuple[np.ndarray, dict]:
    """Solve ``(H + damping I) x = b`` by conjugate gradients, stopping at negative curvature.

    The influence estimate of ``beta`` (docs/measurement.md) needs ``H_lambda^{-1} g_i`` with
    ``H_lambda = H + 2 lambda s I``; CG converges only where ``H + damping I`` is positive definite. On
    an indefinite operator it stops at the first search direction ``p`` with ``p^T (H + damping I) p <=
    0`` (which proves the operator is not positive definite) instead of iterating on: the measured
    Hessians of LoRA runs are often strongly indefinite, and each product costs a forward and a double
    backward.

    Parameters
    ----------
    tol : float
        Relative residual ``||(H + damping I) x - b|| / ||b||`` to reach.
    maxiter : int, optional
        Most CG steps (default ``min(2 dim, 200)``).

    Returns
    -------
    x : ndarray
    info : dict
        ``iterations`` (CG steps), ``hvps`` (products, the final residual check excluded),
        ``residual`` (the relative residual of the returned ``x``, recomputed with one product),
        ``converged``, and ``negative_curvature`` (a direction with ``p^T A p <= 0`` was met).

    Warns
    -----
    RuntimeWarning
        When CG stops at ``maxiter`` or at negative curvature before reaching ``tol``.
    """
    b = np.asarray(b, dtype=np.float64)
    dim = b.shape[0]
    op = HVPCounter(lambda v: hvp(v) + damping * v, dim)
    # in exact arithmetic CG needs at most dim steps; rounding can need a few more
    maxiter = min(2 * dim, 200) if maxiter is None else maxiter
    norm_b = float(np.linalg.norm(b))
    x, r = np.zeros(dim), b.copy()
    p, rr = r.copy(), float(r @ r)
    steps, negative = 0, False
    while steps < maxiter and np.sqrt(rr) > tol * norm_b:
        ap = op.matvec(p)
        curvature = float(p @ ap)
        if curvature <= 0:
            negative = True
            break
        alpha = rr / curvature
        x += alpha * p
        r -= alpha * ap
        rr, rr_old = float(r @ r), rr
        p = r + (rr / rr_old) * p
        steps += 1
    hvps = op.count
    residual = float(np.linalg.norm(op.matvec(x) - b) / norm_b) if norm_b else 0.0
    converged = not negative and np.sqrt(rr) <= tol * norm_b
    if not converged:
        why = "met negative curvature (the operator is not positive definite)" if negative else "hit maxiter"
        warnings.warn(
            f"conjugate gradients {why} after {steps} steps at relative residual {residual:.3g} > tol={tol}",
            RuntimeWarning,
            stacklevel=2,
        )
    return x, {"iterations": steps, "hvps": hvps, "residual": residual, "converged": converged,
               "negative_curvature": negative}


def dense_hessian(loss_fn: Callable[[torch.Tensor], torch.Tensor], params_flat: torch.Tensor) -> torch.Tensor:
    """The full Hessian ``d^2 loss / d theta^2`` at ``params_flat``, shape ``(dim, dim)``.

    A reference for tests (``torch.func.hessian``: forward-over-reverse, ``dim`` tangents at once);
    memory grows with ``dim`` times the activations, so keep ``dim`` to a few thousand.
    """
    return torch.func.hessian(loss_fn)(params_flat.detach())
