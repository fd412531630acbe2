"""The paper's bounds and the toolkit's PAC-Bayes certificate as vectorised pure functions.

One module per result: `stability` (sparsity and Prop. 4.2), `risk` (Lemma 4.3, Theorem 4.4 and its
gap, Bousquet & Elisseeff's Thm 12, `lam_needed`, `n_needed`), `ensemble` (Theorem 4.5, the Jensen
gap, the PAC-Bayes transfer to the ensemble), `estimates` (`Estimate`, `estimate_mean`: the one
t-interval of the project), `kl` (the Bernoulli KL and its upper inverse), `dropout_kl` (``KL(Q || P)``
of the dropout posterior), `pacbayes` (the PAC-Bayes-kl bound, the Monte Carlo step and the certificate:
docs/certificate.md, the toolkit's own), with `records` (`BoundValue`) and `arrays` (the argument
checks) under them. The paper's results are docs/bounds.md.

Every function takes Python floats or numpy arrays and broadcasts them like numpy. Scalars in give
scalars out (Python ``float``/``bool``/``str``); any array in gives arrays out. Arguments are checked
up front and a bad one raises ``ValueError`` naming it and its value.

A bound whose denominator ``D = Lambda_min + 2 lam s`` is not positive is *vacuous*: its value is
``inf`` and its ``reason`` says why. It is never clamped and never NaN. "Vacuous" is about the
arithmetic only; whether the assumptions of Prop. 4.2 hold (PSD Hessian, stationarity, closeness of
``theta(S^i)`` and ``theta(S)``) is measured elsewhere and reported next to the bound.

Names follow docs/method.md, "Notation": ``p`` is ``dropout_rate``, ``n`` is ``n_train``, ``C`` is
``loss_range``, ``eta`` is ``lipschitz``, ``Lambda_min`` is ``hessian_min_eig``, ``beta`` is
``stability``.
"""

from .dropout_kl import DropoutKL, LearnedKL, dropout_kl, learned_dropout_kl
from .ensemble import (
    EnsembleCertificate,
    ensemble_risk_bound,
    ensemble_transfer,
    estimate_jensen_gap,
    per_sample_jensen_gap,
)
from .estimates import Estimate, estimate_mean
from .holdout import holdout_bound
from .kl import DEFAULT_TOL, bernoulli_kl, kl_inv_upper
from .pacbayes import (
    VACUOUS_TOL,
    GibbsLoss,
    PacBayesCertificate,
    certificate,
    grid_delta,
    is_vacuous,
    monte_carlo_upper,
    pac_bayes_kl_bound,
    pac_bayes_kl_rhs,
)
from .records import BoundValue
from .risk import (
    Lemma43Form,
    lam_needed,
    lemma43_bound,
    n_needed,
    theorem44_bound,
    theorem44_gap,
    uniform_stability_bound,
)
from .stability import sparsity, stability_bound

__all__ = [
    "DEFAULT_TOL",
    "VACUOUS_TOL",
    "BoundValue",
    "DropoutKL",
    "EnsembleCertificate",
    "Estimate",
    "GibbsLoss",
    "LearnedKL",
    "Lemma43Form",
    "PacBayesCertificate",
    "bernoulli_kl",
    "certificate",
    "dropout_kl",
    "ensemble_risk_bound",
    "ensemble_transfer",
    "estimate_jensen_gap",
    "estimate_mean",
    "grid_delta",
    "holdout_bound",
    "is_vacuous",
    "kl_inv_upper",
    "learned_dropout_kl",
    "lam_needed",
    "lemma43_bound",
    "monte_carlo_upper",
    "n_needed",
    "pac_bayes_kl_bound",
    "pac_bayes_kl_rhs",
    "per_sample_jensen_gap",
    "sparsity",
    "stability_bound",
    "theorem44_bound",
    "theorem44_gap",
    "uniform_stability_bound",
]
