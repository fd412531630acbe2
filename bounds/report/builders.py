"""The paper's bounds, each evaluated on a run's measured inputs and held against a measurement.

One builder per report; each takes the `bounds.inputs.RunInputs` of the run at one hypothesis and
returns a `BoundReport` (or raises `RunLogError`/ValueError when a measurement it needs is missing;
`bounds.report.evaluate_run` turns that into a not-evaluable report).

==========================  =====================================================================
``prop42[<method>]``        Prop. 4.2: theoretical ``beta`` against the measured ``beta_hat``, one
                            report per leave-one-out method in ``stability.parquet``
``lemma43``                 Lemma 4.3 (B&E Thm 11) with the measured ``beta_hat`` plugged in
``theorem44``               Theorem 4.4, the paper's bound
``uniform_stability``       B&E Thm 12, with the measured maximum loss change as a plug-in
``ensemble``                Thm 4.5 chained with Thm 4.4: bound on the test-time ensemble's risk
``prop42[expected]``,       at ``hypothesis="expected"``: Prop. 4.2 and Thm 4.4 at the expected
``theorem44[expected]``     predictor (every ``dW`` times its training mean), with its probes and
                            its (``deterministic``) risks
==========================  =====================================================================

The Theorem 4.4 reports also show what the bound would take (diagnostics, `bounds.formulas`):
``lam_needed``, the smallest ``lam`` with ``D = Lambda_min + 2 lam s > 0``, and ``n_needed``, the ``n``
beyond which the gap term falls below ``C`` at the run's ``lam`` (``inf`` when ``D <= 0`` there: ``eta``
is measured at that ``lam``, so the bound is not re-evaluated at another).
"""

from __future__ import annotations

import math

from .. import assumptions as premise
from ..assumptions import UNMASKED_STABILITY, Assumption, prop42_beta
from ..estimators import Quantity, Risks, StabilityEstimate
from ..formulas import (
    BoundValue,
    Lemma43Form,
    ensemble_risk_bound,
    lam_needed,
    lemma43_bound,
    n_needed,
    sparsity,
    theorem44_bound,
    uniform_stability_bound,
)
from ..inputs import RunInputs
from ..runlog import PARAM_DISTANCE_SPACE, Hypothesis, RunLogError
from .record import BoundReport

__all__ = ["THEOREMS", "hypothesis_reports", "prop42_reports", "theorem", "unmasked_builders"]

THEOREMS = {
    "prop42": "Lin et al. 2024, Prop. 4.2 (pointwise hypothesis stability of LoRA Dropout)",
    "lemma43": "Lin et al. 2024, Lemma 4.3 = Bousquet & Elisseeff 2002, Thm 11",
    "theorem44": "Lin et al. 2024, Thm 4.4",
    "uniform_stability": "Bousquet & Elisseeff 2002, Thm 12 (uniform stability; needs a uniform beta)",
    "ensemble": "Lin et al. 2024, Thm 4.5 (Jensen) chained with Thm 4.4",
}


def suffix(inputs: RunInputs) -> str:
    """``""`` at the unmasked model, ``[expected]`` at the expected predictor: appended to report names."""
    return "" if inputs.hypothesis is Hypothesis.UNMASKED else f"[{inputs.hypothesis}]"


def theorem(name: str, inputs: RunInputs) -> str:
    """What report ``name`` cites, with ``at the expected predictor (...)`` at a hypothesis other than the
    unmasked model."""
    if inputs.hypothesis is Hypothesis.UNMASKED:
        return THEOREMS[name]
    return (f"{THEOREMS[name]}, at the {inputs.hypothesis} predictor (every dW times its training mean, "
            f"probes.parquet hypothesis={inputs.hypothesis})")


# --------------------------------------------------------------------------------------------------
# Inputs shared by several reports
# --------------------------------------------------------------------------------------------------


def config_inputs(inputs: RunInputs) -> list[Quantity]:
    return [inputs.p, inputs.sparsity, inputs.n, inputs.lam]


def hypothesis_inputs(inputs: RunInputs, risks: bool = True) -> list[Quantity]:
    """The hypothesis's own inputs (none for the unmasked model), after checking that the predictor
    whose risks are used is the one the probes measured.

    At ``expected`` the risks are of the ``deterministic`` rows of samples.parquet; they are the
    expected predictor unless the run's eval_mode is ``full`` with ``c != 1`` (then they are the unmasked
    model's, and the run logs no risk of the expected predictor: RunLogError). ``risks=False``: for a
    report that uses no risk (Prop. 4.2), no check.
    """
    if inputs.hypothesis is Hypothesis.UNMASKED:
        return []
    c = inputs.expected_scale
    predictor = inputs.predictor
    if risks and predictor == "deterministic" and inputs.eval_mode == "full" and c != 1.0:
        raise RunLogError(
            f"run {inputs.dir} evaluated its deterministic predictor with eval_mode='full' (the unmasked dW), "
            f"so samples.parquet logs no risk of the expected predictor (dW times {c:.6g}) that the "
            "hypothesis='expected' probes measure; the bound at hypothesis='expected' needs a run trained "
            "with eval_mode 'expected' or 'ensemble'")
    note = "" if predictor == "deterministic" or not risks else (
        f"risks of predictor={predictor}, not of the expected predictor the probes measured")
    return [Quantity("expected_scale", c, "meta.json config.lora_dropout: (1-p)^2 without rescale, 1 with; "
                     "the probes' theta(S) is every dW times this (probes.parquet hypothesis=expected)",
                     note=note)]


def theorem44_needs(inputs: RunInputs, risks: Risks) -> tuple[Quantity, Quantity]:
    """``lam_needed`` and ``n_needed`` (`bounds.formulas`): what Thm 4.4 would take to say something."""
    eta, hmin, p = inputs.lipschitz.value, inputs.hessian_min_eig.value, inputs.p.value
    s, c, lam, delta, n = sparsity(p), risks.loss_range.value, inputs.settings.lam, inputs.settings.delta, inputs.n.value
    lam_q = Quantity("lam_needed", lam_needed(hmin, p),
                     f"-Lambda_min / (2 s) = -({hmin:.6g}) / (2*{s:.6g}) (0 when Lambda_min > 0, inf when s = 0): "
                     "D = Lambda_min + 2 lam s > 0 exactly when lam > lam_needed",
                     note=f"eta was measured on the loss regularised with lam={inputs.lipschitz_lam:g}; at another "
                          "lam eta changes too (the regulariser's gradient is 2 lam s dW)")
    value = n_needed(c, eta, hmin, lam, p, delta)
    d = hmin + 2.0 * lam * s
    if math.isinf(value):
        note = (f"D = {d:.6g} <= 0 at lam={lam:g}: the bound is vacuous for every n; it is not "
                "evaluated at another lam because eta was measured at this one (see lam_needed)")
    else:
        note = f"n_needed / n = {value / n:.4g} (n = {n})"
    n_q = Quantity("n_needed", value,
                   f"(C^2 + 24 C eta^2 / D) / (2 delta C^2) with C={c:.6g}, eta={eta:.6g}, D={d:.6g} "
                   f"(lam={lam:g}), delta={delta:g}: Thm 4.4's gap < C exactly when n > n_needed",
                   note=note)
    return lam_q, n_q


def risk_report(inputs: RunInputs, name: str, b: BoundValue, risks: Risks, quantities: list[Quantity],
                assumptions: list[Assumption], diagnostics: tuple[Quantity, ...] = (),
                r_hat: float | None = None, measured_name: str | None = None,
                cites: str | None = None) -> BoundReport:
    """A bound on the risk ``R``, held against the measured gap ``R - R_hat``."""
    r_hat = risks.train.value if r_hat is None else r_hat
    measured = risks.test.value - r_hat
    bound_on = sum(v for k, v in b.terms.items() if k != "r_hat") if not b.vacuous else math.inf
    clipped = f", clipped at C={risks.loss_range.value:g}" if risks.loss_range.rigorous else ""
    measured_name = measured_name or f"R - R_hat ({risks.predictor}{clipped})"
    assumptions = [*assumptions, premise.measured_below_bound(measured, bound_on, b.vacuous, measured_name)]
    return BoundReport(name + suffix(inputs), inputs.run_id, cites or theorem(name, inputs), b.value, measured,
                       measured_name, bound_on, b.terms, tuple(quantities), tuple(assumptions), diagnostics,
                       b.vacuous, reason=b.reason)


# --------------------------------------------------------------------------------------------------
# The reports
# --------------------------------------------------------------------------------------------------


def prop42_reports(inputs: RunInputs) -> list[BoundReport]:
    """``prop42[<method>]`` for every leave-one-out method (raises when stability.parquet has no rows)."""
    reports = []
    inputs.method()  # raises when there is no stability table or it has no rows
    for method in inputs.methods():
        name = f"prop42[{method}]"
        try:
            b = prop42_beta(inputs)
            st = inputs.beta_hat(method, clipped=False)
        except (RunLogError, ValueError) as exc:
            reports.append(BoundReport.not_evaluable(name, inputs.run_id, THEOREMS["prop42"], str(exc)))
            continue
        quantities = [inputs.lipschitz, inputs.hessian_min_eig, *config_inputs(inputs),
                      Quantity.of("beta_hat", st.beta_hat, st.source)]
        assumptions = [*premise.probe_premises(inputs), premise.closeness(inputs, method),
                       premise.measured_below_bound(st.beta_hat.value, b.value, b.vacuous, f"beta_hat ({method})")]
        reports.append(BoundReport(name, inputs.run_id, THEOREMS["prop42"], b.value, st.beta_hat.value,
                                   f"beta_hat ({method})", b.value, b.terms, tuple(quantities),
                                   tuple(assumptions), (inputs.lam_eff,), b.vacuous, reason=b.reason))
    return reports


def beta_1(inputs: RunInputs, st: StabilityEstimate) -> Quantity:
    """Upper plug-in for the hypothesis stability ``beta_1`` of Lemma 4.3's corrected form.

    ``beta_1 = E_i mean_j |loss_j(theta(S^i)) - loss_j(theta(S))|`` needs every training example's loss
    under each ``theta(S^i)``; stability.parquet has only the removed example's. With an
    ``eta``-Lipschitz loss in the parameters, ``|loss_j(theta') - loss_j(theta)| <= eta ||theta' - theta||``,
    so ``beta_1 <= eta * mean_i ||theta(S^i) - theta(S)||``: derivable only when ``eta`` and
    ``param_distance`` are in the same parameter space. ``param_distance`` is measured on the merged
    updates (`bounds.runlog.PARAM_DISTANCE_SPACE`, ``delta_w``), so ``eta`` must be the ``delta_w`` probe.
    """
    if inputs.space != PARAM_DISTANCE_SPACE:
        raise ValueError(
            "form='corrected' needs beta_1 = mean over removed i of mean_j |loss_j(theta(S^i)) - "
            "loss_j(theta(S))|, which stability.parquet does not record (only the removed example's own "
            "loss); it is bounded by eta * mean ||theta(S^i) - theta(S)|| only when both are in one parameter "
            f"space, but eta is in space={inputs.space!r} and stability.parquet's param_distance in "
            f"space={PARAM_DISTANCE_SPACE!r}: use space={PARAM_DISTANCE_SPACE!r}")
    if math.isnan(st.param_distance_mean):
        raise ValueError(f"form='corrected' needs param_distance in stability.parquet "
                         f"(method={st.method} records none)")
    return Quantity("stability_1", inputs.lipschitz.value * st.param_distance_mean,
                    f"eta ({inputs.settings.lipschitz_quantity}, {inputs.space}) * mean_i param_distance "
                    f"({st.method}, {PARAM_DISTANCE_SPACE}, k={st.beta_hat.n})",
                    note="Lipschitz upper plug-in for beta_1 (eta measured at theta(S), used along the segment "
                         "to theta(S^i)); both cover the adapted modules' dW only, the head is held fixed")


def lemma43_report(inputs: RunInputs) -> BoundReport:
    form = inputs.settings.form
    st = inputs.beta_hat(inputs.method(), clipped=True)
    risks = inputs.risks(inputs.predictor)
    quantities = [inputs.r_hat(inputs.predictor), inputs.loss_range.quantity(), inputs.n, inputs.delta,
                  Quantity.of("stability", st.beta_hat, st.source, "measured beta_hat plugged in for beta")]
    stability_1 = None
    if form is Lemma43Form.CORRECTED:
        b1 = beta_1(inputs, st)
        quantities.append(b1)
        stability_1 = b1.value
    b = lemma43_bound(risks.train.value, inputs.loss_range.value, inputs.n.value, inputs.settings.delta,
                      st.beta_hat.value, stability_1, form)
    constant = "12 C n beta (printed)" if form is Lemma43Form.PRINTED else "6 C n (beta_1 + beta) (corrected)"
    return risk_report(inputs, "lemma43", b, risks, quantities, [premise.loss_range(inputs)],
                       cites=f"{THEOREMS['lemma43']}, constant {constant}")


def theorem44_report(inputs: RunInputs) -> BoundReport:
    risks = inputs.risks(inputs.predictor)
    b = theorem44_bound(risks.train.value, inputs.loss_range.value, inputs.lipschitz.value,
                        inputs.hessian_min_eig.value, inputs.settings.lam, inputs.p.value, inputs.n.value,
                        inputs.settings.delta)
    quantities = [inputs.r_hat(inputs.predictor), inputs.loss_range.quantity(), inputs.lipschitz,
                  inputs.hessian_min_eig, *config_inputs(inputs), inputs.delta, *hypothesis_inputs(inputs)]
    assumptions = [premise.loss_range(inputs), *premise.theorem44_premises(inputs)]
    return risk_report(inputs, "theorem44", b, risks, quantities, assumptions,
                       (inputs.lam_eff, *theorem44_needs(inputs, risks)))


def prop42_hypothesis_report(inputs: RunInputs) -> BoundReport:
    """Prop. 4.2's ``beta`` at a hypothesis other than the unmasked model: no ``beta_hat`` to hold it against."""
    b = prop42_beta(inputs)
    quantities = [inputs.lipschitz, inputs.hessian_min_eig, *config_inputs(inputs),
                  *hypothesis_inputs(inputs, risks=False)]
    try:
        closeness = premise.closeness(inputs, inputs.method())
    except RunLogError as exc:
        closeness = premise.not_measurable("closeness", exc)
    below = Assumption("measured_below_bound", math.nan, b.value, None, f"not measurable: {UNMASKED_STABILITY}")
    return BoundReport("prop42" + suffix(inputs), inputs.run_id, theorem("prop42", inputs), b.value, math.nan,
                       f"beta_hat ({inputs.hypothesis} predictor: not measured)", b.value, b.terms,
                       tuple(quantities), (*premise.probe_premises(inputs), closeness, below), (inputs.lam_eff,),
                       b.vacuous, reason=b.reason)


def uniform_report(inputs: RunInputs) -> BoundReport:
    st = inputs.beta_hat(inputs.method(), clipped=True)
    risks = inputs.risks(inputs.predictor)
    b = uniform_stability_bound(risks.train.value, inputs.loss_range.value, inputs.n.value, inputs.settings.delta,
                                st.max_change)
    quantities = [inputs.r_hat(inputs.predictor), inputs.loss_range.quantity(), inputs.n, inputs.delta,
                  Quantity("stability", st.max_change,
                           st.source.replace("|loss_si - loss_s|", "max |loss_si - loss_s|"), n=st.beta_hat.n,
                           note="plug-in: Thm 12 needs the uniform stability")]
    uniform = Assumption("uniform_stability", st.max_change, math.nan, None,
                         "Thm 12 needs the uniform stability sup over sets, removed indices and test points; "
                         f"the plug-in is the max over k={st.beta_hat.n} removed examples of their own loss "
                         "change, which can only under-estimate it")
    return risk_report(inputs, "uniform_stability", b, risks, quantities, [premise.loss_range(inputs), uniform])


def ensemble_report(inputs: RunInputs) -> BoundReport:
    member = inputs.risks("member_mean")
    ensemble = inputs.risks("ensemble")
    b = ensemble_risk_bound(member.train.value, inputs.loss_range.value, inputs.lipschitz.value,
                            inputs.hessian_min_eig.value, inputs.settings.lam, inputs.p.value, inputs.n.value,
                            inputs.settings.delta)
    gap = inputs.jensen[0]
    r_hat = Quantity.of("r_hat", member.train, member.source("train") + " (member_train_risk)")
    quantities = [r_hat, inputs.loss_range.quantity(), inputs.lipschitz, inputs.hessian_min_eig,
                  *config_inputs(inputs), inputs.delta, gap]
    assumptions = [premise.loss_range(inputs), premise.jensen(inputs), *premise.theorem44_premises(inputs)]
    clipped = f", clipped at C={inputs.loss_range.value:g}" if inputs.loss_range.rigorous else ""
    return risk_report(inputs, "ensemble", b, ensemble, quantities, assumptions, r_hat=member.train.value,
                       measured_name=f"R(ensemble) - R_hat(member_mean){clipped}")


#: The reports at the unmasked model after Prop. 4.2's, in order: name -> builder.
unmasked_builders = {"lemma43": lemma43_report, "theorem44": theorem44_report,
                     "uniform_stability": uniform_report, "ensemble": ensemble_report}
#: The reports at another hypothesis, in order: name -> builder.
hypothesis_reports = {"prop42": prop42_hypothesis_report, "theorem44": theorem44_report}
