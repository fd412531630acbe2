"""``KL(Q || P)`` of the LoRA Dropout posterior against its prior (theory.md section 6; the toolkit's own).

The posterior is the dropout masks times a Gaussian of std ``sigma`` around the trained factors, the
prior the same around ``theta_P``; the masks discount the adapter's KL by ``1 - p``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..validation import check_array
from .arrays import ArrayLike, is_scalar, unit
from .records import Record

__all__ = [
    "DropoutKL",
    "dropout_kl",
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

