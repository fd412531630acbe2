"""``KL(Q || P)`` of the LoRA Dropout posterior against its prior (docs/certificate.md; the toolkit's own).

The posterior is the dropout masks times a Gaussian of std ``sigma`` around the trained factors, the
prior the same around ``theta_P``; the masks discount the adapter's KL by ``1 - p`` (`dropout_kl`).
`learned_dropout_kl` is the same bound for a posterior whose mean and per-tensor stds were learned
(`lora_dropout.certify.learned`), against a prior of one std fixed in advance.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..validation import check_array
from .arrays import ArrayLike, is_scalar, unit
from .records import Record

__all__ = [
    "DropoutKL",
    "LearnedKL",
    "dropout_kl",
    "learned_dropout_kl",
]


# eq=False: the generated __eq__ would compare arrays with `==` and fail on truth value.
@dataclass(frozen=True, eq=False)
class DropoutKL(Record):
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


def dropout_kl(
    p: ArrayLike, factor_sq_dist: ArrayLike, head_sq_dist: ArrayLike, posterior_std: ArrayLike
) -> DropoutKL:
    """Upper bound on ``KL(Q || P)`` of the LoRA Dropout posterior (docs/certificate.md; toolkit's own).

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
    p_a = unit("dropout_rate p", p)
    f = check_array("factor_sq_dist", factor_sq_dist, low=0.0)
    h = check_array("head_sq_dist", head_sq_dist, low=0.0)
    sigma = check_array("posterior_std sigma", posterior_std, low=0.0, open_low=True)
    two_var = 2.0 * sigma**2
    with np.errstate(over="ignore", divide="ignore"):  # a tiny sigma gives +inf, the right limit
        factor_term = (1.0 - p_a) * f / two_var
        head_term = h / two_var
    record = DropoutKL(factor_term=factor_term, head_term=head_term, total=factor_term + head_term)
    record.freeze(is_scalar(p_a, f, h, sigma))
    return record



@dataclass(frozen=True, eq=False)
class LearnedKL(Record):
    """``KL(Q || P)`` of a learned dropout posterior against the prior, with its two terms.

    Attributes
    ----------
    variance_term : float or ndarray
        ``sum_g w_g n_g (ln(sigma_P / sigma_g) + sigma_g^2 / (2 sigma_P^2) - 1/2)`` (0 when every
        ``sigma_g = sigma_P``).
    distance_term : float or ndarray
        ``sum_g w_g ||mu_g - theta_P,g||^2 / (2 sigma_P^2)``.
    total : float or ndarray
        ``variance_term + distance_term``, the upper bound on ``KL(Q || P)``.
    """

    variance_term: ArrayLike
    distance_term: ArrayLike
    total: ArrayLike


def learned_dropout_kl(
    prior_std: ArrayLike, *, weight: ArrayLike, count: ArrayLike, posterior_std: ArrayLike, sq_dist: ArrayLike
) -> LearnedKL:
    """Upper bound on ``KL(Q || P)`` of a dropout posterior with learned mean and per-tensor stds (toolkit's own).

    Posterior ``Q``: LoRA Dropout masks (each entry of ``A`` and ``B`` kept with probability ``1 - p``,
    the head never masked) times ``N(mu_g, sigma_g^2 I)`` on each parameter tensor ``g`` (``n_g`` entries).
    Prior ``P``: the same masks times ``N(theta_P, sigma_P^2 I)``, ``theta_P`` and ``sigma_P`` independent
    of the bound examples. As for `dropout_kl` (docs/certificate.md), joint convexity over the shared
    masks bounds ``KL(Q || P)`` by the expected KL given the masks; a dropped entry is 0 under both, and a
    kept one contributes the Gaussian KL

        ln(sigma_P / sigma_g) + (sigma_g^2 + (mu_i - theta_P,i)^2) / (2 sigma_P^2) - 1/2,

    so with ``w_g = 1 - p`` for a LoRA factor and ``w_g = 1`` for a head tensor

        KL(Q || P) <= sum_g w_g [n_g (ln(sigma_P / sigma_g) + sigma_g^2 / (2 sigma_P^2) - 1/2)
                                 + ||mu_g - theta_P,g||^2 / (2 sigma_P^2)].

    With every ``sigma_g = sigma_P`` the variance term is 0 and this is `dropout_kl`.

    Parameters
    ----------
    prior_std : float or ndarray
        ``sigma_P > 0`` (e.g. a grid fixed in advance, 1-d); the result has its shape.
    weight, count, posterior_std, sq_dist : 1-d arrays over the tensors ``g``, all of one length
        ``w_g`` in [0, 1], ``n_g >= 1`` (integers), ``sigma_g > 0`` and ``||mu_g - theta_P,g||^2 >= 0``.

    Returns
    -------
    LearnedKL

    Examples
    --------
    One factor tensor (4 entries, p = 0.5) and one head tensor (2 entries), both at the prior's std 1:
    only the distances count, (0.5 * 2 + 1) / 2.

    >>> learned_dropout_kl(1.0, weight=[0.5, 1.0], count=[4, 2], posterior_std=[1.0, 1.0], sq_dist=[2.0, 1.0]).total
    1.0

    A head of one entry at std 0.5 against a prior std 1, no distance: ln 2 + 0.125 - 0.5.

    >>> round(learned_dropout_kl(1.0, weight=[1.0], count=[1], posterior_std=[0.5], sq_dist=[0.0]).total, 6)
    0.318147
    """
    sp = check_array("prior_std sigma_P", prior_std, low=0.0, open_low=True)
    w = check_array("weight", weight, low=0.0, high=1.0)
    n = check_array("count", count, low=1.0, integer=True)
    sg = check_array("posterior_std", posterior_std, low=0.0, open_low=True)
    d = check_array("sq_dist", sq_dist, low=0.0)
    shapes = {a.shape for a in (w, n, sg, d)}
    if len(shapes) != 1 or w.ndim != 1 or not len(w):
        raise ValueError(f"weight, count, posterior_std and sq_dist must be 1-d arrays of one length >= 1, got "
                         f"shapes {[a.shape for a in (w, n, sg, d)]}")
    sp_col = sp[..., None]  # broadcast the prior std over the tensors
    two_var = 2.0 * sp_col**2
    with np.errstate(over="ignore", divide="ignore"):
        variance = (w * n * (np.log(sp_col / sg) + sg**2 / two_var - 0.5)).sum(axis=-1)
        distance = (w * d / two_var).sum(axis=-1)
    record = LearnedKL(variance_term=variance, distance_term=distance, total=variance + distance)
    record.freeze(sp.ndim == 0)
    return record
