"""Bound reports of a run: each bound evaluated on measured inputs and held against a measurement.

:func:`evaluate_run` turns a run directory into a list of `BoundReport`s (design.md section 3):

==========================  =====================================================================
``prop42[<method>]``        Prop. 4.2: theoretical ``beta`` against the measured ``beta_hat``, one
                            report per leave-one-out method in ``stability.parquet``
``lemma43``                 Lemma 4.3 (B&E Thm 11) with the measured ``beta_hat`` plugged in
``theorem44``               Theorem 4.4, the paper's bound
``uniform_stability``       B&E Thm 12, with the measured maximum loss change as a plug-in
``ensemble``                Thm 4.5 chained with Thm 4.4: bound on the test-time ensemble's risk
``prop42[expected]``,       ``evaluate_run(..., hypothesis="expected")``: Prop. 4.2 and Thm 4.4 at the
``theorem44[expected]``     expected predictor (every ``dW`` times its training mean), with its probes
                            and its (``deterministic``) risks
==========================  =====================================================================

The Theorem 4.4 reports also show what the bound would take (diagnostics, `bounds.formulas`):
``lam_needed``, the smallest ``lam`` with ``D = Lambda_min + 2 lam s > 0``, and ``n_needed``, the ``n``
beyond which the gap term falls below ``C`` at the run's ``lam`` (``inf`` when ``D <= 0`` there: ``eta``
is measured at that ``lam``, so the bound is not re-evaluated at another).

Every report carries the inputs it used (with their source), its additive terms, and an audit of the
assumptions measured on the run. Three things are kept apart:

- *vacuous*: the arithmetic has no finite value (``D = Lambda_min + 2 lam s <= 0``); value ``inf``;
- an *assumption* that fails (e.g. a negative ``Lambda_min`` breaks Prop. 4.2's PSD premise even when
  ``D > 0``): the value is still computed and the report's `status` says ``assumptions fail``;
- *not evaluable*: a table or measurement is missing; the reason names the command producing it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, replace
from functools import cached_property
from pathlib import Path
from types import MappingProxyType
from typing import Any

import pandas as pd

from .estimators import (
    LIPSCHITZ_QUANTITIES,
    SPACES,
    LossMatrix,
    Quantity,
    Risks,
    StabilityEstimate,
    choose_loss_range,
    dw_norm_squared,
    estimate_lam_eff,
    estimate_stability,
    final_step,
    loss_matrix,
    predictor_losses,
    probe_convergence,
    probe_lam,
    probe_quantity,
    risks_of,
    stability_methods,
)
from .formulas import (
    BoundValue,
    Lemma43Form,
    ensemble_risk_bound,
    estimate_jensen_gap,
    lam_needed,
    lemma43_bound,
    n_needed,
    sparsity,
    stability_bound,
    theorem44_bound,
    uniform_stability_bound,
)
from .runlog import (
    BOUND_PREDICTORS,
    HYPOTHESES,
    PARAM_DISTANCE_SPACE,
    RunLog,
    RunLogError,
    jsonable,
    read_run,
)

__all__ = [
    "CLOSENESS_THRESHOLD",
    "FRAME_COLUMNS",
    "JENSEN_TOLERANCE",
    "STATIONARITY_THRESHOLD",
    "Assumption",
    "BoundReport",
    "evaluate_run",
]

#: Stationarity "holds" when ``grad_norm / lipschitz_mean`` is below this (a toolkit convention).
STATIONARITY_THRESHOLD = 0.1
#: Closeness "holds" when ``max_i ||theta(S^i) - theta(S)|| / sqrt(sum_k ||dW_k||^2)`` is below this.
CLOSENESS_THRESHOLD = 0.1
#: Per-sample Jensen gaps above ``-JENSEN_TOLERANCE`` count as non-negative: the logged losses are
#: float32 cross-entropies, so an exact zero gap (identical members) can round to about -1e-7.
JENSEN_TOLERANCE = 1e-6

#: The predictor whose risks the reports of each hypothesis (``bounds.runlog.HYPOTHESES``) use by default:
#: the unmasked model's ``full`` rows, or the ``deterministic`` rows, which are the expected predictor
#: unless the run's eval_mode is ``full`` (then the run does not log it: see `_Run.hypothesis_inputs`).
HYPOTHESIS_PREDICTORS = {"unmasked": "full", "expected": "deterministic"}
#: Why ``beta_hat`` cannot be held against a bound at another hypothesis than the unmasked model.
UNMASKED_STABILITY = ("stability.parquet holds the leave-one-out loss changes of the unmasked model (loss_s, "
                      "loss_si); the expected predictor's are not measured")

#: Columns of `BoundReport.to_frame`.
FRAME_COLUMNS = ("report", "run_id", "kind", "name", "value", "stderr", "ci_low", "ci_high", "threshold",
                 "holds", "source")

THEOREMS = {
    "prop42": "Lin et al. 2024, Prop. 4.2 (pointwise hypothesis stability of LoRA Dropout)",
    "lemma43": "Lin et al. 2024, Lemma 4.3 = Bousquet & Elisseeff 2002, Thm 11",
    "theorem44": "Lin et al. 2024, Thm 4.4",
    "uniform_stability": "Bousquet & Elisseeff 2002, Thm 12 (uniform stability; needs a uniform beta)",
    "ensemble": "Lin et al. 2024, Thm 4.5 (Jensen) chained with Thm 4.4",
}


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


def _str_number(x: float) -> str:
    return "n/a" if isinstance(x, float) and math.isnan(x) else f"{x:.6g}"


@dataclass(frozen=True)
class BoundReport:
    """A bound evaluated on a run, next to the measurement it is held against (design.md section 3).

    Attributes
    ----------
    name : str
        ``prop42[<method>]``, ``lemma43``, ``theorem44``, ``uniform_stability`` or ``ensemble``.
    run_id : str
    theorem : str
        The result it cites.
    value : float
        The bound: on the risk ``R`` for the risk bounds, on ``beta`` for Prop. 4.2; ``inf`` when
        vacuous, NaN when not evaluable.
    measured : float
        The measured quantity the bound is held against: the gap ``R - R_hat`` (test risk minus train
        risk of the predictor, of the clipped loss when ``C`` is given) for risk bounds, ``beta_hat``
        for Prop. 4.2; NaN when not evaluable.
    measured_name : str
    bound_on_measured : float
        The part of ``value`` that bounds ``measured``: ``value - R_hat`` for risk bounds (the sum of
        the terms other than ``r_hat``), ``value`` for Prop. 4.2.
    terms : mapping of str to float
        Additive terms of ``value``.
    inputs : tuple of Quantity
        Every number used, with its source.
    assumptions : tuple of Assumption
        The audit; the last one is always ``measured_below_bound``.
    diagnostics : tuple of Quantity
        Related measurements shown alongside but not used in ``value`` (e.g. ``lam_eff``).
    vacuous : bool
    evaluable : bool
    reason : str
        Why vacuous or not evaluable; ``""`` otherwise.
    """

    name: str
    run_id: str
    theorem: str
    value: float
    measured: float
    measured_name: str
    bound_on_measured: float
    terms: Mapping[str, float] = field(default_factory=dict)
    inputs: tuple[Quantity, ...] = ()
    assumptions: tuple[Assumption, ...] = ()
    diagnostics: tuple[Quantity, ...] = ()
    vacuous: bool = False
    evaluable: bool = True
    reason: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "terms", MappingProxyType(dict(self.terms)))
        for name in ("inputs", "assumptions", "diagnostics"):
            object.__setattr__(self, name, tuple(getattr(self, name)))

    @classmethod
    def not_evaluable(cls, name: str, run_id: str, theorem: str, reason: str,
                      inputs: tuple[Quantity, ...] = ()) -> BoundReport:
        """A report that could not be computed, with the reason (e.g. a missing table and its producer)."""
        return cls(name, run_id, theorem, math.nan, math.nan, "", math.nan, inputs=inputs, evaluable=False,
                   reason=reason)

    @property
    def assumptions_hold(self) -> bool | None:
        """False if any assumption fails, None if none fails but some are not measurable, else True."""
        holds = [a.holds for a in self.assumptions]
        if False in holds:
            return False
        return None if None in holds else True

    @property
    def status(self) -> str:
        """``not evaluable``, ``vacuous``, ``violated`` (measured above the bound), ``assumptions fail``,
        ``unverified`` (some assumption not measurable) or ``holds``."""
        if not self.evaluable:
            return "not evaluable"
        if self.vacuous:
            return "vacuous"
        if any(a.name == "measured_below_bound" and a.holds is False for a in self.assumptions):
            return "violated"
        return {False: "assumptions fail", None: "unverified", True: "holds"}[self.assumptions_hold]

    def __str__(self) -> str:
        lines = [f"{self.name} [{self.status}] run {self.run_id}: {self.theorem}"]
        if not self.evaluable:
            return "\n".join([*lines, f"  not evaluable: {self.reason}"])
        terms = " + ".join(f"{k} {_str_number(v)}" for k, v in self.terms.items())
        lines.append(f"  bound {_str_number(self.value)} = {terms}"
                     + (f"  (vacuous: {self.reason})" if self.vacuous else ""))
        lines.append(f"  measured {self.measured_name} = {_str_number(self.measured)}"
                     f"  vs bound {_str_number(self.bound_on_measured)}")
        for q in self.inputs + self.diagnostics:
            kind = "input" if q in self.inputs else "diagnostic"
            err = "" if math.isnan(q.stderr) else f" +/- {q.stderr:.3g}"
            lines.append(f"  {kind:<10} {q.name:<20} {_str_number(q.value) + err:<24} {q.source}"
                         + (f" [{q.note}]" if q.note else ""))
        for a in self.assumptions:
            holds = {True: "holds", False: "FAILS", None: "n/a"}[a.holds]
            lines.append(f"  assume     {a.name:<20} {holds:<6} measured {_str_number(a.measured)}, "
                         f"threshold {_str_number(a.threshold)}: {a.detail}")
        return "\n".join(lines)

    def to_frame(self) -> pd.DataFrame:
        """Tidy table: one row for the value, the measurement, each term, input, diagnostic and assumption.

        Columns `FRAME_COLUMNS`: ``report, run_id, kind, name, value, stderr, ci_low, ci_high, threshold,
        holds, source`` (``source`` holds an input's source or an assumption's detail); ``kind`` is one of
        ``value``, ``measured``, ``term``, ``input``, ``diagnostic``, ``assumption``.
        """
        nan = math.nan
        base = dict(stderr=nan, ci_low=nan, ci_high=nan, threshold=nan, holds=None)
        rows = [
            {**base, "kind": "value", "name": self.name, "value": self.value,
             "source": self.reason or self.status},
            {**base, "kind": "measured", "name": self.measured_name, "value": self.measured,
             "threshold": self.bound_on_measured, "source": "held against bound_on_measured"},
        ]
        rows += [{**base, "kind": "term", "name": k, "value": v, "source": ""} for k, v in self.terms.items()]
        for kind, quantities in (("input", self.inputs), ("diagnostic", self.diagnostics)):
            rows += [{**base, "kind": kind, "name": q.name, "value": q.value, "stderr": q.stderr,
                      "ci_low": q.ci_low, "ci_high": q.ci_high,
                      "source": q.source + (f" [{q.note}]" if q.note else "")} for q in quantities]
        rows += [{**base, "kind": "assumption", "name": a.name, "value": a.measured, "threshold": a.threshold,
                  "holds": a.holds, "source": a.detail} for a in self.assumptions]
        frame = pd.DataFrame(rows, columns=list(FRAME_COLUMNS[2:]))
        frame.insert(0, "run_id", self.run_id)
        frame.insert(0, "report", self.name)
        return frame

    def to_dict(self) -> dict[str, Any]:
        """Strict-JSON-ready dict (``inf``/NaN become ``None``; ``vacuous``/``evaluable`` say why)."""
        return jsonable({
            "name": self.name, "run_id": self.run_id, "theorem": self.theorem, "status": self.status,
            "value": self.value, "measured": self.measured, "measured_name": self.measured_name,
            "bound_on_measured": self.bound_on_measured, "vacuous": self.vacuous, "evaluable": self.evaluable,
            "reason": self.reason, "terms": dict(self.terms),
            "inputs": [q.to_dict() for q in self.inputs],
            "assumptions": [a.to_dict() for a in self.assumptions],
            "diagnostics": [q.to_dict() for q in self.diagnostics],
        })


# --------------------------------------------------------------------------------------------------
# The run's measurements, read once
# --------------------------------------------------------------------------------------------------


def _not_measurable(name: str, exc: Exception) -> Assumption:
    return Assumption(name, math.nan, math.nan, None, f"not measurable: {exc}")


def _measured(name: str, fn: Callable[[], Assumption]) -> Assumption:
    """``fn()``, or a not-measurable assumption naming what is missing."""
    try:
        return fn()
    except (RunLogError, ValueError) as exc:
        return _not_measurable(name, exc)


class _Run:
    """Everything the reports of one run share; tables are read and estimates computed on first use."""

    def __init__(self, run_dir: str | Path, *, delta: float, lam: float, loss_range: float | None,
                 lipschitz: str, space: str, predictor: str | None, stability_method: str | None,
                 hypothesis: str = "unmasked") -> None:
        if lipschitz not in LIPSCHITZ_QUANTITIES:
            raise ValueError(f"lipschitz={lipschitz!r} is not one of {tuple(LIPSCHITZ_QUANTITIES)}")
        if space not in SPACES:
            raise ValueError(f"space={space!r} is not one of {SPACES}")
        if hypothesis not in HYPOTHESES:
            raise ValueError(f"hypothesis={hypothesis!r} is not one of {HYPOTHESES}")
        # the hypothesis's own predictor: the unmasked model (full), or the expected one (deterministic)
        self.hypothesis, self.suffix = hypothesis, ("" if hypothesis == "unmasked" else f"[{hypothesis}]")
        predictor = predictor or HYPOTHESIS_PREDICTORS[hypothesis]
        if predictor not in BOUND_PREDICTORS:
            raise ValueError(f"predictor={predictor!r} is not one of {BOUND_PREDICTORS}")
        if not 0.0 < delta < 1.0:
            raise ValueError(f"delta must be in (0, 1), got {delta!r}")
        if not (math.isfinite(lam) and lam >= 0.0):
            raise ValueError(f"lam must be a finite number >= 0, got {lam!r}")
        self.dir = Path(run_dir)
        self.log: RunLog = read_run(run_dir)
        self.samples = self.log.table("samples")  # no samples, no risks: let MissingTableError out
        self.step = final_step(self.samples)
        self.delta, self.lam, self.space, self.predictor = delta, lam, space, predictor
        self.lipschitz_quantity = LIPSCHITZ_QUANTITIES[lipschitz]
        self.loss_range = choose_loss_range(self.samples, loss_range, self.step)
        self.requested_method = stability_method
        self.p = float(self._config("lora_dropout", "dropout_rate"))
        self.n, self.n_source = self._n_train()
        self._matrices: dict[str, LossMatrix] = {}

    def _config(self, section: str, key: str) -> Any:
        try:
            return self.log.config[section][key]
        except (KeyError, TypeError):
            raise RunLogError(f"{self.dir}/meta.json has no config.{section}.{key}") from None

    def _n_train(self) -> tuple[int, str]:
        where = "data.n_train" if "n_train" in (self.log.meta.get("data") or {}) else "config.train.n_train"
        return self.log.n_train, f"meta.json {where}"

    # --- inputs ------------------------------------------------------------------------------------

    def risks(self, predictor: str) -> Risks:
        return risks_of(self.matrix("train"), self.matrix("test"), predictor, self.loss_range)

    def r_hat(self, predictor: str) -> Quantity:
        risks = self.risks(predictor)
        return Quantity.of("r_hat", risks.train, risks.source("train") + f" ({risks.train.n} of n={self.n})")

    def matrix(self, split: str) -> LossMatrix:
        if split not in self._matrices:
            self._matrices[split] = loss_matrix(self.samples, split, self.step)
        return self._matrices[split]

    def n_input(self) -> Quantity:
        return Quantity("n_train", self.n, self.n_source)

    def config_inputs(self) -> list[Quantity]:
        return [
            Quantity("dropout_rate", self.p, "meta.json config.lora_dropout.dropout_rate"),
            Quantity("sparsity", sparsity(self.p), "s = 2p - p^2"),
            self.n_input(),
            Quantity("lam", self.lam, "argument (the paper's arbitrary lambda)"),
        ]

    def delta_input(self) -> Quantity:
        return Quantity("delta", self.delta, "argument")

    def expected_scale(self) -> float:
        """``c = E[m_B m_A^T]`` of the run's config: ``(1-p)^2`` without rescale, 1 with it (``(1-p) * 1/(1-p)``)."""
        rescale = self._config("lora_dropout", "rescale")
        return 1.0 if rescale or self.p == 0.0 else (1.0 - self.p) ** 2

    def hypothesis_inputs(self, risks: bool = True) -> list[Quantity]:
        """The hypothesis's own inputs (none for the unmasked model), after checking that the predictor
        whose risks are used is the one the probes measured.

        At ``expected`` the risks are of the ``deterministic`` rows of samples.parquet; they are the
        expected predictor unless the run's eval_mode is ``full`` with ``c != 1`` (then they are the unmasked
        model's, and the run logs no risk of the expected predictor: RunLogError). ``risks=False``: for a
        report that uses no risk (Prop. 4.2), no check.
        """
        if self.hypothesis == "unmasked":
            return []
        c = self.expected_scale()
        if risks and self.predictor == "deterministic":
            mode = self._config("lora_dropout", "eval_mode")
            if mode == "full" and c != 1.0:
                raise RunLogError(
                    f"run {self.dir} evaluated its deterministic predictor with eval_mode='full' (the unmasked dW), "
                    f"so samples.parquet logs no risk of the expected predictor (dW times {c:.6g}) that the "
                    "hypothesis='expected' probes measure; the bound at hypothesis='expected' needs a run trained "
                    "with eval_mode 'expected' or 'ensemble'")
        note = "" if self.predictor == "deterministic" or not risks else (
            f"risks of predictor={self.predictor}, not of the expected predictor the probes measured")
        return [Quantity("expected_scale", c, "meta.json config.lora_dropout: (1-p)^2 without rescale, 1 with; "
                         "the probes' theta(S) is every dW times this (probes.parquet hypothesis=expected)",
                         note=note)]

    def theorem44_needs(self, risks: Risks) -> tuple[Quantity, Quantity]:
        """``lam_needed`` and ``n_needed`` (`bounds.formulas`): what Thm 4.4 would take to say something."""
        eta, hmin, s = self.lipschitz.value, self.hessian_min_eig.value, sparsity(self.p)
        c = risks.loss_range.value
        measured_lam = probe_lam(self.probes, self.lipschitz_quantity, self.space, self.hypothesis)
        lam_q = Quantity("lam_needed", lam_needed(hmin, self.p),
                         f"-Lambda_min / (2 s) = -({hmin:.6g}) / (2*{s:.6g}) (0 when Lambda_min > 0, inf when s = 0): "
                         "D = Lambda_min + 2 lam s > 0 exactly when lam > lam_needed",
                         note=f"eta was measured on the loss regularised with lam={measured_lam:g}; at another lam "
                              "eta changes too (the regulariser's gradient is 2 lam s dW)")
        value = n_needed(c, eta, hmin, self.lam, self.p, self.delta)
        d = hmin + 2.0 * self.lam * s
        if math.isinf(value):
            note = (f"D = {d:.6g} <= 0 at lam={self.lam:g}: the bound is vacuous for every n; it is not "
                    "evaluated at another lam because eta was measured at this one (see lam_needed)")
        else:
            note = f"n_needed / n = {value / self.n:.4g} (n = {self.n})"
        n_q = Quantity("n_needed", value,
                       f"(C^2 + 24 C eta^2 / D) / (2 delta C^2) with C={c:.6g}, eta={eta:.6g}, D={d:.6g} "
                       f"(lam={self.lam:g}), delta={self.delta:g}: Thm 4.4's gap < C exactly when n > n_needed",
                       note=note)
        return lam_q, n_q

    @cached_property
    def probes(self) -> pd.DataFrame:
        return self.log.table("probes")

    def lipschitz_coverage_text(self, probed: int) -> str:
        """``eta: max over 128 of n=500 training examples (subset)`` (or ``(all)``)."""
        what = "max" if self.lipschitz_quantity == "lipschitz_max" else "99% quantile"
        subset = "subset" if probed < self.n else "all"
        return f"eta: {what} over {probed} of n={self.n} training examples ({subset})"

    @cached_property
    def lipschitz(self) -> Quantity:
        q = probe_quantity(self.probes, self.lipschitz_quantity, self.space, name="lipschitz", run_dir=self.dir,
                           hypothesis=self.hypothesis)
        if q.n is not None and q.n < self.n:
            q = replace(q, note=self.lipschitz_coverage_text(q.n)
                        + ": can only under-estimate the value over all n the bound needs")
        return q

    @cached_property
    def hessian_min_eig(self) -> Quantity:
        q = probe_quantity(self.probes, "hessian_min_eig", self.space, run_dir=self.dir, hypothesis=self.hypothesis)
        notes = []
        if q.n is not None and q.n < self.n:
            notes.append(f"Hessian of the mean loss over {q.n} of n={self.n} training examples (subset)")
        converged, residual = probe_convergence(self.probes, "hessian_min_eig", self.space, self.hypothesis)
        if converged is not True:
            notes.append(self._unconverged_text(converged, residual)
                         + ": not a measured eigenvalue (an unconverged estimate of Lambda_min)")
        return replace(q, note="; ".join(notes)) if notes else q

    @staticmethod
    def _unconverged_text(converged: bool | None, residual: float) -> str:
        if converged is None:
            return "probes.parquet does not record whether Lanczos converged (rerun lora-dropout probe)"
        return f"Lanczos did not converge (residual ||H v - Lambda v|| = {_str_number(residual)})"

    @cached_property
    def stability(self) -> pd.DataFrame:
        return self.log.table("stability")

    def methods(self) -> list[str]:
        return [self.requested_method] if self.requested_method else stability_methods(self.stability)

    def method(self) -> str:
        """The leave-one-out method plugged into the bounds: the requested one or the most trustworthy."""
        methods = self.methods()
        if not methods:
            raise RunLogError(f"{self.dir}/stability.parquet has no rows")
        return methods[0]

    def beta_hat(self, method: str, clipped: bool) -> StabilityEstimate:
        clip = self.loss_range.clip if clipped else None
        return estimate_stability(self.stability, method, loss_range=clip, run_dir=self.dir)

    @cached_property
    def lam_eff(self) -> Quantity:
        source = ("(mean member - mean deterministic training loss) / (s sum ||dW||^2); "
                  "modules.parquet dw_norm")
        note = "toolkit's own estimate, not in the paper; assumes a second-order expansion of the masked loss"
        try:
            e = estimate_lam_eff(self.samples, self.log.table("modules"), self.p, step=self.step)
        except (RunLogError, ValueError) as exc:
            return Quantity("lam_eff", math.nan, source, note=f"not available: {exc}")
        return Quantity.of("lam_eff", e, source, note)

    # --- assumptions -------------------------------------------------------------------------------

    def loss_range_assumption(self) -> Assumption:
        c = self.loss_range
        if c.rigorous:
            return Assumption("loss_range", c.value, c.value, True,
                              f"every loss is clipped at C={c.value:g}, so it lies in [0, C]")
        return Assumption("loss_range", c.value, math.nan, None,
                          "C is the observed maximum loss (heuristic): cross-entropy is unbounded, so no "
                          "C holds for unseen examples; pass loss_range to clip (rigorous)")

    def lambda_min_unmeasured(self) -> str:
        """Why ``Lambda_min`` is not a measurement (Lanczos did not converge, or not recorded); "" if it is."""
        converged, residual = probe_convergence(self.probes, "hessian_min_eig", self.space, self.hypothesis)
        return "" if converged is True else self._unconverged_text(converged, residual)

    def psd(self) -> Assumption:
        h = self.hessian_min_eig.value
        why = self.lambda_min_unmeasured()
        if why:
            return Assumption("psd_hessian", h, 0.0, None,
                              f"not measured: {why}; Lambda_min = {h:.6g} ({self.space}) is not an eigenvalue, "
                              "so Prop. 4.2's PSD premise (Lambda_min >= 0) is neither held nor failed")
        return Assumption("psd_hessian", h, 0.0, h >= 0,
                          f"Lambda_min = {h:.6g} ({self.space}) must be >= 0 for Prop. 4.2's PSD premise")

    def denominator(self) -> Assumption:
        h = self.hessian_min_eig.value
        d = h + 2.0 * self.lam * sparsity(self.p)
        approximate = ("; in factors space the regulariser's Hessian is not 2 lam s I, so D is approximate"
                       if self.space == "factors" else "")
        why = self.lambda_min_unmeasured()
        detail = (f"D = Lambda_min + 2 lam s = {h:.6g} + 2*{self.lam:g}*{sparsity(self.p):.6g}" + approximate
                  + (f"; not measured: {why}" if why else ""))
        return Assumption("positive_denominator", d, 0.0, None if why else d > 0, detail)

    def lipschitz_coverage(self) -> Assumption:
        """``eta`` as a max over every training example, or over the probed subset only."""
        def measure() -> Assumption:
            probed = self.lipschitz.n
            if probed is None:
                raise RunLogError("probes.parquet records no n for the Lipschitz row")
            text = self.lipschitz_coverage_text(probed)
            if probed >= self.n:
                return Assumption("lipschitz_coverage", probed, self.n, True, text)
            return Assumption("lipschitz_coverage", probed, self.n, None,
                              f"{text}: a maximum over a subset can only under-estimate the one over all n "
                              "the bound needs (probe with --lipschitz-examples unset for all)")

        return _measured("lipschitz_coverage", measure)

    def stationarity(self) -> Assumption:
        def measure() -> Assumption:
            grad = probe_quantity(self.probes, "grad_norm", self.space, run_dir=self.dir,
                                  hypothesis=self.hypothesis).value
            scale = probe_quantity(self.probes, "lipschitz_mean", self.space, run_dir=self.dir,
                                   hypothesis=self.hypothesis).value
            ratio = grad / scale if scale > 0 else math.inf
            return Assumption("stationarity", ratio, STATIONARITY_THRESHOLD, ratio < STATIONARITY_THRESHOLD,
                              f"||grad L|| / mean per-sample gradient norm = {grad:.6g} / {scale:.6g} "
                              f"({self.space}); holds when < {STATIONARITY_THRESHOLD:g} (toolkit convention)")

        return _measured("stationarity", measure)

    def lipschitz_lam(self) -> Assumption:
        def measure() -> Assumption:
            measured = probe_lam(self.probes, self.lipschitz_quantity, self.space, self.hypothesis)
            if math.isnan(measured):
                return Assumption("lipschitz_lam", measured, self.lam, None,
                                  "the Lipschitz probe did not record the lam of its regularised loss")
            return Assumption("lipschitz_lam", measured, self.lam, math.isclose(measured, self.lam),
                              f"eta was measured on the loss regularised with lam={measured:g}; "
                              f"the bound uses lam={self.lam:g}")

        return _measured("lipschitz_lam", measure)

    def closeness(self, method: str) -> Assumption:
        def measure() -> Assumption:
            st = self.beta_hat(method, clipped=False)
            scale = math.sqrt(dw_norm_squared(self.log.table("modules"), self.step))
            if math.isnan(st.param_distance_max):
                raise RunLogError(f"stability.parquet method={method} records no param_distance")
            ratio = st.param_distance_max / scale if scale > 0 else math.inf
            return Assumption("closeness", ratio, CLOSENESS_THRESHOLD, ratio < CLOSENESS_THRESHOLD,
                              f"max_i ||theta(S^i) - theta(S)|| / sqrt(sum ||dW||^2) = "
                              f"{st.param_distance_max:.6g} / {scale:.6g} ({method}, k={st.beta_hat.n}); "
                              f"holds when < {CLOSENESS_THRESHOLD:g} (toolkit convention)")

        return _measured("closeness", measure)

    def stability_below_theory(self, method: str) -> Assumption:
        def measure() -> Assumption:
            if self.hypothesis != "unmasked":
                raise RunLogError(UNMASKED_STABILITY)
            b = self.prop42()
            st = self.beta_hat(method, clipped=False)
            beta_hat = st.beta_hat.value
            return Assumption("stability_below_theory", beta_hat, b.value, beta_hat <= b.value,
                              f"beta_hat ({method}) <= Prop. 4.2 beta"
                              + (f" (vacuous: {b.reason})" if b.vacuous else ""))

        return _measured("stability_below_theory", measure)

    def prop42(self) -> BoundValue:
        """Prop. 4.2's theoretical ``beta`` (the same for every leave-one-out method)."""
        return stability_bound(self.lipschitz.value, self.hessian_min_eig.value, self.lam, self.p, self.n)

    def probe_premises(self) -> list[Assumption]:
        """The premises of Prop. 4.2 measured by the probes."""
        return [self.psd(), self.denominator(), self.stationarity(), self.lipschitz_lam(),
                self.lipschitz_coverage()]

    def theorem44_premises(self) -> list[Assumption]:
        """Prop. 4.2's premises and its conclusion (beta_hat <= beta), which Thm 4.4 substitutes."""
        try:
            method = self.method()
        except RunLogError as exc:
            return [*self.probe_premises(), _not_measurable("closeness", exc),
                    _not_measurable("stability_below_theory", exc)]
        return [*self.probe_premises(), self.closeness(method), self.stability_below_theory(method)]


def _measured_below(measured: float, bound: float, vacuous: bool, what: str) -> Assumption:
    detail = f"{what} <= bound" + (" (trivially: the bound is vacuous)" if vacuous else "")
    return Assumption("measured_below_bound", measured, bound, measured <= bound, detail)


def _risk_report(run: _Run, name: str, b: BoundValue, risks: Risks, inputs: list[Quantity],
                 assumptions: list[Assumption], diagnostics: tuple[Quantity, ...] = (),
                 r_hat: float | None = None, measured_name: str | None = None,
                 theorem: str | None = None) -> BoundReport:
    r_hat = risks.train.value if r_hat is None else r_hat
    measured = risks.test.value - r_hat
    bound_on = sum(v for k, v in b.terms.items() if k != "r_hat") if not b.vacuous else math.inf
    clipped = f", clipped at C={risks.loss_range.value:g}" if risks.loss_range.rigorous else ""
    measured_name = measured_name or f"R - R_hat ({risks.predictor}{clipped})"
    assumptions = [*assumptions, _measured_below(measured, bound_on, b.vacuous, measured_name)]
    return BoundReport(name + run.suffix, run.log.run_id, theorem or THEOREMS[name] + _at(run), b.value,
                       measured, measured_name, bound_on, b.terms, tuple(inputs), tuple(assumptions), diagnostics,
                       b.vacuous, reason=b.reason)


def _at(run: _Run) -> str:
    """`` at the expected predictor (...)`` for a report at a hypothesis other than the unmasked model."""
    if run.hypothesis == "unmasked":
        return ""
    return (f", at the {run.hypothesis} predictor (every dW times its training mean, probes.parquet "
            f"hypothesis={run.hypothesis})")


# --------------------------------------------------------------------------------------------------
# The reports
# --------------------------------------------------------------------------------------------------


def _prop42_reports(run: _Run) -> list[BoundReport]:
    reports = []
    run.method()  # raises when there is no stability table or it has no rows
    for method in run.methods():
        name = f"prop42[{method}]"
        try:
            b = run.prop42()
            st = run.beta_hat(method, clipped=False)
        except (RunLogError, ValueError) as exc:
            reports.append(BoundReport.not_evaluable(name, run.log.run_id, THEOREMS["prop42"], str(exc)))
            continue
        inputs = [run.lipschitz, run.hessian_min_eig, *run.config_inputs(),
                  Quantity.of("beta_hat", st.beta_hat, st.source)]
        assumptions = [*run.probe_premises(), run.closeness(method),
                       _measured_below(st.beta_hat.value, b.value, b.vacuous, f"beta_hat ({method})")]
        reports.append(BoundReport(name, run.log.run_id, THEOREMS["prop42"], b.value, st.beta_hat.value,
                                   f"beta_hat ({method})", b.value, b.terms, tuple(inputs),
                                   tuple(assumptions), (run.lam_eff,), b.vacuous, reason=b.reason))
    return reports


def _beta_1(run: _Run, st: StabilityEstimate) -> Quantity:
    """Upper plug-in for the hypothesis stability ``beta_1`` of Lemma 4.3's corrected form.

    ``beta_1 = E_i mean_j |loss_j(theta(S^i)) - loss_j(theta(S))|`` needs every training example's loss
    under each ``theta(S^i)``; stability.parquet has only the removed example's. With an
    ``eta``-Lipschitz loss in the parameters, ``|loss_j(theta') - loss_j(theta)| <= eta ||theta' - theta||``,
    so ``beta_1 <= eta * mean_i ||theta(S^i) - theta(S)||``: derivable only when ``eta`` and
    ``param_distance`` are in the same parameter space. ``param_distance`` is measured on the merged
    updates (`bounds.runlog.PARAM_DISTANCE_SPACE`, ``delta_w``), so ``eta`` must be the ``delta_w`` probe.
    """
    if run.space != PARAM_DISTANCE_SPACE:
        raise ValueError(
            "form='corrected' needs beta_1 = mean over removed i of mean_j |loss_j(theta(S^i)) - "
            "loss_j(theta(S))|, which stability.parquet does not record (only the removed example's own "
            "loss); it is bounded by eta * mean ||theta(S^i) - theta(S)|| only when both are in one parameter "
            f"space, but eta is in space={run.space!r} and stability.parquet's param_distance in "
            f"space={PARAM_DISTANCE_SPACE!r}: use space={PARAM_DISTANCE_SPACE!r}")
    if math.isnan(st.param_distance_mean):
        raise ValueError(f"form='corrected' needs param_distance in stability.parquet "
                         f"(method={st.method} records none)")
    return Quantity("stability_1", run.lipschitz.value * st.param_distance_mean,
                    f"eta ({run.lipschitz_quantity}, {run.space}) * mean_i param_distance ({st.method}, "
                    f"{PARAM_DISTANCE_SPACE}, k={st.beta_hat.n})",
                    note="Lipschitz upper plug-in for beta_1 (eta measured at theta(S), used along the segment "
                         "to theta(S^i)); both cover the adapted modules' dW only, the head is held fixed")


def _lemma43_report(run: _Run, form: Lemma43Form) -> BoundReport:
    method = run.method()
    st = run.beta_hat(method, clipped=True)
    risks = run.risks(run.predictor)
    inputs = [run.r_hat(run.predictor), run.loss_range.quantity(), run.n_input(), run.delta_input(),
              Quantity.of("stability", st.beta_hat, st.source, "measured beta_hat plugged in for beta")]
    stability_1 = None
    if form is Lemma43Form.CORRECTED:
        beta_1 = _beta_1(run, st)
        inputs.append(beta_1)
        stability_1 = beta_1.value
    b = lemma43_bound(risks.train.value, run.loss_range.value, run.n, run.delta, st.beta_hat.value,
                      stability_1, form)
    constant = "12 C n beta (printed)" if form is Lemma43Form.PRINTED else "6 C n (beta_1 + beta) (corrected)"
    return _risk_report(run, "lemma43", b, risks, inputs, [run.loss_range_assumption()],
                        theorem=f"{THEOREMS['lemma43']}, constant {constant}")


def _theorem44_report(run: _Run) -> BoundReport:
    risks = run.risks(run.predictor)
    b = theorem44_bound(risks.train.value, run.loss_range.value, run.lipschitz.value,
                        run.hessian_min_eig.value, run.lam, run.p, run.n, run.delta)
    inputs = [run.r_hat(run.predictor), run.loss_range.quantity(), run.lipschitz, run.hessian_min_eig,
              *run.config_inputs(), run.delta_input(), *run.hypothesis_inputs()]
    assumptions = [run.loss_range_assumption(), *run.theorem44_premises()]
    return _risk_report(run, "theorem44", b, risks, inputs, assumptions, (run.lam_eff, *run.theorem44_needs(risks)))


def _prop42_hypothesis_report(run: _Run) -> BoundReport:
    """Prop. 4.2's ``beta`` at a hypothesis other than the unmasked model: no ``beta_hat`` to hold it against."""
    b = run.prop42()
    inputs = [run.lipschitz, run.hessian_min_eig, *run.config_inputs(), *run.hypothesis_inputs(risks=False)]
    try:
        closeness = run.closeness(run.method())
    except RunLogError as exc:
        closeness = _not_measurable("closeness", exc)
    below = Assumption("measured_below_bound", math.nan, b.value, None, f"not measurable: {UNMASKED_STABILITY}")
    return BoundReport("prop42" + run.suffix, run.log.run_id, THEOREMS["prop42"] + _at(run), b.value, math.nan,
                       f"beta_hat ({run.hypothesis} predictor: not measured)", b.value, b.terms, tuple(inputs),
                       (*run.probe_premises(), closeness, below), (run.lam_eff,), b.vacuous, reason=b.reason)


def _uniform_report(run: _Run) -> BoundReport:
    method = run.method()
    st = run.beta_hat(method, clipped=True)
    risks = run.risks(run.predictor)
    b = uniform_stability_bound(risks.train.value, run.loss_range.value, run.n, run.delta, st.max_change)
    inputs = [run.r_hat(run.predictor), run.loss_range.quantity(), run.n_input(), run.delta_input(),
              Quantity("stability", st.max_change,
                       st.source.replace("|loss_si - loss_s|", "max |loss_si - loss_s|"), n=st.beta_hat.n,
                       note="plug-in: Thm 12 needs the uniform stability")]
    uniform = Assumption("uniform_stability", st.max_change, math.nan, None,
                         "Thm 12 needs the uniform stability sup over sets, removed indices and test points; "
                         f"the plug-in is the max over k={st.beta_hat.n} removed examples of their own loss "
                         "change, which can only under-estimate it")
    return _risk_report(run, "uniform_stability", b, risks, inputs, [run.loss_range_assumption(), uniform])


def _jensen(run: _Run) -> tuple[Quantity, Assumption]:
    """Measured Jensen gap on the test split (of the clipped losses when ``C`` is given)."""
    m = run.matrix("test")
    clip = run.loss_range.clip
    member = m.member if clip is None else m.member.clip(max=clip)
    ensemble = predictor_losses(m, "ensemble", clip)
    e = estimate_jensen_gap(member, ensemble)
    worst = float((member.mean(axis=0) - ensemble).min())
    average = run.log.config.get("lora_dropout", {}).get("ensemble_average", "unknown")
    clipped = "" if clip is None else f"; clipped at C={clip:g}, which is not convex, so Jensen may fail"
    source = (f"samples.parquet step={run.step} split=test: mean member loss - ensemble loss "
              f"({m.member.shape[0]} members, average={average}{clipped})")
    gap = Quantity.of("jensen_gap", e, source)
    holds = Assumption("jensen", worst, -JENSEN_TOLERANCE, worst >= -JENSEN_TOLERANCE,
                       "smallest per-sample Jensen gap (Thm 4.5: >= 0 for a loss convex in the averaged "
                       f"output); tolerance {JENSEN_TOLERANCE:g} for float32 losses")
    return gap, holds


def _ensemble_report(run: _Run) -> BoundReport:
    member = run.risks("member_mean")
    ensemble = run.risks("ensemble")
    b = ensemble_risk_bound(member.train.value, run.loss_range.value, run.lipschitz.value,
                            run.hessian_min_eig.value, run.lam, run.p, run.n, run.delta)
    gap, jensen = _jensen(run)
    r_hat = Quantity.of("r_hat", member.train, member.source("train") + " (member_train_risk)")
    inputs = [r_hat, run.loss_range.quantity(), run.lipschitz, run.hessian_min_eig, *run.config_inputs(),
              run.delta_input(), gap]
    assumptions = [run.loss_range_assumption(), jensen, *run.theorem44_premises()]
    clipped = f", clipped at C={run.loss_range.value:g}" if run.loss_range.rigorous else ""
    return _risk_report(run, "ensemble", b, ensemble, inputs, assumptions, r_hat=member.train.value,
                        measured_name=f"R(ensemble) - R_hat(member_mean){clipped}")


def evaluate_run(
    run_dir: str | Path,
    delta: float = 0.05,
    lam: float = 1.0,
    loss_range: float | None = None,
    lipschitz: str = "max",
    space: str = "delta_w",
    predictor: str | None = None,
    form: Lemma43Form | str = Lemma43Form.PRINTED,
    stability_method: str | None = None,
    hypothesis: str | tuple[str, ...] | list[str] = "unmasked",
    posterior_std_grid: tuple[float, ...] | list[float] | None = None,
) -> list[BoundReport]:
    """Evaluate every bound of the paper on a run and hold each against its measurement.

    Parameters
    ----------
    run_dir : path
        A run directory (`bounds.runlog`).
    delta : float
        Failure probability of the risk bounds.
    lam : float
        ``lambda`` of Prop. 4.2 / Thm 4.4 (arbitrary in the paper; compare with the ``lam_eff``
        diagnostic).
    loss_range : float, optional
        ``C``. Given: all risks and ``beta_hat`` use the loss clipped at ``C`` (rigorous). Default: the
        observed maximum loss at the final step, no clipping (heuristic, labelled so).
    lipschitz : {"max", "q99"}
        Which probe row is ``eta``: ``lipschitz_max`` or ``lipschitz_q99``.
    space : {"delta_w", "factors"}
        Parameter space of the probes.
    predictor : {"full", "deterministic", "member_mean", "ensemble"}, optional
        Whose ``R_hat`` and ``R`` the risk bounds (Lemma 4.3, Thm 4.4, B&E Thm 12) use. Default: the
        hypothesis's own, ``full`` (the unmasked model, theta(S), whose curvature and stability the probes
        measure) or, at ``hypothesis="expected"``, ``deterministic`` (checked to be the expected predictor:
        a run with eval_mode ``full`` does not log it, and its expected reports are not evaluable). The
        ensemble report always uses the ensemble's test risk and the member-mean training risk.
    form : {"printed", "corrected"}
        Constant of Lemma 4.3; ``corrected`` needs ``beta_1`` (see the ``lemma43`` report's reason).
    stability_method : str, optional
        Leave-one-out method plugged into Lemma 4.3 and B&E Thm 12 (default: retrain, else warm_start,
        else influence). Prop. 4.2 is reported for every method present.
    hypothesis : {"unmasked", "expected"} or a sequence of them
        The predictor whose probes (probes.parquet's ``hypothesis`` rows) and risks the bounds use.
        ``unmasked`` (default): every report below. ``expected`` (every ``dW`` times its training mean,
        the mean predictor of the masked loss training minimised; ``lora-dropout probe RUN_DIR --curvature
        --hypothesis expected``): only ``prop42[expected]`` (Prop. 4.2's ``beta``; no ``beta_hat`` to hold
        it against: stability.parquet is leave-one-out of the unmasked model) and ``theorem44[expected]``.
        A sequence gives each hypothesis's reports in turn.
    posterior_std_grid : floats, optional
        The grid ``lora-dropout certify`` was given, for the certificate's ``grid_fixed_in_advance`` audit
        (default: `bounds.runlog.DEFAULT_POSTERIOR_STD_GRID`); used only when the run has
        ``certificates.parquet``.

    Returns
    -------
    list of BoundReport
        ``prop42[<method>]`` (one per method), ``lemma43``, ``theorem44``, ``uniform_stability``,
        ``ensemble``. A missing table or measurement gives a not-evaluable report naming the command
        that produces it. When the run has ``certificates.parquet``, also the toolkit's own PAC-Bayes
        dropout certificate (`bounds.certificate_report`): ``pacbayes_dropout`` and
        ``pacbayes_dropout_ensemble``.

    Raises
    ------
    MissingTableError
        When ``samples.parquet`` is missing: without it there is no risk to bound.
    ValueError
        On an unknown option.
    """
    form = Lemma43Form(form)
    if not isinstance(hypothesis, str):  # several: each one's reports in turn
        hypotheses = list(dict.fromkeys(hypothesis))
        if not hypotheses:
            raise ValueError("hypothesis: give at least one of " + ", ".join(HYPOTHESES))
        return [r for h in hypotheses for r in evaluate_run(
            run_dir, delta=delta, lam=lam, loss_range=loss_range, lipschitz=lipschitz, space=space,
            predictor=predictor, form=form, stability_method=stability_method, hypothesis=h,
            posterior_std_grid=posterior_std_grid)]
    run = _Run(run_dir, delta=delta, lam=lam, loss_range=loss_range, lipschitz=lipschitz, space=space,
               predictor=predictor, stability_method=stability_method, hypothesis=hypothesis)
    run_id = run.log.run_id
    if hypothesis != "unmasked":
        reports = []
        for name, build in (("prop42", lambda: _prop42_hypothesis_report(run)),
                            ("theorem44", lambda: _theorem44_report(run))):
            try:
                reports.append(build())
            except (RunLogError, ValueError) as exc:
                reports.append(BoundReport.not_evaluable(name + run.suffix, run_id, THEOREMS[name] + _at(run),
                                                         str(exc)))
        return reports
    try:
        reports = _prop42_reports(run)
    except RunLogError as exc:  # no stability rows: no method to report on
        reports = [BoundReport.not_evaluable("prop42", run_id, THEOREMS["prop42"], str(exc))]
    builders = {"lemma43": lambda: _lemma43_report(run, form), "theorem44": lambda: _theorem44_report(run),
                "uniform_stability": lambda: _uniform_report(run), "ensemble": lambda: _ensemble_report(run)}
    for name, build in builders.items():
        try:
            reports.append(build())
        except (RunLogError, ValueError) as exc:
            reports.append(BoundReport.not_evaluable(name, run_id, THEOREMS[name], str(exc)))
    from .certificate_report import reports_if_certified  # imports this module: not at the top

    reports += reports_if_certified(run_dir, posterior_std_grid)
    return reports
