"""Risk bounds from stability: Lemma 4.3, Theorem 4.4 and its gap, Bousquet & Elisseeff's Thm 12, and
what Theorem 4.4 would need to say something (`lam_needed`, `n_needed`).

A bound whose denominator ``D = Lambda_min + 2 lam s`` (Prop. 4.2, `bounds.formulas.stability.denominator`)
is not positive is vacuous: value ``inf`` and a ``reason``, never clamped and never NaN.
"""

from __future__ import annotations

from enum import Enum

import numpy as np

from ..validation import check_array, check_option
from .arrays import ArrayLike, count, is_scalar, nonnegative, positive, probability, unit
from .records import BoundValue, assemble
from .stability import denominator, sparsity_array

__all__ = [
    "Lemma43Form",
    "lam_needed",
    "lemma43_bound",
    "n_needed",
    "theorem44_bound",
    "theorem44_gap",
    "uniform_stability_bound",
]


class Lemma43Form(str, Enum):
    """Which constant of Bousquet & Elisseeff's Thm 11 Lemma 4.3 uses (docs/measurement.md, "Decisions")."""

    PRINTED = "printed"  # 12 C n beta, as printed in B&E and in the paper
    CORRECTED = "corrected"  # 6 C n (beta_1 + beta), what the proof supports

def lemma43_bound(
    r_hat: ArrayLike,
    loss_range: ArrayLike,
    n: ArrayLike,
    delta: ArrayLike,
    stability: ArrayLike,
    stability_1: ArrayLike | None = None,
    form: Lemma43Form | str = Lemma43Form.PRINTED,
) -> BoundValue:
    """Risk bound from pointwise hypothesis stability (Lemma 4.3 = Bousquet & Elisseeff 2002, Thm 11).

    With probability at least ``1 - delta`` over the training set, for a loss in ``[0, C]``:

    - ``form="printed"`` (default): ``R <= R_hat + sqrt((C^2 + 12 C n beta) / (2 n delta))``
    - ``form="corrected"``: ``R <= R_hat + sqrt((C^2 + 6 C n (beta_1 + beta)) / (2 n delta))``,
      the constant the proof supports, with ``beta_1`` the (non-pointwise) hypothesis stability.

    Parameters
    ----------
    r_hat : float or ndarray
        Empirical risk ``R_hat`` (mean training loss).
    loss_range : float or ndarray
        ``C > 0``.
    n : int or ndarray
        ``n_train >= 1``.
    delta : float or ndarray
        Failure probability in (0, 1).
    stability : float or ndarray
        ``beta >= 0``, pointwise hypothesis stability.
    stability_1 : float or ndarray, optional
        ``beta_1 >= 0``, hypothesis stability; required by, and only used with, ``form="corrected"``.
    form : Lemma43Form or str
        ``"printed"`` or ``"corrected"``.

    Returns
    -------
    BoundValue
        Terms ``{"r_hat", "gap"}``; never vacuous.

    Examples
    --------
    >>> b = lemma43_bound(r_hat=0.2, loss_range=1.0, n=10, delta=0.5, stability=0.0125)
    >>> b.value, b.terms["gap"]  # sqrt((1 + 12 * 10 * 0.0125) / (2 * 10 * 0.5)) = sqrt(0.25)
    (0.7, 0.5)
    """
    form = check_option(Lemma43Form, "form", form)
    r = check_array("r_hat", r_hat)
    c = positive("loss_range C", loss_range)
    n_a = count("n_train n", n)
    d = probability("delta", delta)
    beta = nonnegative("stability beta", stability)
    if form is Lemma43Form.CORRECTED:
        if stability_1 is None:
            raise ValueError("stability_1 (beta_1, the hypothesis stability) is required by form='corrected'")
        beta_1 = nonnegative("stability_1 beta_1", stability_1)
        stability_term = 6.0 * c * n_a * (beta_1 + beta)
        scalar = is_scalar(r, c, n_a, d, beta, beta_1)
    else:
        # Refuse rather than silently ignore a measurement the caller thought was used.
        if stability_1 is not None:
            raise ValueError("stability_1 is only used by form='corrected'; got form='printed'")
        stability_term = 12.0 * c * n_a * beta
        scalar = is_scalar(r, c, n_a, d, beta)
    with np.errstate(over="ignore"):  # overflow is +inf, the right limit
        gap = np.sqrt((c**2 + stability_term) / (2.0 * n_a * d))
    return assemble(scalar, {"r_hat": r, "gap": gap})


def _theorem44_inputs(loss_range, lipschitz, hessian_min_eig, lam, p, delta):
    """The validated inputs Theorem 4.4's gap and `n_needed` share."""
    return (positive("loss_range C", loss_range), nonnegative("lipschitz eta", lipschitz),
            check_array("hessian_min_eig Lambda_min", hessian_min_eig), nonnegative("lam", lam), unit("dropout_rate p", p),
            probability("delta", delta))


def _theorem44_gap(loss_range, lipschitz, hessian_min_eig, lam, p, n, delta):
    c, eta, hmin, lam_a, p_a, d = _theorem44_inputs(loss_range, lipschitz, hessian_min_eig, lam, p, delta)
    n_a = count("n_train n", n)
    denom, vacuous, reason = denominator(hmin, lam_a, p_a)
    # Computed from the printed formula rather than via stability_bound, so n does not cancel in
    # floating point; the two agree (tested).
    with np.errstate(over="ignore"):  # overflow is +inf, the right limit
        gap = np.where(vacuous, np.inf, np.sqrt((c**2 + 24.0 * c * eta**2 / denom) / (2.0 * n_a * d)))
    return is_scalar(c, eta, hmin, lam_a, p_a, n_a, d), gap, vacuous, reason


def theorem44_gap(
    loss_range: ArrayLike,
    lipschitz: ArrayLike,
    hessian_min_eig: ArrayLike,
    lam: ArrayLike,
    p: ArrayLike,
    n: ArrayLike,
    delta: ArrayLike,
) -> BoundValue:
    """The generalisation gap of Theorem 4.4 alone, ``R - R_hat <= gap`` (convenient for curves).

    ``gap = sqrt((C^2 + 24 C eta^2 / (Lambda_min + 2 lam s)) / (2 n delta))``; vacuous (``inf``) when
    ``D = Lambda_min + 2 lam s <= 0``. Arguments as in :func:`theorem44_bound`.

    Returns
    -------
    BoundValue
        Terms ``{"gap"}``.

    Examples
    --------
    >>> g = theorem44_gap(loss_range=1.0, lipschitz=1.0, hessian_min_eig=0.0, lam=1.0,
    ...                   p=np.array([0.0, 0.1, 0.5]), n=3668, delta=0.05)
    >>> g.value.round(4)  # p = 0 with Lambda_min = 0 is vacuous
    array([   inf, 0.4182, 0.2153])
    >>> g.vacuous
    array([ True, False, False])
    """
    scalar, gap, vacuous, reason = _theorem44_gap(loss_range, lipschitz, hessian_min_eig, lam, p, n, delta)
    return assemble(scalar, {"gap": gap}, vacuous, reason)


def theorem44_bound(
    r_hat: ArrayLike,
    loss_range: ArrayLike,
    lipschitz: ArrayLike,
    hessian_min_eig: ArrayLike,
    lam: ArrayLike,
    p: ArrayLike,
    n: ArrayLike,
    delta: ArrayLike,
) -> BoundValue:
    """Generalisation bound of LoRA Dropout (Theorem 4.4 = Lemma 4.3 with Prop. 4.2's ``beta``).

    With probability at least ``1 - delta``:
    ``R <= R_hat + sqrt((C^2 + 24 C eta^2 / (Lambda_min + 2 lam s)) / (2 n delta))``, ``s = 2p - p^2``.
    Vacuous (value and gap ``inf``) when ``D = Lambda_min + 2 lam s <= 0``, e.g. plain LoRA (``p = 0``)
    with ``Lambda_min <= 0``.

    Parameters
    ----------
    r_hat : float or ndarray
        Empirical risk ``R_hat``.
    loss_range : float or ndarray
        ``C > 0``, the loss lies in ``[0, C]``.
    lipschitz : float or ndarray
        ``eta >= 0``.
    hessian_min_eig : float or ndarray
        ``Lambda_min`` (any sign).
    lam : float or ndarray
        ``lambda >= 0``.
    p : float or ndarray
        ``dropout_rate`` in [0, 1].
    n : int or ndarray
        ``n_train >= 1``.
    delta : float or ndarray
        Failure probability in (0, 1).

    Returns
    -------
    BoundValue
        Terms ``{"r_hat", "gap"}``.

    Examples
    --------
    >>> b = theorem44_bound(r_hat=0.1, loss_range=1.0, lipschitz=1.0, hessian_min_eig=0.0, lam=1.0,
    ...                     p=0.5, n=3668, delta=0.05)
    >>> print(f"{b.value:.4f} = {b.terms['r_hat']} + {b.terms['gap']:.4f}")
    0.3153 = 0.1 + 0.2153
    >>> theorem44_bound(0.1, 1.0, 1.0, hessian_min_eig=0.0, lam=1.0, p=0.0, n=3668, delta=0.05).vacuous
    True
    """
    r = check_array("r_hat", r_hat)
    scalar, gap, vacuous, reason = _theorem44_gap(loss_range, lipschitz, hessian_min_eig, lam, p, n, delta)
    return assemble(scalar and r.ndim == 0, {"r_hat": r, "gap": gap}, vacuous, reason)

# What Theorem 4.4 would need


def lam_needed(hessian_min_eig: ArrayLike, p: ArrayLike) -> ArrayLike:
    """The smallest ``lam`` for which Theorem 4.4 is not vacuous: ``D = Lambda_min + 2 lam s > 0``.

    ``lam_needed = -Lambda_min / (2 s)`` when ``Lambda_min <= 0`` and ``s = 2p - p^2 > 0``; ``0`` when
    ``Lambda_min > 0`` (every ``lam >= 0`` works); ``inf`` when ``Lambda_min <= 0`` and ``s = 0`` (plain
    LoRA: no ``lam`` helps). For ``Lambda_min <= 0`` it is an infimum: ``D > 0`` exactly when
    ``lam > lam_needed``.

    Parameters
    ----------
    hessian_min_eig : float or ndarray
        ``Lambda_min`` (any sign).
    p : float or ndarray
        ``dropout_rate`` in [0, 1].

    Returns
    -------
    float or ndarray
        ``lam_needed >= 0``, possibly ``inf``.

    Examples
    --------
    >>> lam_needed(hessian_min_eig=-1.5, p=0.5)  # 1.5 / (2 * 0.75)
    1.0
    >>> round(lam_needed(-7.3, 0.6), 4)  # 7.3 / (2 * 0.84)
    4.3452
    >>> lam_needed(np.array([0.2, 0.0, -1.0]), np.array([0.5, 0.0, 0.0]))
    array([ 0., inf, inf])
    """
    hmin = check_array("hessian_min_eig Lambda_min", hessian_min_eig)
    p_a = unit("dropout_rate p", p)
    hmin_b, s = np.broadcast_arrays(hmin, sparsity_array(p_a))
    out = np.zeros(hmin_b.shape)
    flat = hmin_b <= 0.0
    out[flat & (s == 0.0)] = np.inf
    ok = flat & (s > 0.0)
    out[ok] = -hmin_b[ok] / (2.0 * s[ok]) + 0.0  # + 0.0: no -0.0 at Lambda_min = 0
    return float(out) if is_scalar(hmin, p_a) else out


def n_needed(
    loss_range: ArrayLike,
    lipschitz: ArrayLike,
    hessian_min_eig: ArrayLike,
    lam: ArrayLike,
    p: ArrayLike,
    delta: ArrayLike,
) -> ArrayLike:
    """The training-set size beyond which Theorem 4.4's gap term falls below ``C``.

    The gap ``sqrt((C^2 + 24 C eta^2 / D) / (2 n delta))``, ``D = Lambda_min + 2 lam s``, is below the
    loss range ``C`` (the bound then says more than ``R <= R_hat + C``) exactly when

        n > n_needed = (C^2 + 24 C eta^2 / D) / (2 delta C^2)

    ``inf`` when ``D <= 0``: the bound is vacuous at this ``lam`` for every ``n`` (see `lam_needed`).
    ``n_needed`` is the threshold, not rounded: the smallest integer that works is ``floor(n_needed) + 1``.

    Parameters
    ----------
    loss_range, lipschitz, hessian_min_eig, lam, p, delta
        As in :func:`theorem44_bound` (``C > 0``, ``eta >= 0``, ``Lambda_min``, ``lam >= 0``,
        ``p`` in [0, 1], ``delta`` in (0, 1)).

    Returns
    -------
    float or ndarray

    Examples
    --------
    The worked example of docs/bounds.md (``C = eta = 1``, ``Lambda_min = 0``, ``lam = 1``, ``p = 0.5``,
    ``delta = 0.05``): ``D = 1.5``, ``(1 + 24 / 1.5) / (2 * 0.05) = 17 / 0.1``.

    >>> round(n_needed(1.0, 1.0, hessian_min_eig=0.0, lam=1.0, p=0.5, delta=0.05), 9)
    170.0
    >>> n_needed(1.0, 1.0, hessian_min_eig=0.0, lam=1.0, p=0.0, delta=0.05)  # D = 0: vacuous at any n
    inf
    """
    c, eta, hmin, lam_a, p_a, d = _theorem44_inputs(loss_range, lipschitz, hessian_min_eig, lam, p, delta)
    denom, vacuous, _ = denominator(hmin, lam_a, p_a)
    with np.errstate(over="ignore"):  # overflow is +inf, the right limit
        out = np.where(vacuous, np.inf, (c**2 + 24.0 * c * eta**2 / denom) / (2.0 * d * c**2))
    return float(out) if is_scalar(c, eta, hmin, lam_a, p_a, d) else out


def uniform_stability_bound(
    r_hat: ArrayLike, loss_range: ArrayLike, n: ArrayLike, delta: ArrayLike, stability: ArrayLike
) -> BoundValue:
    """Risk bound from uniform stability (Bousquet & Elisseeff 2002, Thm 12), for completeness.

    With probability at least ``1 - delta``:
    ``R <= R_hat + 2 beta + (4 n beta + C) sqrt(ln(1/delta) / (2 n))``.
    Here ``beta`` must be a *uniform* stability (a supremum over sets and points), which is at least
    the pointwise one; feeding it Prop. 4.2's value is an approximation.

    Parameters
    ----------
    r_hat : float or ndarray
        Empirical risk ``R_hat``.
    loss_range : float or ndarray
        ``C > 0``.
    n : int or ndarray
        ``n_train >= 1``.
    delta : float or ndarray
        Failure probability in (0, 1).
    stability : float or ndarray
        ``beta >= 0``, uniform stability.

    Returns
    -------
    BoundValue
        Terms ``{"r_hat", "two_beta", "concentration"}``; never vacuous.

    Examples
    --------
    >>> b = uniform_stability_bound(r_hat=0.1, loss_range=1.0, n=50, delta=np.exp(-1), stability=0.005)
    >>> round(b.value, 12)  # 0.1 + 2 * 0.005 + (4 * 50 * 0.005 + 1) * sqrt(1 / 100)
    0.31
    """
    r = check_array("r_hat", r_hat)
    c = positive("loss_range C", loss_range)
    n_a = count("n_train n", n)
    d = probability("delta", delta)
    beta = nonnegative("stability beta", stability)
    # -log(delta) rather than log(1/delta): 1/delta can round to 1 for delta just below 1.
    with np.errstate(over="ignore"):  # overflow is +inf, the right limit
        concentration = (4.0 * n_a * beta + c) * np.sqrt(-np.log(d) / (2.0 * n_a))
    terms = {"r_hat": r, "two_beta": 2.0 * beta, "concentration": concentration}
    return assemble(is_scalar(r, c, n_a, d, beta), terms)
