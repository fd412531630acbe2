"""The test-time ensemble (Eq. 8): Theorem 4.5 (Jensen: the ensemble is no worse than its mean member),
chained with Theorem 4.4, and the PAC-Bayes transfer from the Gibbs member to the ensemble (docs/certificate.md;
the toolkit's own).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..validation import check_array
from .arrays import ArrayLike, is_scalar, unit
from .estimates import Estimate, estimate_mean
from .pacbayes import GibbsLoss, PacBayesCertificate
from .records import BoundValue, Record
from .risk import theorem44_bound

__all__ = [
    "EnsembleCertificate",
    "ensemble_risk_bound",
    "ensemble_transfer",
    "estimate_jensen_gap",
    "per_sample_jensen_gap",
]


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


@dataclass(frozen=True, eq=False)
class EnsembleCertificate(Record):
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



def ensemble_transfer(gibbs_linear_certificate: ArrayLike | PacBayesCertificate) -> EnsembleCertificate:
    """From a certificate on the Gibbs member's LINEAR loss to the test-time ensemble (docs/certificate.md).

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
    c = unit("gibbs_linear_certificate", gibbs_linear_certificate)
    record = EnsembleCertificate(linear_loss=c, zero_one_error=np.minimum(1.0, 2.0 * c))
    record.freeze(is_scalar(c))
    return record
