"""The premises of the paper's bounds, measured on a run: pure functions of `bounds.inputs.RunInputs`.

Each function returns an `Assumption`: the measured value, what it is compared with, whether it holds
(None when the run cannot tell), and a sentence saying why. A premise whose measurement is missing (a
table, a probe row) is *not measurable*, never failed: `measured` turns the `RunLogError` or ValueError
into an Assumption with ``holds=None`` naming what is missing.

=========================  ===========================================================================
``loss_range``             the loss lies in ``[0, C]`` (rigorous only when clipped at a given ``C``)
``psd_hessian``            Prop. 4.2's PSD premise: ``Lambda_min >= 0``, judged only when Lanczos
                           converged (otherwise ``Lambda_min`` is not a measured eigenvalue)
``positive_denominator``   ``D = Lambda_min + 2 lam s > 0``
``stationarity``           ``||grad L|| / mean per-sample gradient norm`` below `STATIONARITY_THRESHOLD`
``lipschitz_lam``          ``eta`` was measured at the bound's ``lam``
``lipschitz_coverage``     ``eta`` is a maximum over every training example, not over a subset
``closeness``              ``max_i ||theta(S^i) - theta(S)|| / ||dW||`` below `CLOSENESS_THRESHOLD`
``stability_below_theory`` Prop. 4.2's conclusion, ``beta_hat <= beta`` (what Thm 4.4 substitutes)
``jensen``                 Thm 4.5's per-sample Jensen gap is ``>= 0`` (within `JENSEN_TOLERANCE`)
``measured_below_bound``   the measurement a report is held against is at most its bound
=========================  ===========================================================================
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from .formulas import BoundValue, sparsity, stability_bound
from .inputs import RunInputs
from .runlog import Hypothesis, RunLogError, jsonable

__all__ = [
    "CLOSENESS_THRESHOLD",
    "JENSEN_TOLERANCE",
    "STATIONARITY_THRESHOLD",
    "UNMASKED_STABILITY",
    "Assumption",
    "closeness",
    "jensen",
    "lipschitz_coverage",
    "lipschitz_lam",
    "loss_range",
    "measured",
    "measured_below_bound",
    "not_measurable",
    "positive_denominator",
    "probe_premises",
    "prop42_beta",
    "psd_hessian",
    "stability_below_theory",
    "stationarity",
    "theorem44_premises",
]

#: Stationarity "holds" when ``grad_norm / lipschitz_mean`` is below this (a toolkit convention).
STATIONARITY_THRESHOLD = 0.1
#: Closeness "holds" when ``max_i ||theta(S^i) - theta(S)|| / sqrt(sum_k ||dW_k||^2)`` is below this.
CLOSENESS_THRESHOLD = 0.1
#: Per-sample Jensen gaps above ``-JENSEN_TOLERANCE`` count as non-negative: the logged losses are
#: float32 cross-entropies, so an exact zero gap (identical members) can round to about -1e-7.
JENSEN_TOLERANCE = 1e-6
#: Why ``beta_hat`` cannot be held against a bound at another hypothesis than the unmasked model.
UNMASKED_STABILITY = ("stability.parquet holds the leave-one-out loss changes of the unmasked model (loss_s, "
                      "loss_si); the expected predictor's are not measured")


@dataclass(frozen=True)
class Assumption:
    """One assumption of a bound, measured on the run.

    Attributes
    ----------
    name : str
    measured : float
        The measured value (NaN when not measurable).
    threshold : float
        What it is compared with (NaN where the check is not a comparison).
    holds : bool or None
        None when not measurable from this run.
    detail : str
        What was compared, and why ``holds`` is what it is.
    """

    name: str
    measured: float
    threshold: float
    holds: bool | None
    detail: str

    def to_dict(self) -> dict[str, Any]:
        """Strict-JSON-ready."""
        return jsonable(asdict(self))


def not_measurable(name: str, exc: Exception) -> Assumption:
    """An assumption the run cannot judge, naming what is missing."""
    return Assumption(name, math.nan, math.nan, None, f"not measurable: {exc}")


def measured(name: str, fn: Callable[[], Assumption]) -> Assumption:
    """``fn()``, or a not-measurable assumption naming what is missing."""
    try:
        return fn()
    except (RunLogError, ValueError) as exc:
        return not_measurable(name, exc)


def prop42_beta(inputs: RunInputs) -> BoundValue:
    """Prop. 4.2's theoretical ``beta`` (the same for every leave-one-out method)."""
    return stability_bound(inputs.lipschitz.value, inputs.hessian_min_eig.value, inputs.settings.lam,
                           inputs.p.value, inputs.n.value)


def loss_range(inputs: RunInputs) -> Assumption:
    c = inputs.loss_range
    if c.rigorous:
        return Assumption("loss_range", c.value, c.value, True,
                          f"every loss is clipped at C={c.value:g}, so it lies in [0, C]")
    return Assumption("loss_range", c.value, math.nan, None,
                      "C is the observed maximum loss (heuristic): cross-entropy is unbounded, so no "
                      "C holds for unseen examples; pass loss_range to clip (rigorous)")


def psd_hessian(inputs: RunInputs) -> Assumption:
    h = inputs.hessian_min_eig.value
    why = inputs.lambda_min_unmeasured
    if why:
        return Assumption("psd_hessian", h, 0.0, None,
                          f"not measured: {why}; Lambda_min = {h:.6g} ({inputs.space}) is not an eigenvalue, "
                          "so Prop. 4.2's PSD premise (Lambda_min >= 0) is neither held nor failed")
    return Assumption("psd_hessian", h, 0.0, h >= 0,
                      f"Lambda_min = {h:.6g} ({inputs.space}) must be >= 0 for Prop. 4.2's PSD premise")


def positive_denominator(inputs: RunInputs) -> Assumption:
    h, lam, s = inputs.hessian_min_eig.value, inputs.settings.lam, sparsity(inputs.p.value)
    d = h + 2.0 * lam * s
    approximate = ("; in factors space the regulariser's Hessian is not 2 lam s I, so D is approximate"
                   if inputs.space == "factors" else "")
    why = inputs.lambda_min_unmeasured
    detail = (f"D = Lambda_min + 2 lam s = {h:.6g} + 2*{lam:g}*{s:.6g}" + approximate
              + (f"; not measured: {why}" if why else ""))
    return Assumption("positive_denominator", d, 0.0, None if why else d > 0, detail)


def lipschitz_coverage(inputs: RunInputs) -> Assumption:
    """``eta`` as a max over every training example, or over the probed subset only."""
    def measure() -> Assumption:
        probed, n = inputs.lipschitz.n, inputs.n.value
        if probed is None:
            raise RunLogError("probes.parquet records no n for the Lipschitz row")
        text = inputs.lipschitz_coverage_text(probed)
        if probed >= n:
            return Assumption("lipschitz_coverage", probed, n, True, text)
        return Assumption("lipschitz_coverage", probed, n, None,
                          f"{text}: a maximum over a subset can only under-estimate the one over all n "
                          "the bound needs (probe with --lipschitz-examples unset for all)")

    return measured("lipschitz_coverage", measure)


def stationarity(inputs: RunInputs) -> Assumption:
    def measure() -> Assumption:
        grad = inputs.probe("grad_norm").value
        scale = inputs.probe("lipschitz_mean").value
        ratio = grad / scale if scale > 0 else math.inf
        return Assumption("stationarity", ratio, STATIONARITY_THRESHOLD, ratio < STATIONARITY_THRESHOLD,
                          f"||grad L|| / mean per-sample gradient norm = {grad:.6g} / {scale:.6g} "
                          f"({inputs.space}); holds when < {STATIONARITY_THRESHOLD:g} (toolkit convention)")

    return measured("stationarity", measure)


def lipschitz_lam(inputs: RunInputs) -> Assumption:
    def measure() -> Assumption:
        at, lam = inputs.lipschitz_lam, inputs.settings.lam
        if math.isnan(at):
            return Assumption("lipschitz_lam", at, lam, None,
                              "the Lipschitz probe did not record the lam of its regularised loss")
        return Assumption("lipschitz_lam", at, lam, math.isclose(at, lam),
                          f"eta was measured on the loss regularised with lam={at:g}; the bound uses lam={lam:g}")

    return measured("lipschitz_lam", measure)


def closeness(inputs: RunInputs, method: str) -> Assumption:
    def measure() -> Assumption:
        st = inputs.beta_hat(method, clipped=False)
        scale = inputs.dw_norm
        if math.isnan(st.param_distance_max):
            raise RunLogError(f"stability.parquet method={method} records no param_distance")
        ratio = st.param_distance_max / scale if scale > 0 else math.inf
        return Assumption("closeness", ratio, CLOSENESS_THRESHOLD, ratio < CLOSENESS_THRESHOLD,
                          f"max_i ||theta(S^i) - theta(S)|| / sqrt(sum ||dW||^2) = "
                          f"{st.param_distance_max:.6g} / {scale:.6g} ({method}, k={st.beta_hat.n}); "
                          f"holds when < {CLOSENESS_THRESHOLD:g} (toolkit convention)")

    return measured("closeness", measure)


def stability_below_theory(inputs: RunInputs, method: str) -> Assumption:
    def measure() -> Assumption:
        if inputs.hypothesis is not Hypothesis.UNMASKED:
            raise RunLogError(UNMASKED_STABILITY)
        b = prop42_beta(inputs)
        beta_hat = inputs.beta_hat(method, clipped=False).beta_hat.value
        return Assumption("stability_below_theory", beta_hat, b.value, beta_hat <= b.value,
                          f"beta_hat ({method}) <= Prop. 4.2 beta" + (f" (vacuous: {b.reason})" if b.vacuous else ""))

    return measured("stability_below_theory", measure)


def jensen(inputs: RunInputs) -> Assumption:
    """Thm 4.5's premise: the smallest per-sample Jensen gap on the test split is non-negative."""
    worst = inputs.jensen[1]
    return Assumption("jensen", worst, -JENSEN_TOLERANCE, worst >= -JENSEN_TOLERANCE,
                      "smallest per-sample Jensen gap (Thm 4.5: >= 0 for a loss convex in the averaged "
                      f"output); tolerance {JENSEN_TOLERANCE:g} for float32 losses")


def measured_below_bound(measured_value: float, bound: float, vacuous: bool, what: str) -> Assumption:
    """The last assumption of every report: the measurement is at most the bound."""
    detail = f"{what} <= bound" + (" (trivially: the bound is vacuous)" if vacuous else "")
    return Assumption("measured_below_bound", measured_value, bound, measured_value <= bound, detail)


def probe_premises(inputs: RunInputs) -> list[Assumption]:
    """The premises of Prop. 4.2 measured by the probes."""
    return [psd_hessian(inputs), positive_denominator(inputs), stationarity(inputs), lipschitz_lam(inputs),
            lipschitz_coverage(inputs)]


def theorem44_premises(inputs: RunInputs) -> list[Assumption]:
    """Prop. 4.2's premises and its conclusion (beta_hat <= beta), which Thm 4.4 substitutes."""
    try:
        method = inputs.method()
    except RunLogError as exc:
        return [*probe_premises(inputs), not_measurable("closeness", exc),
                not_measurable("stability_below_theory", exc)]
    return [*probe_premises(inputs), closeness(inputs, method), stability_below_theory(inputs, method)]

