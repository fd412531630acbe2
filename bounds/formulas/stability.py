"""Sparsity and the pointwise hypothesis stability of LoRA Dropout (Prop. 4.2).

``s = 2p - p^2`` is the probability that an entry of ``dW_hat`` is masked; Prop. 4.2's denominator
``D = Lambda_min + 2 lam s`` is shared with the risk bounds of `bounds.formulas.risk` (`denominator`),
which are vacuous where it is not positive.
"""

from __future__ import annotations

import numpy as np

from ..validation import check_array
from .arrays import ArrayLike, count, is_scalar, nonnegative, unit
from .records import BoundValue, assemble

__all__ = [
    "denominator",
    "sparsity",
    "sparsity_array",
    "stability_bound",
]


def sparsity_array(p: np.ndarray) -> np.ndarray:
    """`sparsity` of a checked array (no checks, no scalar conversion)."""
    # p (2 - p) is 2p - p^2 without the cancellation of 1 - (1 - p)^2 at small p.
    return p * (2.0 - p)


def sparsity(p: ArrayLike) -> ArrayLike:
    """Probability that an entry of ``dW_hat`` is masked (Eqs. 9-11, Prop. A.2).

    ``s = 1 - (1 - p)^2 = 2p - p^2``: an entry ``(j, k)`` survives only if row ``j`` of ``B`` and
    column ``k`` of ``A`` are both kept, each with probability ``1 - p``.

    Parameters
    ----------
    p : float or ndarray
        ``dropout_rate`` in [0, 1].

    Returns
    -------
    float or ndarray
        ``s`` in [0, 1], same shape as ``p``.

    Examples
    --------
    >>> sparsity(0.5)
    0.75
    >>> sparsity(np.array([0.0, 0.1, 1.0]))
    array([0.  , 0.19, 1.  ])
    """
    p_arr = unit("dropout_rate p", p)
    s = sparsity_array(p_arr)
    return float(s) if p_arr.ndim == 0 else s


def denominator(hessian_min_eig: np.ndarray, lam: np.ndarray, p: np.ndarray):
    """``D = Lambda_min + 2 lam s`` of Prop. 4.2 (1.0 where vacuous), the vacuous mask, and the reasons."""
    s = sparsity_array(p)
    denom = np.asarray(hessian_min_eig + 2.0 * lam * s)
    vacuous = denom <= 0.0
    columns = (x.ravel() for x in np.broadcast_arrays(vacuous, hessian_min_eig, lam, s, denom))
    reasons = [
        f"denominator Lambda_min + 2*lam*s = {h:.6g} + 2*{la:.6g}*{sv:.6g} = {d:.6g} <= 0" if v else ""
        for v, h, la, sv, d in zip(*columns, strict=True)
    ]
    reason = np.array(reasons, dtype=str).reshape(vacuous.shape)
    # A harmless stand-in where vacuous, so that no division by zero or by a negative happens.
    return np.where(vacuous, 1.0, denom), vacuous, reason


def stability_bound(
    lipschitz: ArrayLike, hessian_min_eig: ArrayLike, lam: ArrayLike, p: ArrayLike, n: ArrayLike
) -> BoundValue:
    """Pointwise hypothesis stability of LoRA Dropout (Prop. 4.2).

    ``beta <= 2 eta^2 / ((Lambda_min + 2 lam s) n)`` with ``s = 2p - p^2``; vacuous when
    ``D = Lambda_min + 2 lam s <= 0``.

    Parameters
    ----------
    lipschitz : float or ndarray
        ``eta >= 0``, Lipschitz constant of the loss.
    hessian_min_eig : float or ndarray
        ``Lambda_min``, smallest Hessian eigenvalue of the mean training loss (any sign).
    lam : float or ndarray
        ``lambda >= 0``, strength of the sparsity regulariser.
    p : float or ndarray
        ``dropout_rate`` in [0, 1].
    n : int or ndarray
        ``n_train >= 1``.

    Returns
    -------
    BoundValue
        Terms ``{"beta"}``.

    Examples
    --------
    >>> b = stability_bound(lipschitz=1.0, hessian_min_eig=0.0, lam=1.0, p=0.5, n=3668)
    >>> print(f"{b.value:.4g}")  # 2 / (1.5 * 3668)
    0.0003635
    >>> stability_bound(1.0, hessian_min_eig=-0.3, lam=0.0, p=0.5, n=10).reason
    'denominator Lambda_min + 2*lam*s = -0.3 + 2*0*0.75 = -0.3 <= 0'
    """
    eta = nonnegative("lipschitz eta", lipschitz)
    hmin = check_array("hessian_min_eig Lambda_min", hessian_min_eig)
    lam_a = nonnegative("lam", lam)
    p_a = unit("dropout_rate p", p)
    n_a = count("n_train n", n)
    denom, vacuous, reason = denominator(hmin, lam_a, p_a)
    # Overflow (huge eta, tiny positive D) gives +inf, the right limit: uninformative, not vacuous.
    with np.errstate(over="ignore"):
        beta = np.where(vacuous, np.inf, 2.0 * eta**2 / (denom * n_a))
    return assemble(is_scalar(eta, hmin, lam_a, p_a, n_a), {"beta": beta}, vacuous, reason)
