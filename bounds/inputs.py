"""The measured inputs of one run, derived once: `RunInputs`.

Every number a bound takes from a run, each a `bounds.estimators.Quantity` with its source: ``p`` and ``n``
(``meta.json``, read through `bounds.runlog.RunMeta`), the loss range ``C`` and the risks of each predictor
(``samples.parquet`` at the final step), ``eta`` with its coverage and ``Lambda_min`` with its Lanczos
convergence (``probes.parquet``, at the hypothesis asked for), ``beta_hat`` of each leave-one-out method
(``stability.parquet``) and ``lam_eff`` (``modules.parquet``). The reports (`bounds.report`), the ensemble
compression (`bounds.compression`) and the bound curves (`bounds.curves`) all read them here.

A table is read, and an estimate computed, on first use: a report that needs a missing table raises the
`bounds.runlog.RunLogError` naming its producer, and the others are unaffected.
"""

from __future__ import annotations

import math
from dataclasses import replace
from functools import cached_property
from pathlib import Path

import pandas as pd

from .estimators import (
    LossMatrix,
    LossRange,
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
from .formulas import estimate_jensen_gap, sparsity
from .runlog import BoundPredictor, Hypothesis, RunLog, RunLogError, read_run
from .settings import BoundSettings
from .validation import check_option

__all__ = ["RunInputs", "number_text"]


def number_text(x: float) -> str:
    """``x`` in 6 significant digits, or ``n/a`` for NaN (how reports print a number)."""
    return "n/a" if isinstance(x, float) and math.isnan(x) else f"{x:.6g}"


class RunInputs:
    """The measured inputs of one run at one hypothesis, under one `BoundSettings`.

    Parameters
    ----------
    run_dir : path
        A run directory (`bounds.runlog`).
    settings : BoundSettings
        How the inputs are measured (``loss_range``, ``lipschitz``, ``space``, ``predictor``,
        ``stability_method``) and the arguments ``lam`` and ``delta``.
    hypothesis : {"unmasked", "expected"}
        Whose probes (probes.parquet's ``hypothesis`` rows) ``eta`` and ``Lambda_min`` are.
    step : int, optional
        Evaluation step of samples.parquet; default the final one with both splits.

    Every attribute is computed on first use and kept; one that needs a missing table or row raises
    `bounds.runlog.RunLogError` (a `MissingTableError` or `MissingMeasurementError` naming its producer).
    """

    def __init__(self, run_dir: str | Path, settings: BoundSettings | None = None, *,
                 hypothesis: Hypothesis | str = Hypothesis.UNMASKED, step: int | None = None) -> None:
        self.settings = BoundSettings() if settings is None else settings
        self.hypothesis = check_option(Hypothesis, "hypothesis", hypothesis)
        self.dir = Path(run_dir)
        self.log: RunLog = read_run(run_dir)
        self._step = step
        self._matrices: dict[str, LossMatrix] = {}

    def require_core(self) -> None:
        """Read what every report needs (samples, its step, ``C``, ``p``, ``n``), so that a run without
        them fails at once: no samples, no risk to bound."""
        for name in ("samples", "step", "loss_range", "p", "n"):
            getattr(self, name)

    @property
    def run_id(self) -> str:
        return self.log.run_id

    @property
    def space(self) -> str:
        """The probes' parameter space, as the plain string of `bounds.runlog.Space`."""
        return self.settings.space.value

    @property
    def predictor(self) -> BoundPredictor:
        """The predictor whose risks the risk bounds use (`BoundSettings.predictor_for` the hypothesis)."""
        return self.settings.predictor_for(self.hypothesis)

    # --- meta.json and the arguments ---------------------------------------------------------------

    @cached_property
    def p(self) -> Quantity:
        return Quantity("dropout_rate", self.log.meta.dropout_rate, "meta.json config.lora_dropout.dropout_rate")

    @cached_property
    def n(self) -> Quantity:
        """``n_train``: an int value (meta.json ``data.n_train``, else ``config.train.n_train``)."""
        return Quantity("n_train", self.log.meta.n_train, f"meta.json {self.log.meta.n_train_source}")

    @property
    def sparsity(self) -> Quantity:
        return Quantity("sparsity", sparsity(self.p.value), "s = 2p - p^2")

    @property
    def lam(self) -> Quantity:
        return Quantity("lam", self.settings.lam, "argument (the paper's arbitrary lambda)")

    @property
    def delta(self) -> Quantity:
        return Quantity("delta", self.settings.delta, "argument")

    @cached_property
    def expected_scale(self) -> float:
        """``c = E[m_B m_A^T]`` of the run's config: ``(1-p)^2`` without rescale, 1 with it (``(1-p) * 1/(1-p)``)."""
        p = self.p.value
        return 1.0 if self.log.meta.rescale or p == 0.0 else (1.0 - p) ** 2

    @property
    def eval_mode(self) -> str:
        return self.log.meta.eval_mode

    @property
    def ensemble_average(self) -> str:
        return self.log.meta.ensemble_average

    # --- samples.parquet: C and the risks ----------------------------------------------------------

    @cached_property
    def samples(self) -> pd.DataFrame:
        return self.log.table("samples")

    @cached_property
    def step(self) -> int:
        return final_step(self.samples) if self._step is None else int(self._step)

    @cached_property
    def loss_range(self) -> LossRange:
        """``C``: given (every loss clipped at it, rigorous) or the observed maximum at `step` (heuristic)."""
        return choose_loss_range(self.samples, self.settings.loss_range, self.step)

    def matrix(self, split: str) -> LossMatrix:
        """The (sample x instance) loss matrix of a split at `step`."""
        if split not in self._matrices:
            self._matrices[split] = loss_matrix(self.samples, split, self.step)
        return self._matrices[split]

    @cached_property
    def jensen(self) -> tuple[Quantity, float]:
        """The measured Jensen gap of Thm 4.5 on the test split (of the clipped losses when ``C`` is given),
        and the smallest per-sample gap."""
        m = self.matrix("test")
        clip = self.loss_range.clip
        member = m.member if clip is None else m.member.clip(max=clip)
        ensemble = predictor_losses(m, "ensemble", clip)
        e = estimate_jensen_gap(member, ensemble)
        worst = float((member.mean(axis=0) - ensemble).min())
        try:
            average = self.ensemble_average
        except RunLogError:
            average = "unknown"
        clipped = "" if clip is None else f"; clipped at C={clip:g}, which is not convex, so Jensen may fail"
        source = (f"samples.parquet step={self.step} split=test: mean member loss - ensemble loss "
                  f"({m.member.shape[0]} members, average={average}{clipped})")
        return Quantity.of("jensen_gap", e, source), worst

    def risks(self, predictor: BoundPredictor | str) -> Risks:
        return risks_of(self.matrix("train"), self.matrix("test"), predictor, self.loss_range)

    def r_hat(self, predictor: BoundPredictor | str) -> Quantity:
        risks = self.risks(predictor)
        return Quantity.of("r_hat", risks.train, risks.source("train") + f" ({risks.train.n} of n={self.n.value})")

    # --- probes.parquet: eta, Lambda_min -----------------------------------------------------------

    @cached_property
    def probes(self) -> pd.DataFrame:
        return self.log.table("probes")

    def probe(self, quantity: str, name: str | None = None) -> Quantity:
        """A probes.parquet row at the settings' space and this hypothesis."""
        return probe_quantity(self.probes, quantity, self.space, name=name, run_dir=self.dir,
                              hypothesis=self.hypothesis)

    def lipschitz_coverage_text(self, probed: int) -> str:
        """``eta: max over 128 of n=500 training examples (subset)`` (or ``(all)``)."""
        what = "max" if self.settings.lipschitz_quantity == "lipschitz_max" else "99% quantile"
        subset = "subset" if probed < self.n.value else "all"
        return f"eta: {what} over {probed} of n={self.n.value} training examples ({subset})"

    @cached_property
    def lipschitz(self) -> Quantity:
        """``eta``, noted when it is a maximum over a subset of the training examples."""
        q = self.probe(self.settings.lipschitz_quantity, name="lipschitz")
        if q.n is not None and q.n < self.n.value:
            q = replace(q, note=self.lipschitz_coverage_text(q.n)
                        + ": can only under-estimate the value over all n the bound needs")
        return q

    @cached_property
    def lipschitz_lam(self) -> float:
        """The ``lam`` of the regularised loss ``eta`` was measured on (NaN when not recorded)."""
        return probe_lam(self.probes, self.settings.lipschitz_quantity, self.space, self.hypothesis)

    @cached_property
    def hessian_convergence(self) -> tuple[bool | None, float]:
        """``(converged, residual)`` of the Lanczos run behind ``Lambda_min`` (`probe_convergence`)."""
        return probe_convergence(self.probes, "hessian_min_eig", self.space, self.hypothesis)

    @property
    def lambda_min_unmeasured(self) -> str:
        """Why ``Lambda_min`` is not a measurement (Lanczos did not converge, or not recorded); "" if it is."""
        converged, residual = self.hessian_convergence
        if converged is True:
            return ""
        if converged is None:
            return "probes.parquet does not record whether Lanczos converged (rerun lora-dropout probe)"
        return f"Lanczos did not converge (residual ||H v - Lambda v|| = {number_text(residual)})"

    @cached_property
    def hessian_min_eig(self) -> Quantity:
        """``Lambda_min``, noted when over a subset or when Lanczos did not converge."""
        q = self.probe("hessian_min_eig")
        notes = []
        if q.n is not None and q.n < self.n.value:
            notes.append(f"Hessian of the mean loss over {q.n} of n={self.n.value} training examples (subset)")
        why = self.lambda_min_unmeasured
        if why:
            notes.append(why + ": not a measured eigenvalue (an unconverged estimate of Lambda_min)")
        return replace(q, note="; ".join(notes)) if notes else q

    # --- stability.parquet: beta_hat ---------------------------------------------------------------

    @cached_property
    def stability(self) -> pd.DataFrame:
        return self.log.table("stability")

    def methods(self) -> list[str]:
        """The leave-one-out methods reported on: the requested one, or every one present, best first."""
        requested = self.settings.stability_method
        return [requested] if requested else stability_methods(self.stability)

    def method(self) -> str:
        """The leave-one-out method plugged into the bounds: the requested one or the most trustworthy."""
        methods = self.methods()
        if not methods:
            raise RunLogError(f"{self.dir}/stability.parquet has no rows")
        return methods[0]

    def beta_hat(self, method: str, clipped: bool) -> StabilityEstimate:
        """``beta_hat`` of a method; ``clipped``: of the loss clipped at the given ``C`` (Lemma 4.3's)."""
        clip = self.settings.loss_range if clipped else None
        return estimate_stability(self.stability, method, loss_range=clip, run_dir=self.dir)

    # --- modules.parquet: ||dW|| and lam_eff -------------------------------------------------------

    @cached_property
    def dw_norm(self) -> float:
        """``sqrt(sum_k ||dW_k||^2)`` at `step`."""
        return math.sqrt(dw_norm_squared(self.log.table("modules"), self.step))

    @cached_property
    def lam_eff(self) -> Quantity:
        """The masks' effective regularisation strength (`bounds.estimators.estimate_lam_eff`; NaN, with
        the reason in its note, when not available)."""
        source = ("(mean member - mean deterministic training loss) / (s sum ||dW||^2); "
                  "modules.parquet dw_norm")
        note = "toolkit's own estimate, not in the paper; assumes a second-order expansion of the masked loss"
        try:
            e = estimate_lam_eff(self.samples, self.log.table("modules"), self.p.value, step=self.step)
        except (RunLogError, ValueError) as exc:
            return Quantity("lam_eff", math.nan, source, note=f"not available: {exc}")
        return Quantity.of("lam_eff", e, source, note)
