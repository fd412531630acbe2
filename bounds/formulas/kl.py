"""The Bernoulli KL divergence and its upper inverse, the arithmetic of every PAC-Bayes-kl step.

`bernoulli_kl` keeps its relative accuracy next to ``p = q``; `kl_inv_upper` inverts it by bisection,
rounded upward, so a certificate built on it is never optimistic (docs/certificate.md).
"""

from __future__ import annotations

import math

import numpy as np
from scipy.special import rel_entr

from ..validation import check_array
from .arrays import ArrayLike, as_output, is_scalar, unit

__all__ = [
    "DEFAULT_TOL",
    "bernoulli_kl",
    "kl_inv_upper",
    "kl_inv_upper_array",
]

DEFAULT_TOL = 1e-12
"""Default width of the final bisection bracket of :func:`kl_inv_upper` (40 halvings)."""


def _phi(x: np.ndarray) -> np.ndarray:
    """``x - ln(1 + x) >= 0`` for ``x >= -1``, to a relative error of a few ``1e-16`` for ``|x| < 0.01``
    (Taylor series to ``x^10``; truncation below ``2e-19``) and ``~4e-14`` beyond."""
    series = x * x * (1 / 2 + x * (-1 / 3 + x * (1 / 4 + x * (-1 / 5 + x * (1 / 6 + x * (
        -1 / 7 + x * (1 / 8 + x * (-1 / 9 + x / 10))))))))
    return np.where(np.abs(x) < 0.01, series, x - np.log1p(x))


def _kl(q: np.ndarray, r: np.ndarray) -> np.ndarray:
    # kl(q || r) = q phi(d / q) + (1 - q) phi(-d / (1 - q)) with d = r - q and phi(x) = x - ln(1 + x):
    # the linear parts q (d / q) and (1 - q) (-d / (1 - q)) cancel exactly, so both terms are >= 0 and
    # nothing cancels, unlike the textbook form, whose two logarithms cancel to ~1e-16 absolute near
    # r = q (enough to move kl_inv_upper(q, small c) by ~1e-8). Where |d| > q / 2 (or (1 - q) / 2), or q is 0
    # (1), the term is rel_entr(q, r) + d: rel_entr(x, y) = x ln(x / y), 0 for x = 0 (any y >= 0),
    # +inf for x > 0 = y, which are the 0 ln 0 = 0 conventions.
    q, r = np.broadcast_arrays(np.asarray(q, dtype=float), np.asarray(r, dtype=float))
    d = r - q
    qc = 1.0 - q
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        x, y = d / q, -d / qc
        # |x| <= 1/2 keeps 1 + x in [1/2, 3/2], where log1p loses nothing to the rounding of d
        near_1, near_2 = (q > 0) & (np.abs(d) <= 0.5 * q), (qc > 0) & (np.abs(d) <= 0.5 * qc)
        t1 = np.where(near_1, q * _phi(np.where(near_1, x, 0.0)), rel_entr(q, r) + d)
        t2 = np.where(near_2, qc * _phi(np.where(near_2, y, 0.0)), rel_entr(qc, 1.0 - r) - d)
    # Each term is >= 0 in exact arithmetic; far from r = q a rounding could dip a few ulp below 0.
    return np.maximum(t1 + t2, 0.0)


def bernoulli_kl(q: ArrayLike, p: ArrayLike) -> ArrayLike:
    """KL divergence between Bernoulli distributions, ``kl(q || p)``.

    ``kl(q || p) = q ln(q / p) + (1 - q) ln((1 - q) / (1 - p))`` with ``0 ln(0 / x) = 0`` for every
    ``x`` in ``[0, 1]`` and ``a ln(a / 0) = +inf`` for ``a > 0`` (Cover & Thomas, ch. 2; the "small kl"
    of Seeger 2002 and Maurer 2004). So ``kl(0 || p) = -ln(1 - p)``, ``kl(1 || p) = -ln p``,
    ``kl(q || q) = 0``, and ``kl(q || 0) = kl(q || 1) = +inf`` for ``0 < q < 1``. Evaluated as
    ``q phi(d / q) + (1 - q) phi(-d / (1 - q))`` with ``d = p - q`` and ``phi(x) = x - ln(1 + x)``,
    two non-negative terms, so it keeps its relative accuracy near ``p = q`` (where
    ``kl ~ d^2 / (2 q (1 - q))``), which :func:`kl_inv_upper` needs at small budgets.

    Parameters
    ----------
    q : float or ndarray
        Mean of the first Bernoulli, in [0, 1] (the empirical risk in the bounds).
    p : float or ndarray
        Mean of the second Bernoulli, in [0, 1] (the true risk in the bounds; not a dropout rate).

    Returns
    -------
    float or ndarray
        ``kl(q || p)`` in ``[0, +inf]``, of the broadcast shape.

    Examples
    --------
    >>> print(f"{bernoulli_kl(0.1, 0.2):.6f}")  # 0.1 ln(0.5) + 0.9 ln(0.9 / 0.8)
    0.036690
    >>> bernoulli_kl(np.array([0.0, 0.3, 1.0, 0.5]), np.array([0.0, 0.3, 1.0, 1.0]))
    array([ 0.,  0.,  0., inf])
    """
    q_a = unit("q", q)
    p_a = unit("p", p)
    return as_output(_kl(q_a, p_a), is_scalar(q_a, p_a))


def kl_inv_upper_array(q: np.ndarray, c: np.ndarray, tol: float) -> np.ndarray:
    """`kl_inv_upper` on checked arrays (no checks, no scalar conversion)."""
    q, c = np.broadcast_arrays(q, c)
    lo = np.array(q, dtype=float)  # invariant: kl(q || lo) <= c
    hi = np.ones_like(lo)  # invariant: kl(q || hi) > c, or hi = 1
    # The bracket starts no wider than 1 and halves each step: after ceil(log2(1/tol)) steps it is at
    # most tol wide. A fixed count (not "until hi - lo <= tol") terminates even where tol is below the
    # float spacing.
    for _ in range(max(0, math.ceil(-math.log2(tol)))):
        mid = 0.5 * (lo + hi)
        inside = _kl(q, mid) <= c
        lo = np.where(inside, mid, lo)
        hi = np.where(inside, hi, mid)
    return hi


def kl_inv_upper(q: ArrayLike, c: ArrayLike, *, tol: float = DEFAULT_TOL) -> ArrayLike:
    """Upper inverse of the Bernoulli KL: ``sup { r in [q, 1] : kl(q || r) <= c }``, rounded upward.

    ``r -> kl(q || r)`` is continuous and increasing on ``[q, 1]`` from ``0``, so the set is an
    interval ``[q, r*]`` and bisection on ``[q, 1]`` finds ``r*``. The bisection keeps a bracket
    ``lo <= r* <= hi`` with ``kl(q || lo) <= c`` and (``kl(q || hi) > c`` or ``hi = 1``) and returns
    ``hi``, so the result is never below ``r*`` (a certificate built on it is never optimistic):

        r* <= kl_inv_upper(q, c) <= min(1, r* + tol),   hence   kl(q || result) >= c  or  result = 1,

    exact up to the rounding of the ``kl`` evaluation: :func:`bernoulli_kl` keeps a relative error
    below ``~1e-13`` even next to ``r = q``, which moves ``r`` by less than ``1e-13 (r - q)``, far
    below ``tol`` (the textbook formula would move it by up to ``~1e-8`` at small ``c``). The
    result is non-decreasing in ``q`` and in ``c``. Closed forms (tested): ``kl_inv_upper(0, c) =
    1 - exp(-c)``, ``kl_inv_upper(1/2, c) = (1 + sqrt(1 - exp(-2c))) / 2``, ``kl_inv_upper(1, c) = 1``,
    ``kl_inv_upper(q, +inf) = 1``. The inverse is the one used in Seeger (2002), Langford (2005,
    "Tutorial on practical prediction theory") and Perez-Ortiz et al. (2021).

    Parameters
    ----------
    q : float or ndarray
        In [0, 1], the empirical value.
    c : float or ndarray
        ``c >= 0``, the budget; ``+inf`` gives 1.
    tol : float
        In (0, 1): width of the final bracket, i.e. how far above ``r*`` the result may be. The
        bisection takes ``ceil(log2(1 / tol))`` vectorised steps (40 for the default ``1e-12``).

    Returns
    -------
    float or ndarray
        In ``[q, 1]``, of the broadcast shape.

    Examples
    --------
    >>> r = kl_inv_upper(0.0, 0.1)  # 1 - exp(-0.1)
    >>> print(f"{r:.9f}")
    0.095162582
    >>> print(f"{kl_inv_upper(0.5, np.log(2) / 2):.9f}")  # (1 + sqrt(1 - 1/2)) / 2
    0.853553391
    >>> kl_inv_upper(np.array([1.0, 0.2]), np.array([0.3, np.inf]))
    array([1., 1.])
    """
    tol_f = float(check_array("tol", tol, low=0.0, high=1.0, open_low=True, open_high=True))
    q_a = unit("q", q)
    c_a = check_array("c", c, low=0.0, allow_inf=True)
    return as_output(kl_inv_upper_array(q_a, c_a, tol_f), is_scalar(q_a, c_a))

