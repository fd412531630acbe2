"""The hold-out baseline of the PAC-Bayes dropout certificate: a test-set bound (docs/certificate.md, "Is it worth
computing?").

A user who does not want a PAC-Bayes certificate can train the predictor on the prior's share of the data and
bound its error on the rest. If the predictor does not depend on those ``n`` examples and their losses (or
units' mean losses) are i.i.d. in ``[0, 1]`` with mean ``R``, then with probability at least ``1 - delta``

    R <= kl_inv_upper(error, ln(1 / delta) / n)

(the Chernoff bound in its kl form; Langford 2005, "Tutorial on practical prediction theory"). For the prior's
Gibbs member the losses of one example are averaged over its ``k`` draws first, so the variable per example is
still in ``[0, 1]`` and the bound counts ``n`` examples, not ``n k``: no Monte Carlo step is needed. A
PAC-Bayes certificate is worth its cost only where it is below this bound at the same confidence and level.
"""

from __future__ import annotations

import numpy as np

from ..validation import check_array
from .arrays import ArrayLike, as_output, count, is_scalar, probability, unit
from .kl import DEFAULT_TOL, kl_inv_upper_array


def holdout_bound(error: ArrayLike, n: ArrayLike, delta: ArrayLike, *, tol: float = DEFAULT_TOL) -> ArrayLike:
    """Test-set bound on the risk of a predictor fixed before ``n`` held-out examples: ``kl_inv_upper(error,
    ln(1 / delta) / n)``, never below the exact inverse.

    Parameters
    ----------
    error : float or ndarray
        Mean loss in [0, 1] over the ``n`` held-out examples (or units).
    n : int or ndarray
        ``n >= 1`` i.i.d. examples (or units: groups, when the data are grouped).
    delta : float or ndarray
        Failure probability in (0, 1).

    Examples
    --------
    >>> print(f"{holdout_bound(0.0, n=1000, delta=0.05):.6f}")  # 1 - 0.05**(1/1000)
    0.002991
    >>> holdout_bound(0.233, 2556, 0.05) < 0.255  # the README's example of scale
    True
    """
    q = unit("error", error)
    n_a = count("n", n)
    d = probability("delta", delta)
    tol_f = float(check_array("tol", tol, low=0.0, high=1.0, open_low=True, open_high=True))
    return as_output(kl_inv_upper_array(q, -np.log(d) / n_a, tol_f), is_scalar(q, n_a, d))
