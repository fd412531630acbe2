"""Measured inputs of the bounds, estimated from a run directory's tables (docs/measurement.md).

Everything here reads tables of the run log (`bounds.runlog`) and returns numbers with their
provenance (`quantity`: `Quantity`) and, where it is defined, their uncertainty:

- risks ``R_hat`` (train) and ``R`` (test) of each predictor from ``samples.parquet`` (`risks`, on the
  loss matrix of `losses`), with the loss range ``C`` either given (the loss is clipped at ``C``:
  rigorous) or observed (the largest per-sample loss at that step: a heuristic, labelled so);
- the Lipschitz constant ``eta``, the curvature ``Lambda_min`` and the stationarity residual from
  ``probes.parquet`` (`probes`);
- the measured pointwise hypothesis stability ``beta_hat`` from ``stability.parquet`` (`stability`);
- the *effective regularisation strength* ``lam_eff`` (`lam_eff`; this toolkit's own addition, not in
  the paper);
- per-sample quantities of the loss matrix (`per_sample`): the mask-induced perturbation, the Jensen
  gap of Theorem 4.5 and the members' disagreement.

The "final evaluation step" is the largest ``step`` of ``samples.parquet`` that has rows of both
splits. The train split of ``samples.parquet`` is the run's *evaluation* subset of the training set
(``--eval-train-size``), so ``R_hat`` is itself an estimate of the mean loss over all ``n`` training
examples; its standard error is reported with it.
"""

from .lam_eff import dw_norm_squared, estimate_lam_eff
from .losses import (
    LossMatrix,
    LossRange,
    choose_loss_range,
    clip_losses,
    final_step,
    loss_matrix,
    predictor_losses,
)
from .per_sample import per_sample_diversity, per_sample_jensen_gap_table, per_sample_perturbation
from .probes import LIPSCHITZ_QUANTITIES, probe_convergence, probe_lam, probe_quantity
from .quantity import MissingMeasurementError, Quantity
from .risks import Risks, estimate_risks, risks_of
from .stability import StabilityEstimate, estimate_stability, stability_methods

__all__ = [
    "LIPSCHITZ_QUANTITIES",
    "LossMatrix",
    "LossRange",
    "MissingMeasurementError",
    "Quantity",
    "Risks",
    "StabilityEstimate",
    "choose_loss_range",
    "clip_losses",
    "dw_norm_squared",
    "estimate_lam_eff",
    "estimate_risks",
    "estimate_stability",
    "final_step",
    "loss_matrix",
    "per_sample_diversity",
    "per_sample_jensen_gap_table",
    "per_sample_perturbation",
    "predictor_losses",
    "probe_convergence",
    "probe_lam",
    "probe_quantity",
    "risks_of",
    "stability_methods",
]
