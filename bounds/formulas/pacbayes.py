"""The PAC-Bayes dropout certificate as vectorised pure functions (docs/certificate.md).

The toolkit's own result, labelled so next to the paper's: LoRA Dropout is itself a distribution over
sub-adapters, so a PAC-Bayes bound (McAllester 1999; McAllester 2013, "A PAC-Bayesian tutorial with a
dropout bound") certifies its stochastic (Gibbs) predictor directly. The pieces:

- :func:`bernoulli_kl` and its upper inverse :func:`kl_inv_upper` (bisection, rounded upward;
  `bounds.formulas.kl`);
- :func:`dropout_kl`, ``KL(Q || P)`` of the posterior (dropout masks times a Gaussian of std
  ``sigma`` around the trained factors) against the prior (the same around ``theta_P``;
  `bounds.formulas.dropout_kl`);
- :func:`pac_bayes_kl_bound`, the Seeger (2002) / Maurer (2004) PAC-Bayes-kl bound;
- :func:`monte_carlo_upper`, the Chernoff upper value of the Monte Carlo estimate of the empirical
  Gibbs risk (Langford & Caruana 2001);
- :func:`grid_delta`, the union bound over a grid of ``posterior_std`` fixed in advance;
- :func:`certificate`, the composition, with every term in a :class:`PacBayesCertificate`;
- :func:`ensemble_transfer`, from a certificate on the Gibbs member's *linear* loss to the
  test-time ensemble (linear loss and 0-1 error; `bounds.formulas.ensemble`).

This module holds the bound steps and the certificate; the other pieces are in the modules named.

Every function takes Python floats or numpy arrays and broadcasts them like numpy. Scalars in give
scalars out (Python ``float``); any array in gives arrays out. A bad argument raises ``ValueError``
naming it and its (first bad) value. Nothing here certifies the deterministic (unmasked, noiseless)
model. Names follow docs/method.md, "Notation": ``p`` is ``dropout_rate``, ``sigma`` is ``posterior_std``,
``k`` is ``posterior_draws``; ``n_bound`` is ``n_b``, the number of examples the bound is computed on
(all ``n`` for a data-free prior, ``(1 - alpha) n`` for a data-dependent one).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import Enum
from typing import Any

import numpy as np

from ..validation import check_array, check_option
from .arrays import ArrayLike, as_output, count, is_scalar, probability, unit
from .dropout_kl import DropoutKL
from .kl import DEFAULT_TOL, kl_inv_upper_array
from .records import Record

__all__ = [
    "VACUOUS_TOL",
    "GibbsLoss",
    "PacBayesCertificate",
    "certificate",
    "grid_delta",
    "is_vacuous",
    "monte_carlo_upper",
    "pac_bayes_kl_bound",
    "pac_bayes_kl_rhs",
]

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


class GibbsLoss(str, Enum):
    """Which ``[0, 1]``-valued loss of the Gibbs member a certificate is about.

    The PAC-Bayes-kl bound and the Monte Carlo step hold for any loss with values in ``[0, 1]``
    (Maurer 2004), so the arithmetic is the same; the label says what the number certifies and lets
    :func:`ensemble_transfer` refuse a certificate that is not about the linear loss.
    """

    ZERO_ONE = "zero_one"  # 1[argmax != y]
    LINEAR = "linear"  # 1 - prob_y


@dataclass(frozen=True, eq=False)
class PacBayesCertificate(Record):
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
    n_a = count("n", n)
    d = probability("delta", delta)
    return as_output(_rhs(kl_a, n_a, d), is_scalar(kl_a, n_a, d))


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
    used to build the prior (``n_b`` in docs/certificate.md).

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
    q = unit("empirical_risk", empirical_risk)
    kl_a = check_array("kl", kl, low=0.0, allow_inf=True)
    n_a = count("n", n)
    d = probability("delta", delta)
    tol_f = float(check_array("tol", tol, low=0.0, high=1.0, open_low=True, open_high=True))
    return as_output(kl_inv_upper_array(q, _rhs(kl_a, n_a, d), tol_f), is_scalar(q, kl_a, n_a, d))


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
    q = unit("estimate", estimate)
    m = count("n_draws_total", n_draws_total)
    dp = probability("delta_prime", delta_prime)
    tol_f = float(check_array("tol", tol, low=0.0, high=1.0, open_low=True, open_high=True))
    return as_output(kl_inv_upper_array(q, _mc_rhs(m, dp), tol_f), is_scalar(q, m, dp))


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
    d = probability("delta", delta)
    g = count("grid_size", grid_size)
    return as_output(d / g, is_scalar(d, g))


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
    """The PAC-Bayes dropout certificate (docs/certificate.md; toolkit's own), with every term.

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
    q = unit("gibbs_estimate", gibbs_estimate)
    kl_a = check_array("kl", kl.total if isinstance(kl, DropoutKL) else kl, low=0.0, allow_inf=True)
    n_b = count("n_bound", n_bound)
    k = count("posterior_draws", posterior_draws)
    d = probability("delta", delta)
    dp = probability("delta_prime", delta_prime)
    g = count("grid_size", grid_size)
    tol_f = float(check_array("tol", tol, low=0.0, high=1.0, open_low=True, open_high=True))

    d_point, dp_point = d / g, dp / g
    mc_rhs = _mc_rhs(n_b * k, dp_point)
    gibbs_upper = kl_inv_upper_array(q, mc_rhs, tol_f)
    rhs = _rhs(kl_a, n_b, d_point)
    value = kl_inv_upper_array(gibbs_upper, rhs, tol_f)
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
    record.freeze(is_scalar(q, kl_a, n_b, k, d, dp, g))
    return record
