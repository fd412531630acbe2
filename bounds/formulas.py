"""The paper's bounds as vectorised pure functions (theory.md section 2).

Every function takes Python floats or numpy arrays and broadcasts them like numpy. Scalars in give
scalars out (Python ``float``/``bool``/``str``); any array in gives arrays out. Arguments are checked
up front and a bad one raises ``ValueError`` naming it and its value.

A bound whose denominator ``D = Lambda_min + 2 lam s`` is not positive is *vacuous*: its value is
``inf`` and its ``reason`` says why. It is never clamped and never NaN. "Vacuous" is about the
arithmetic only; whether the assumptions of Prop. 4.2 hold (PSD Hessian, stationarity, closeness of
``theta(S^i)`` and ``theta(S)``) is measured elsewhere and reported next to the bound.

Names follow design.md section 2: ``p`` is ``dropout_rate``, ``n`` is ``n_train``, ``C`` is
``loss_range``, ``eta`` is ``lipschitz``, ``Lambda_min`` is ``hessian_min_eig``, ``beta`` is
``stability``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum
from types import MappingProxyType
from typing import Any

import numpy as np
from scipy import stats

from .validation import check_array, check_option

ArrayLike = float | np.ndarray

__all__ = [
    "BoundValue",
    "Estimate",
    "Lemma43Form",
    "ensemble_risk_bound",
    "estimate_jensen_gap",
    "estimate_mean",
    "lam_needed",
    "lemma43_bound",
    "n_needed",
    "per_sample_jensen_gap",
    "sparsity",
    "stability_bound",
    "theorem44_bound",
    "theorem44_gap",
    "uniform_stability_bound",
]


# --------------------------------------------------------------------------------------------------
# Records
# --------------------------------------------------------------------------------------------------


def _jsonable(x: Any) -> Any:
    return x.tolist() if isinstance(x, np.ndarray) else x


# eq=False: the generated __eq__ would compare arrays with `==` and fail on truth value.
@dataclass(frozen=True, eq=False)
class BoundValue:
    """The value of a bound with its additive terms, and whether it is vacuous.

    Attributes
    ----------
    value : float or ndarray
        The bound; ``inf`` where vacuous.
    terms : mapping of str to float or ndarray
        Additive terms, each of the shape of ``value``; they sum to ``value`` where not vacuous.
    vacuous : bool or ndarray of bool
        True where a denominator is not positive.
    reason : str or ndarray of str
        ``""`` where not vacuous, otherwise which denominator failed and its value.
    """

    value: ArrayLike
    terms: Mapping[str, ArrayLike]
    vacuous: bool | np.ndarray
    reason: str | np.ndarray

    def __post_init__(self) -> None:
        # Frozen all the way down: a report must not change after it was produced.
        object.__setattr__(self, "terms", MappingProxyType(dict(self.terms)))
        for x in (self.value, self.vacuous, self.reason, *self.terms.values()):
            if isinstance(x, np.ndarray):
                x.flags.writeable = False

    def to_dict(self) -> dict[str, Any]:
        """Plain Python types for JSON (``inf`` stays a float: ``json.dumps`` writes ``Infinity``)."""
        return {
            "value": _jsonable(self.value),
            "terms": {k: _jsonable(v) for k, v in self.terms.items()},
            "vacuous": _jsonable(self.vacuous),
            "reason": _jsonable(self.reason),
        }


@dataclass(frozen=True)
class Estimate:
    """A measured quantity with its uncertainty: mean, standard error and a two-sided t-interval.

    Attributes
    ----------
    value : float
        Point estimate (the sample mean).
    stderr : float
        Standard error of ``value``.
    ci_low, ci_high : float
        Confidence interval at level ``confidence``.
    n : int
        Number of observations behind the estimate.
    confidence : float
        Level of the interval.
    """

    value: float
    stderr: float
    ci_low: float
    ci_high: float
    n: int
    confidence: float = 0.95

    def to_dict(self) -> dict[str, Any]:
        """Plain Python types for JSON."""
        return dataclasses.asdict(self)


class Lemma43Form(str, Enum):
    """Which constant of Bousquet & Elisseeff's Thm 11 Lemma 4.3 uses (theory.md section 4)."""

    PRINTED = "printed"  # 12 C n beta, as printed in B&E and in the paper
    CORRECTED = "corrected"  # 6 C n (beta_1 + beta), what the proof supports


# --------------------------------------------------------------------------------------------------
# Assembly
# --------------------------------------------------------------------------------------------------


def _rate(p: Any) -> np.ndarray:
    return check_array("dropout_rate p", p, low=0.0, high=1.0)


def _n_train(n: Any) -> np.ndarray:
    return check_array("n_train n", n, low=1.0, integer=True)


def _delta(delta: Any) -> np.ndarray:
    return check_array("delta", delta, low=0.0, high=1.0, open_low=True, open_high=True)


def _loss_range(loss_range: Any) -> np.ndarray:
    return check_array("loss_range C", loss_range, low=0.0, open_low=True)


def _nonnegative(name: str, value: Any) -> np.ndarray:
    return check_array(name, value, low=0.0)


def _assemble(
    scalar: bool,
    terms: dict[str, np.ndarray],
    vacuous: np.ndarray | None = None,
    reason: np.ndarray | None = None,
) -> BoundValue:
    """Broadcast the terms to one shape, sum them, and hand out scalars when the inputs were scalars."""
    shape = np.broadcast_shapes(*(np.shape(t) for t in terms.values()))
    terms = {k: np.broadcast_to(np.asarray(t, dtype=float), shape).copy() for k, t in terms.items()}
    vacuous = np.zeros(shape, dtype=bool) if vacuous is None else np.broadcast_to(vacuous, shape).copy()
    reason = np.full(shape, "") if reason is None else np.broadcast_to(reason, shape).copy()
    # Vacuous terms are already +inf, so the sum is +inf there too (never inf - inf = NaN).
    value = np.where(vacuous, np.inf, sum(terms.values()))
    if scalar:
        return BoundValue(
            value=float(value),
            terms={k: float(t) for k, t in terms.items()},
            vacuous=bool(vacuous),
            reason=str(reason),
        )
    return BoundValue(value=value, terms=terms, vacuous=vacuous, reason=reason)


def _is_scalar(*arrays: np.ndarray) -> bool:
    return all(a.ndim == 0 for a in arrays)


def _denominator(hessian_min_eig: np.ndarray, lam: np.ndarray, p: np.ndarray):
    """``D = Lambda_min + 2 lam s`` of Prop. 4.2 (1.0 where vacuous), the vacuous mask, and the reasons."""
    s = _sparsity(p)
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


# --------------------------------------------------------------------------------------------------
# Sparsity and stability
# --------------------------------------------------------------------------------------------------


def _sparsity(p: np.ndarray) -> np.ndarray:
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
    p_arr = _rate(p)
    s = _sparsity(p_arr)
    return float(s) if p_arr.ndim == 0 else s


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
    eta = _nonnegative("lipschitz eta", lipschitz)
    hmin = check_array("hessian_min_eig Lambda_min", hessian_min_eig)
    lam_a = _nonnegative("lam", lam)
    p_a = _rate(p)
    n_a = _n_train(n)
    denom, vacuous, reason = _denominator(hmin, lam_a, p_a)
    # Overflow (huge eta, tiny positive D) gives +inf, the right limit: uninformative, not vacuous.
    with np.errstate(over="ignore"):
        beta = np.where(vacuous, np.inf, 2.0 * eta**2 / (denom * n_a))
    return _assemble(_is_scalar(eta, hmin, lam_a, p_a, n_a), {"beta": beta}, vacuous, reason)


# --------------------------------------------------------------------------------------------------
# Generalisation bounds
# --------------------------------------------------------------------------------------------------


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
    c = _loss_range(loss_range)
    n_a = _n_train(n)
    d = _delta(delta)
    beta = _nonnegative("stability beta", stability)
    if form is Lemma43Form.CORRECTED:
        if stability_1 is None:
            raise ValueError("stability_1 (beta_1, the hypothesis stability) is required by form='corrected'")
        beta_1 = _nonnegative("stability_1 beta_1", stability_1)
        stability_term = 6.0 * c * n_a * (beta_1 + beta)
        scalar = _is_scalar(r, c, n_a, d, beta, beta_1)
    else:
        # Refuse rather than silently ignore a measurement the caller thought was used.
        if stability_1 is not None:
            raise ValueError("stability_1 is only used by form='corrected'; got form='printed'")
        stability_term = 12.0 * c * n_a * beta
        scalar = _is_scalar(r, c, n_a, d, beta)
    with np.errstate(over="ignore"):  # overflow is +inf, the right limit
        gap = np.sqrt((c**2 + stability_term) / (2.0 * n_a * d))
    return _assemble(scalar, {"r_hat": r, "gap": gap})


def _theorem44_inputs(loss_range, lipschitz, hessian_min_eig, lam, p, delta):
    """The validated inputs Theorem 4.4's gap and `n_needed` share."""
    return (_loss_range(loss_range), _nonnegative("lipschitz eta", lipschitz),
            check_array("hessian_min_eig Lambda_min", hessian_min_eig), _nonnegative("lam", lam), _rate(p),
            _delta(delta))


def _theorem44_gap(loss_range, lipschitz, hessian_min_eig, lam, p, n, delta):
    c, eta, hmin, lam_a, p_a, d = _theorem44_inputs(loss_range, lipschitz, hessian_min_eig, lam, p, delta)
    n_a = _n_train(n)
    denom, vacuous, reason = _denominator(hmin, lam_a, p_a)
    # Computed from the printed formula rather than via stability_bound, so n does not cancel in
    # floating point; the two agree (tested).
    with np.errstate(over="ignore"):  # overflow is +inf, the right limit
        gap = np.where(vacuous, np.inf, np.sqrt((c**2 + 24.0 * c * eta**2 / denom) / (2.0 * n_a * d)))
    return _is_scalar(c, eta, hmin, lam_a, p_a, n_a, d), gap, vacuous, reason


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
    return _assemble(scalar, {"gap": gap}, vacuous, reason)


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
    return _assemble(scalar and r.ndim == 0, {"r_hat": r, "gap": gap}, vacuous, reason)


# --------------------------------------------------------------------------------------------------
# What Theorem 4.4 would need
# --------------------------------------------------------------------------------------------------


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
    p_a = _rate(p)
    hmin_b, s = np.broadcast_arrays(hmin, _sparsity(p_a))
    out = np.zeros(hmin_b.shape)
    flat = hmin_b <= 0.0
    out[flat & (s == 0.0)] = np.inf
    ok = flat & (s > 0.0)
    out[ok] = -hmin_b[ok] / (2.0 * s[ok]) + 0.0  # + 0.0: no -0.0 at Lambda_min = 0
    return float(out) if _is_scalar(hmin, p_a) else out


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
    The worked example of theory.md (``C = eta = 1``, ``Lambda_min = 0``, ``lam = 1``, ``p = 0.5``,
    ``delta = 0.05``): ``D = 1.5``, ``(1 + 24 / 1.5) / (2 * 0.05) = 17 / 0.1``.

    >>> round(n_needed(1.0, 1.0, hessian_min_eig=0.0, lam=1.0, p=0.5, delta=0.05), 9)
    170.0
    >>> n_needed(1.0, 1.0, hessian_min_eig=0.0, lam=1.0, p=0.0, delta=0.05)  # D = 0: vacuous at any n
    inf
    """
    c, eta, hmin, lam_a, p_a, d = _theorem44_inputs(loss_range, lipschitz, hessian_min_eig, lam, p, delta)
    denom, vacuous, _ = _denominator(hmin, lam_a, p_a)
    with np.errstate(over="ignore"):  # overflow is +inf, the right limit
        out = np.where(vacuous, np.inf, (c**2 + 24.0 * c * eta**2 / denom) / (2.0 * d * c**2))
    return float(out) if _is_scalar(c, eta, hmin, lam_a, p_a, d) else out


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
    c = _loss_range(loss_range)
    n_a = _n_train(n)
    d = _delta(delta)
    beta = _nonnegative("stability beta", stability)
    # -log(delta) rather than log(1/delta): 1/delta can round to 1 for delta just below 1.
    with np.errstate(over="ignore"):  # overflow is +inf, the right limit
        concentration = (4.0 * n_a * beta + c) * np.sqrt(-np.log(d) / (2.0 * n_a))
    terms = {"r_hat": r, "two_beta": 2.0 * beta, "concentration": concentration}
    return _assemble(_is_scalar(r, c, n_a, d, beta), terms)


# --------------------------------------------------------------------------------------------------
# The ensemble (Theorem 4.5)
# --------------------------------------------------------------------------------------------------


def per_sample_jensen_gap(member_losses: np.ndarray, ensemble_loss: np.ndarray) -> np.ndarray:
    """Measured Jensen gap of Theorem 4.5, one value per sample.

    ``gap_i = (1/N) sum_r loss(o_r(x_i), y_i) - loss((1/N) sum_r o_r(x_i), y_i)``. For a loss convex
    in the averaged output (cross-entropy on averaged probabilities or logits) every ``gap_i >= 0``.
    Nothing is clamped: a negative entry is a finding (e.g. a clipped cross-entropy is not convex).

    Parameters
    ----------
    member_losses : ndarray, shape (N, n_samples)
        Loss of each ensemble member on each sample.
    ensemble_loss : ndarray, shape (n_samples,)
        Loss of the ensemble's averaged output on each sample.

    Returns
    -------
    ndarray, shape (n_samples,)

    Examples
    --------
    >>> member = -np.log(np.array([[0.2], [0.8]]))  # CE of two members, true-class probs 0.2 and 0.8
    >>> ensemble = -np.log(np.array([0.5]))         # CE of the averaged probability
    >>> per_sample_jensen_gap(member, ensemble).round(6)  # ln 0.5 - ln sqrt(0.2 * 0.8) = ln 1.25
    array([0.223144])
    """
    member = np.asarray(member_losses, dtype=float)
    ensemble = np.asarray(ensemble_loss, dtype=float)
    if member.ndim != 2 or ensemble.ndim != 1 or member.shape[1] != ensemble.shape[0] or member.size == 0:
        raise ValueError(
            "member_losses must have shape (N, n_samples) with N, n_samples >= 1 and ensemble_loss shape "
            f"(n_samples,); got member_losses {member.shape} and ensemble_loss {ensemble.shape}"
        )
    check_array("member_losses", member)
    check_array("ensemble_loss", ensemble)
    return member.mean(axis=0) - ensemble


def estimate_mean(values: np.ndarray, confidence: float = 0.95) -> Estimate:
    """Mean of independent observations with its standard error and Student-t interval.

    ``stderr = std(values, ddof=1) / sqrt(n)``; the interval is
    ``mean -/+ t_{(1 + confidence)/2, n - 1} * stderr``.

    Parameters
    ----------
    values : ndarray, shape (n,)
        At least two finite observations.
    confidence : float
        Level of the interval, in (0, 1).

    Returns
    -------
    Estimate

    Examples
    --------
    >>> e = estimate_mean(np.array([1.0, 2.0, 3.0, 4.0]))
    >>> print(f"{e.value} +/- {e.stderr:.4f}, 95% CI [{e.ci_low:.4f}, {e.ci_high:.4f}]")
    2.5 +/- 0.6455, 95% CI [0.4457, 4.5543]
    """
    x = check_array("values", values)
    conf = float(check_array("confidence", confidence, low=0.0, high=1.0, open_low=True, open_high=True))
    if x.ndim != 1 or x.size < 2:
        raise ValueError(
            f"values must be 1-D with at least 2 entries for a standard error, got shape {x.shape}"
        )
    n = x.size
    mean = float(x.mean())
    stderr = float(x.std(ddof=1) / np.sqrt(n))
    half = float(stats.t.ppf(0.5 + conf / 2.0, df=n - 1)) * stderr
    return Estimate(value=mean, stderr=stderr, ci_low=mean - half, ci_high=mean + half, n=n, confidence=conf)


def estimate_jensen_gap(
    member_losses: np.ndarray, ensemble_loss: np.ndarray, confidence: float = 0.95
) -> Estimate:
    """Mean Jensen gap of Theorem 4.5 over samples, with a t-interval.

    The mean over samples of :func:`per_sample_jensen_gap`, i.e. mean member risk minus ensemble
    risk on these samples, treating samples as independent.

    Parameters
    ----------
    member_losses : ndarray, shape (N, n_samples)
    ensemble_loss : ndarray, shape (n_samples,)
        ``n_samples >= 2``.
    confidence : float
        Level of the interval, in (0, 1).

    Returns
    -------
    Estimate
        ``n`` is ``n_samples``.

    Examples
    --------
    >>> member = np.array([[2.0, 4.0, 6.0, 8.0], [0.0, 0.0, 0.0, 0.0]])
    >>> e = estimate_jensen_gap(member, ensemble_loss=np.zeros(4))  # per-sample gaps 1, 2, 3, 4
    >>> e.value, e.n
    (2.5, 4)
    """
    return estimate_mean(per_sample_jensen_gap(member_losses, ensemble_loss), confidence)


def ensemble_risk_bound(
    member_train_risk: ArrayLike,
    loss_range: ArrayLike,
    lipschitz: ArrayLike,
    hessian_min_eig: ArrayLike,
    lam: ArrayLike,
    p: ArrayLike,
    n: ArrayLike,
    delta: ArrayLike,
) -> BoundValue:
    """Bound on the test-time ensemble's risk: Theorem 4.5 chained with Theorem 4.4.

    The chain, and where it is only as good as its links:

    1. Theorem 4.5 (Jensen). For a loss convex in the model output, the ensemble's loss on an example
       is at most the mean of its members' losses. For the ensemble over the mask distribution this
       holds in expectation over instances; for a finite ensemble of ``N`` members it holds on every
       example (so also for the risks): ``R(ensemble) <= mean_r R(member_r)``. Convexity matters:
       cross-entropy is convex in averaged probabilities and in averaged logits, but a cross-entropy
       clipped at ``C`` is not, so with a clipped loss this step is not guaranteed (measure it with
       :func:`per_sample_jensen_gap`).
    2. Theorem 4.4 bounds the member risk by its training risk plus the gap, with probability
       ``1 - delta``, so we apply it with ``R_hat`` = the mean member training risk. Strictly, Thm 4.4
       is about the output of the sparsity-regularised surrogate (Eqs. 9-11) and a loss in
       ``[0, C]``; reading it as a bound on the mask-averaged member loss is the paper's argument,
       not a separate proof, and a finite-``N`` estimate of the member training risk adds sampling
       error that the bound does not account for.

    Hence ``R(ensemble) <= member_train_risk + theorem44_gap(...)``; the value equals
    :func:`theorem44_bound` with ``r_hat=member_train_risk``.

    Parameters
    ----------
    member_train_risk : float or ndarray
        Mean over members of the training risk (used as ``r_hat``).
    loss_range, lipschitz, hessian_min_eig, lam, p, n, delta
        As in :func:`theorem44_bound`.

    Returns
    -------
    BoundValue
        Terms ``{"r_hat", "gap"}``, ``r_hat`` being ``member_train_risk``.

    Examples
    --------
    >>> b = ensemble_risk_bound(member_train_risk=0.3, loss_range=1.0, lipschitz=1.0,
    ...                         hessian_min_eig=0.0, lam=1.0, p=0.5, n=3668, delta=0.05)
    >>> round(b.value, 4)
    0.5153
    """
    return theorem44_bound(member_train_risk, loss_range, lipschitz, hessian_min_eig, lam, p, n, delta)
