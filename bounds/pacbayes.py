"""The PAC-Bayes dropout certificate as vectorised pure functions (theory.md section 6).

The toolkit's own result, labelled so next to the paper's: LoRA Dropout is itself a distribution over
sub-adapters, so a PAC-Bayes bound (McAllester 1999; McAllester 2013, "A PAC-Bayesian tutorial with a
dropout bound") certifies its stochastic (Gibbs) predictor directly. The pieces:

- :func:`bernoulli_kl` and its upper inverse :func:`kl_inv_upper` (bisection, rounded upward);
- :func:`dropout_kl`, ``KL(Q || P)`` of the posterior (dropout masks times a Gaussian of std
  ``sigma`` around the trained factors) against the prior (the same around ``theta_P``);
- :func:`pac_bayes_kl_bound`, the Seeger (2002) / Maurer (2004) PAC-Bayes-kl bound;
- :func:`monte_carlo_upper`, the Chernoff upper value of the Monte Carlo estimate of the empirical
  Gibbs risk (Langford & Caruana 2001);
- :func:`grid_delta`, the union bound over a grid of ``posterior_std`` fixed in advance;
- :func:`certificate`, the composition, with every term in a :class:`PacBayesCertificate`;
- :func:`ensemble_transfer`, from a certificate on the Gibbs member's *linear* loss to the
  test-time ensemble (linear loss and 0-1 error).

Every function takes Python floats or numpy arrays and broadcasts them like numpy. Scalars in give
scalars out (Python ``float``); any array in gives arrays out. A bad argument raises ``ValueError``
naming it and its (first bad) value. Nothing here certifies the deterministic (unmasked, noiseless)
model. Names follow design.md section 2: ``p`` is ``dropout_rate``, ``sigma`` is ``posterior_std``,
``k`` is ``posterior_draws``; ``n_bound`` is ``n_b``, the number of examples the bound is computed on
(all ``n`` for a data-free prior, ``(1 - alpha) n`` for a data-dependent one).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from enum import Enum
from typing import Any

import numpy as np
from scipy.special import rel_entr

from .validation import check_array, check_option

#: A certificate within this of 1 is read as 1 (vacuous): the upper kl inverse reaches 1 only in the limit,
#: so a bisection where nothing is certified returns 1 - O(1e-12) (measured: 0.9999999999974), not 1.
VACUOUS_TOL = 1e-6


def is_vacuous(certificate: Any) -> Any:
    """Whether a certificate on a [0, 1] loss bounds nothing: ``certificate >= 1 - VACUOUS_TOL``.

    >>> is_vacuous(0.9999999999974), is_vacuous(0.3)
    (True, False)
    """
    out = np.asarray(certificate, dtype=float) >= 1.0 - VACUOUS_TOL
    return bool(out) if out.ndim == 0 else out

ArrayLike = float | np.ndarray

__all__ = [
    "DEFAULT_TOL",
    "DropoutKL",
    "EnsembleCertificate",
    "GibbsLoss",
    "PacBayesCertificate",
    "bernoulli_kl",
    "certificate",
    "dropout_kl",
    "ensemble_transfer",
    "grid_delta",
    "kl_inv_upper",
    "monte_carlo_upper",
    "pac_bayes_kl_bound",
    "pac_bayes_kl_rhs",
]

DEFAULT_TOL = 1e-12
"""Default width of the final bisection bracket of :func:`kl_inv_upper` (40 halvings)."""


# --------------------------------------------------------------------------------------------------
# Validation and records
# --------------------------------------------------------------------------------------------------


def _unit(name: str, value: Any) -> np.ndarray:
    return check_array(name, value, low=0.0, high=1.0)


def _probability(name: str, value: Any) -> np.ndarray:
    return check_array(name, value, low=0.0, high=1.0, open_low=True, open_high=True)


def _count(name: str, value: Any) -> np.ndarray:
    return check_array(name, value, low=1.0, integer=True)


def _out(x: np.ndarray, scalar: bool) -> ArrayLike:
    """A Python float when every input was a scalar, otherwise a (new) float array."""
    return float(x) if scalar else np.array(x, dtype=float)


def _is_scalar(*arrays: np.ndarray) -> bool:
    return all(a.ndim == 0 for a in arrays)


def _jsonable(x: Any) -> Any:
    if isinstance(x, np.ndarray):
        return x.tolist()
    return x.value if isinstance(x, Enum) else x


class _Record:
    """Frozen record whose array fields are broadcast to one shape and made read-only."""

    def _freeze(self, scalar: bool) -> None:
        names = [f.name for f in fields(self) if isinstance(getattr(self, f.name), (float, int, np.ndarray))]
        values = [np.asarray(getattr(self, n), dtype=float) for n in names]
        shape = np.broadcast_shapes(*(v.shape for v in values))
        for name, v in zip(names, values, strict=True):
            if scalar:
                object.__setattr__(self, name, float(v))
            else:
                arr = np.broadcast_to(v, shape).copy()
                arr.flags.writeable = False
                object.__setattr__(self, name, arr)

    def to_dict(self) -> dict[str, Any]:
        """Plain Python types for JSON (``inf`` stays a float: ``json.dumps`` writes ``Infinity``)."""
        return {f.name: _jsonable(getattr(self, f.name)) for f in fields(self)}


class GibbsLoss(str, Enum):
    """Which ``[0, 1]``-valued loss of the Gibbs member a certificate is about.

    The PAC-Bayes-kl bound and the Monte Carlo step hold for any loss with values in ``[0, 1]``
    (Maurer 2004), so the arithmetic is the same; the label says what the number certifies and lets
    :func:`ensemble_transfer` refuse a certificate that is not about the linear loss.
    """

    ZERO_ONE = "zero_one"  # 1[argmax != y]
    LINEAR = "linear"  # 1 - prob_y


# eq=False: the generated __eq__ would compare arrays with `==` and fail on truth value.
@dataclass(frozen=True, eq=False)
class DropoutKL(_Record):
    """``KL(Q || P)`` of the dropout posterior against the prior, with its two terms.

    Attributes
    ----------
    factor_term : float or ndarray
        ``(1 - p) * (||A - A_P||^2 + ||B - B_P||^2) / (2 sigma^2)``.
    head_term : float or ndarray
        ``||head - head_P||^2 / (2 sigma^2)``.
    total : float or ndarray
        ``factor_term + head_term``, the upper bound on ``KL(Q || P)``.
    """

    factor_term: ArrayLike
    head_term: ArrayLike
    total: ArrayLike


@dataclass(frozen=True, eq=False)
class PacBayesCertificate(_Record):
    """Every term of the PAC-Bayes dropout certificate (:func:`certificate`).

    With probability at least ``failure_probability``'s complement, ``1 - (delta + delta_prime)``,
    over the bound examples and the Monte Carlo draws, simultaneously for every grid point:
    ``R_Q <= value``, where ``R_Q`` is the expected ``loss`` of the Gibbs member drawn from ``Q``.

    Attributes
    ----------
    value : float or ndarray
        The certificate, ``kl_inv_upper(gibbs_upper, rhs)``.
    gibbs_estimate : float or ndarray
        Monte Carlo estimate of the empirical Gibbs risk ``R_hat_Q`` (mean of ``n_b k`` losses).
    gibbs_upper : float or ndarray
        Its upper value ``kl_inv_upper(gibbs_estimate, mc_rhs)``.
    mc_rhs : float or ndarray
        ``ln(1 / delta_prime_per_point) / (n_b k)``.
    kl : float or ndarray
        ``KL(Q || P)`` (an upper bound on it is enough).
    rhs : float or ndarray
        ``(kl + ln(2 sqrt(n_b) / delta_per_point)) / n_b``.
    n_bound, posterior_draws : float or ndarray
        ``n_b`` and ``k``.
    delta, delta_prime : float or ndarray
        The failure probabilities of the PAC-Bayes step and of the Monte Carlo step (whole grid).
    grid_size : float or ndarray
        ``|grid|``, the number of posteriors (``sigma`` values) fixed in advance.
    delta_per_point, delta_prime_per_point : float or ndarray
        ``delta / |grid|`` and ``delta_prime / |grid|``.
    failure_probability : float or ndarray
        ``delta + delta_prime``.
    loss : GibbsLoss
        Which loss of the Gibbs member is certified.
    """

    value: ArrayLike
    gibbs_estimate: ArrayLike
    gibbs_upper: ArrayLike
    mc_rhs: ArrayLike
    kl: ArrayLike
    rhs: ArrayLike
    n_bound: ArrayLike
    posterior_draws: ArrayLike
    delta: ArrayLike
    delta_prime: ArrayLike
    grid_size: ArrayLike
    delta_per_point: ArrayLike
    delta_prime_per_point: ArrayLike
    failure_probability: ArrayLike
    loss: GibbsLoss


@dataclass(frozen=True, eq=False)
class EnsembleCertificate(_Record):
    """What a certificate on the Gibbs member's linear loss says about the ensemble (:func:`ensemble_transfer`).

    Attributes
    ----------
    linear_loss : float or ndarray
        Bound on the ensemble's expected linear loss ``E[1 - o_y(x)]`` (equal to the input).
    zero_one_error : float or ndarray
        Bound on the ensemble's expected 0-1 error, ``min(1, 2 * linear_loss)``.
    """

    linear_loss: ArrayLike
    zero_one_error: ArrayLike


# --------------------------------------------------------------------------------------------------
# Bernoulli KL and its upper inverse
# --------------------------------------------------------------------------------------------------


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
    q_a = _unit("q", q)
    p_a = _unit("p", p)
    return _out(_kl(q_a, p_a), _is_scalar(q_a, p_a))


def _kl_inv_upper(q: np.ndarray, c: np.ndarray, tol: float) -> np.ndarray:
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
    q_a = _unit("q", q)
    c_a = check_array("c", c, low=0.0, allow_inf=True)
    return _out(_kl_inv_upper(q_a, c_a, tol_f), _is_scalar(q_a, c_a))


# --------------------------------------------------------------------------------------------------
# The KL of the dropout posterior
# --------------------------------------------------------------------------------------------------


def dropout_kl(
    p: ArrayLike, factor_sq_dist: ArrayLike, head_sq_dist: ArrayLike, posterior_std: ArrayLike
) -> DropoutKL:
    """Upper bound on ``KL(Q || P)`` of the LoRA Dropout posterior (theory.md section 6; toolkit's own).

    Posterior ``Q``: draw LoRA Dropout masks (columns of ``A``, rows of ``B``, each kept with
    probability ``1 - p``), draw ``eps ~ N(0, sigma^2 I)``, use the member with factors ``theta + eps``
    under the masks; the head is never masked. Prior ``P``: the same around ``theta_P``. Given the
    masks, a dropped coordinate is 0 under both, and a kept one is ``N(theta_i, sigma^2)`` against
    ``N(theta_P,i, sigma^2)``; since ``P`` and ``Q`` share the mask distribution, joint convexity of KL
    gives the expected conditional KL, and every entry of ``A`` and ``B`` is kept with probability
    ``1 - p``:

        KL(Q || P) <= (1 - p) (||A - A_P||^2 + ||B - B_P||^2) / (2 sigma^2) + ||head - head_P||^2 / (2 sigma^2)

    (McAllester 2013, "A PAC-Bayesian tutorial with a dropout bound", for the dropout discount).
    At ``p = 0`` this is the plain Gaussian KL ``||theta - theta_P||^2 / (2 sigma^2)``; as ``p -> 1``
    only the head term remains. Dropout discounts the adapter's KL by ``1 - p``.

    Parameters
    ----------
    p : float or ndarray
        ``dropout_rate`` in [0, 1].
    factor_sq_dist : float or ndarray
        ``>= 0``: ``||A - A_P||^2 + ||B - B_P||^2`` (squared Frobenius norms), summed over the adapted
        modules.
    head_sq_dist : float or ndarray
        ``>= 0``: ``||head - head_P||^2`` over the trained head's parameters (0 if none is trained).
    posterior_std : float or ndarray
        ``sigma > 0``, the std of the Gaussian part of posterior and prior.

    Returns
    -------
    DropoutKL
        ``factor_term``, ``head_term`` and ``total = factor_term + head_term``.

    Examples
    --------
    >>> k = dropout_kl(p=0.5, factor_sq_dist=2.0, head_sq_dist=0.5, posterior_std=0.5)
    >>> k.factor_term, k.head_term, k.total  # 0.5 * 2 / 0.5, 0.5 / 0.5
    (2.0, 1.0, 3.0)
    >>> dropout_kl(np.array([0.0, 1.0]), 2.0, 0.5, 0.5).total
    array([5., 1.])
    """
    p_a = _unit("dropout_rate p", p)
    f = check_array("factor_sq_dist", factor_sq_dist, low=0.0)
    h = check_array("head_sq_dist", head_sq_dist, low=0.0)
    sigma = check_array("posterior_std sigma", posterior_std, low=0.0, open_low=True)
    two_var = 2.0 * sigma**2
    with np.errstate(over="ignore", divide="ignore"):  # a tiny sigma gives +inf, the right limit
        factor_term = (1.0 - p_a) * f / two_var
        head_term = h / two_var
    record = DropoutKL(factor_term=factor_term, head_term=head_term, total=factor_term + head_term)
    record._freeze(_is_scalar(p_a, f, h, sigma))
    return record


# --------------------------------------------------------------------------------------------------
# The bounds
# --------------------------------------------------------------------------------------------------


def _rhs(kl: np.ndarray, n: np.ndarray, delta: np.ndarray) -> np.ndarray:
    # ln(2 sqrt(n) / delta) without forming 2 sqrt(n) / delta (no overflow for tiny delta).
    return (kl + math.log(2.0) + 0.5 * np.log(n) - np.log(delta)) / n


def pac_bayes_kl_rhs(kl: ArrayLike, n: ArrayLike, delta: ArrayLike) -> ArrayLike:
    """Right-hand side of the PAC-Bayes-kl bound, ``(KL(Q || P) + ln(2 sqrt(n) / delta)) / n``.

    See :func:`pac_bayes_kl_bound`. Falls strictly in ``n`` for every ``kl >= 0`` and ``delta < 1``
    (its derivative in ``n`` has the sign of ``1/2 - ln 2 - kl - ln(sqrt(n)) + ln(delta) < 0``).

    Parameters
    ----------
    kl : float or ndarray
        ``KL(Q || P) >= 0`` (``+inf`` allowed).
    n : int or ndarray
        ``n >= 1``, the number of examples the empirical risk is computed on.
    delta : float or ndarray
        In (0, 1).

    Returns
    -------
    float or ndarray

    Examples
    --------
    >>> print(f"{pac_bayes_kl_rhs(kl=5.0, n=100, delta=0.05):.9f}")  # (5 + ln 400) / 100
    0.109914645
    """
    kl_a = check_array("kl", kl, low=0.0, allow_inf=True)
    n_a = _count("n", n)
    d = _probability("delta", delta)
    return _out(_rhs(kl_a, n_a, d), _is_scalar(kl_a, n_a, d))


def pac_bayes_kl_bound(
    empirical_risk: ArrayLike, kl: ArrayLike, n: ArrayLike, delta: ArrayLike, *, tol: float = DEFAULT_TOL
) -> ArrayLike:
    """PAC-Bayes-kl bound on the risk of the Gibbs predictor (Seeger 2002; Maurer 2004).

    For a prior ``P`` chosen before seeing the ``n`` examples and a loss with values in ``[0, 1]``,
    with probability at least ``1 - delta`` over the examples, simultaneously for every posterior
    ``Q``:

        kl(R_hat_Q || R_Q) <= (KL(Q || P) + ln(2 sqrt(n) / delta)) / n,
        so  R_Q <= kl_inv_upper(R_hat_Q, (KL(Q || P) + ln(2 sqrt(n) / delta)) / n).

    ``R_Q = E_{h ~ Q} E_{(x, y)} loss(h, x, y)`` is the risk of the Gibbs member (a fresh draw from
    ``Q`` per prediction), ``R_hat_Q`` its empirical risk on the ``n`` examples. Seeger (2002) proved
    it for the 0-1 loss (with ``ln((n + 1) / delta)``); Maurer (2004) extended it to any loss with
    values in ``[0, 1]`` (so it covers the linear loss ``1 - prob_y`` as well) and sharpened the
    constant: ``E exp(n kl(R_hat || R)) <= xi(n) <= 2 sqrt(n)``, which holds for every ``n >= 1``
    (tested from the exact ``xi(n)``). McAllester (1999) is the original PAC-Bayes theorem; Perez-Ortiz
    et al. (2021) use this form with data-dependent priors, where ``n`` is the number of examples NOT
    used to build the prior (``n_b`` in theory.md).

    Parameters
    ----------
    empirical_risk : float or ndarray
        ``R_hat_Q`` in [0, 1] (use an upper value of it, e.g. :func:`monte_carlo_upper`, when it is
        estimated: the bound is non-decreasing in it).
    kl : float or ndarray
        ``KL(Q || P) >= 0`` or an upper bound on it, e.g. ``dropout_kl(...).total``.
    n : int or ndarray
        ``n >= 1``.
    delta : float or ndarray
        In (0, 1); per grid point if a grid of posteriors is searched (:func:`grid_delta`).
    tol : float
        Bisection tolerance of :func:`kl_inv_upper`; the result is at most ``tol`` above the exact one.

    Returns
    -------
    float or ndarray
        The bound on ``R_Q``, in ``[empirical_risk, 1]``.

    Examples
    --------
    >>> print(f"{pac_bayes_kl_bound(0.0, kl=5.0, n=100, delta=0.05):.9f}")  # 1 - exp(-(5 + ln 400)/100)
    0.104089398
    """
    q = _unit("empirical_risk", empirical_risk)
    kl_a = check_array("kl", kl, low=0.0, allow_inf=True)
    n_a = _count("n", n)
    d = _probability("delta", delta)
    tol_f = float(check_array("tol", tol, low=0.0, high=1.0, open_low=True, open_high=True))
    return _out(_kl_inv_upper(q, _rhs(kl_a, n_a, d), tol_f), _is_scalar(q, kl_a, n_a, d))


def _mc_rhs(n_draws_total: np.ndarray, delta_prime: np.ndarray) -> np.ndarray:
    return -np.log(delta_prime) / n_draws_total


def monte_carlo_upper(
    estimate: ArrayLike, n_draws_total: ArrayLike, delta_prime: ArrayLike, *, tol: float = DEFAULT_TOL
) -> ArrayLike:
    """Upper value of the Monte Carlo estimate of the empirical Gibbs risk (Langford & Caruana 2001).

    ``R_hat_Q = (1/n_b) sum_i E_{h ~ Q} loss(h, x_i, y_i)`` is an expectation over ``Q``; estimate it
    with ``k`` independent posterior draws per example (fresh masks and fresh ``eps`` per example).
    Given the data, the ``m = n_b k`` losses are independent, in ``[0, 1]``, and their means average to
    ``R_hat_Q`` (they need not be identically distributed: the Chernoff bound on their mean holds by
    the same convexity argument). Hence, with probability at least ``1 - delta'`` over the draws:

        R_hat_Q <= kl_inv_upper(estimate, ln(1 / delta') / m).

    Langford & Caruana (2001, "(Not) bounding the true error") use the binomial-tail inversion for
    the 0-1 loss; this is its Chernoff relaxation, valid for any ``[0, 1]``-valued loss, as in
    Perez-Ortiz et al. (2021, "Tighter risk certificates for neural networks"). Feed the result to
    :func:`pac_bayes_kl_bound`; the failure probabilities add up (``delta + delta'``).

    Parameters
    ----------
    estimate : float or ndarray
        The Monte Carlo mean of the ``m`` losses, in [0, 1].
    n_draws_total : int or ndarray
        ``m = n_b k >= 1``, the number of independent losses averaged.
    delta_prime : float or ndarray
        ``delta'`` in (0, 1).
    tol : float
        Bisection tolerance of :func:`kl_inv_upper`.

    Returns
    -------
    float or ndarray
        In ``[estimate, 1]``.

    Examples
    --------
    >>> print(f"{monte_carlo_upper(0.0, n_draws_total=1000, delta_prime=0.01):.9f}")  # 1 - 0.01**(1/1000)
    0.004594583
    """
    q = _unit("estimate", estimate)
    m = _count("n_draws_total", n_draws_total)
    dp = _probability("delta_prime", delta_prime)
    tol_f = float(check_array("tol", tol, low=0.0, high=1.0, open_low=True, open_high=True))
    return _out(_kl_inv_upper(q, _mc_rhs(m, dp), tol_f), _is_scalar(q, m, dp))


def grid_delta(delta: ArrayLike, grid_size: ArrayLike) -> ArrayLike:
    """Failure probability per grid point of a union bound, ``delta / |grid|``.

    A grid of ``|grid|`` posteriors (e.g. ``posterior_std`` values) fixed before seeing the bound
    examples: if each bound holds with probability ``1 - delta / |grid|``, all hold together with
    probability ``1 - delta`` (union bound), so the smallest certificate over the grid may be reported.

    Parameters
    ----------
    delta : float or ndarray
        In (0, 1).
    grid_size : int or ndarray
        ``|grid| >= 1``.

    Returns
    -------
    float or ndarray

    Examples
    --------
    >>> grid_delta(0.05, 5)
    0.01
    """
    d = _probability("delta", delta)
    g = _count("grid_size", grid_size)
    return _out(d / g, _is_scalar(d, g))


def certificate(
    gibbs_estimate: ArrayLike,
    kl: ArrayLike | DropoutKL,
    n_bound: ArrayLike,
    posterior_draws: ArrayLike,
    delta: ArrayLike,
    delta_prime: ArrayLike,
    grid_size: ArrayLike = 1,
    *,
    loss: GibbsLoss | str = GibbsLoss.ZERO_ONE,
    tol: float = DEFAULT_TOL,
) -> PacBayesCertificate:
    """The PAC-Bayes dropout certificate (theory.md section 6; toolkit's own), with every term.

    For each of ``|grid|`` posteriors fixed in advance (e.g. one per ``posterior_std``):

    1. Monte Carlo (:func:`monte_carlo_upper`, Langford & Caruana 2001): with ``m = n_b k`` losses,
       ``gibbs_upper = kl_inv_upper(gibbs_estimate, ln(|grid| / delta') / m) >= R_hat_Q`` with
       probability ``1 - delta' / |grid|``.
    2. PAC-Bayes-kl (:func:`pac_bayes_kl_bound`, Seeger 2002; Maurer 2004):
       ``value = kl_inv_upper(gibbs_upper, (KL + ln(2 sqrt(n_b) |grid| / delta)) / n_b) >= R_Q``
       with probability ``1 - delta / |grid|``; ``kl_inv_upper`` is non-decreasing in its first
       argument, so step 1's upper value may replace ``R_hat_Q``.

    Union bound over the ``2 |grid|`` events: with probability at least ``1 - (delta + delta')`` over
    the bound examples and the posterior draws, every grid point's certificate holds, so their minimum
    may be reported. Both ``delta`` and ``delta'`` are split over the grid: each grid point has its own
    posterior and hence its own Monte Carlo estimate. Pass ``grid_size=1`` for a single posterior.
    Vector inputs (e.g. one entry per grid point) broadcast.

    Parameters
    ----------
    gibbs_estimate : float or ndarray
        In [0, 1]: mean ``loss`` of the ``n_b k`` posterior draws on the bound examples.
    kl : float, ndarray or DropoutKL
        ``KL(Q || P) >= 0`` or an upper bound on it; a :class:`DropoutKL` contributes its ``total``.
    n_bound : int or ndarray
        ``n_b >= 1``: the examples the bound is computed on (not those the prior was trained on).
    posterior_draws : int or ndarray
        ``k >= 1``: independent posterior draws per example.
    delta : float or ndarray
        In (0, 1): failure probability of the PAC-Bayes step, for the whole grid.
    delta_prime : float or ndarray
        In (0, 1): failure probability of the Monte Carlo step, for the whole grid.
    grid_size : int or ndarray
        ``|grid| >= 1``.
    loss : GibbsLoss or str
        ``"zero_one"`` (default) or ``"linear"``: which ``[0, 1]``-valued loss ``gibbs_estimate``
        averages. Only a label (the arithmetic is the same); :func:`ensemble_transfer` requires
        ``"linear"``.
    tol : float
        Bisection tolerance of each :func:`kl_inv_upper`; the value is never below the exact one.

    Returns
    -------
    PacBayesCertificate

    Examples
    --------
    >>> c = certificate(gibbs_estimate=0.2, kl=50.0, n_bound=2000, posterior_draws=4, delta=0.025,
    ...                 delta_prime=0.025, grid_size=5)
    >>> print(f"{c.gibbs_estimate} <= {c.gibbs_upper:.4f} -> {c.value:.4f} (fails w.p. {c.failure_probability})")
    0.2 <= 0.2148 -> 0.3252 (fails w.p. 0.05)
    """
    loss_label = check_option(GibbsLoss, "loss", loss)
    q = _unit("gibbs_estimate", gibbs_estimate)
    kl_a = check_array("kl", kl.total if isinstance(kl, DropoutKL) else kl, low=0.0, allow_inf=True)
    n_b = _count("n_bound", n_bound)
    k = _count("posterior_draws", posterior_draws)
    d = _probability("delta", delta)
    dp = _probability("delta_prime", delta_prime)
    g = _count("grid_size", grid_size)
    tol_f = float(check_array("tol", tol, low=0.0, high=1.0, open_low=True, open_high=True))

    d_point, dp_point = d / g, dp / g
    mc_rhs = _mc_rhs(n_b * k, dp_point)
    gibbs_upper = _kl_inv_upper(q, mc_rhs, tol_f)
    rhs = _rhs(kl_a, n_b, d_point)
    value = _kl_inv_upper(gibbs_upper, rhs, tol_f)
    record = PacBayesCertificate(
        value=value,
        gibbs_estimate=q,
        gibbs_upper=gibbs_upper,
        mc_rhs=mc_rhs,
        kl=kl_a,
        rhs=rhs,
        n_bound=n_b,
        posterior_draws=k,
        delta=d,
        delta_prime=dp,
        grid_size=g,
        delta_per_point=d_point,
        delta_prime_per_point=dp_point,
        failure_probability=d + dp,
        loss=loss_label,
    )
    record._freeze(_is_scalar(q, kl_a, n_b, k, d, dp, g))
    return record


# --------------------------------------------------------------------------------------------------
# The ensemble
# --------------------------------------------------------------------------------------------------


def ensemble_transfer(gibbs_linear_certificate: ArrayLike | PacBayesCertificate) -> EnsembleCertificate:
    """From a certificate on the Gibbs member's LINEAR loss to the test-time ensemble (theory.md sec. 6).

    Let ``o(x) = (1/N) sum_r prob(x; h_r)`` be the probability-averaging ensemble (Eq. 8) of ``N >= 1``
    members ``h_r`` drawn independently from the certified posterior ``Q`` (masks AND Gaussian
    ``eps`` of the certified ``posterior_std``), and let ``c`` bound the Gibbs member's linear risk,
    ``E_{h ~ Q} E_{(x, y)} [1 - prob_y(x; h)] <= c``. Then, in expectation over the draw of the
    members and the data:

    - Linear loss. ``1 - o_y = (1/N) sum_r (1 - prob_y(h_r))`` and each ``h_r ~ Q``, so the ensemble's
      expected linear loss EQUALS the Gibbs member's: ``c`` bounds it too, for every ``N``.
    - 0-1 error. If the ensemble's argmax is wrong then ``o_y <= 1/2`` (a class with ``o_y > 1/2``
      is the unique argmax), i.e. ``1[wrong] <= 2 (1 - o_y)``; taking expectations, the ensemble's
      0-1 error is at most ``min(1, 2c)``.

    The input must be a certificate on the LINEAR loss ``1 - prob_y`` of the Gibbs member: the
    PAC-Bayes-kl bound and the Monte Carlo step hold for any loss with values in ``[0, 1]`` (Maurer
    2004), so run :func:`certificate` with ``loss="linear"`` on the per-draw values ``1 - prob_y``.
    A certificate on the Gibbs member's 0-1 error does NOT transfer: ``E[1 - prob_y]`` is not the 0-1
    error and neither bounds the other in general. Nothing here holds for one fixed realised ensemble
    (only in expectation over its draw), for an ensemble of noiseless (masks-only) members, or for
    the deterministic unmasked model.

    Parameters
    ----------
    gibbs_linear_certificate : float, ndarray or PacBayesCertificate
        ``c`` in [0, 1]; a :class:`PacBayesCertificate` must have ``loss == "linear"`` and contributes
        its ``value``.

    Returns
    -------
    EnsembleCertificate
        ``linear_loss = c`` and ``zero_one_error = min(1, 2c)``.

    Examples
    --------
    >>> e = ensemble_transfer(0.3)
    >>> e.linear_loss, e.zero_one_error
    (0.3, 0.6)
    >>> ensemble_transfer(np.array([0.1, 0.7])).zero_one_error
    array([0.2, 1. ])
    """
    if isinstance(gibbs_linear_certificate, PacBayesCertificate):
        if gibbs_linear_certificate.loss is not GibbsLoss.LINEAR:
            raise ValueError(
                "gibbs_linear_certificate must certify the linear loss 1 - prob_y, got a certificate with "
                f"loss={gibbs_linear_certificate.loss.value!r}"
            )
        gibbs_linear_certificate = gibbs_linear_certificate.value
    c = _unit("gibbs_linear_certificate", gibbs_linear_certificate)
    record = EnsembleCertificate(linear_loss=c, zero_one_error=np.minimum(1.0, 2.0 * c))
    record._freeze(_is_scalar(c))
    return record
