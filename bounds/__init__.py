"""Theory side of the toolkit: the paper's bounds, evaluated on logged runs.

Needs only numpy, scipy, pandas, pyarrow and the standard library; never imports torch. Inputs are
run directories (`bounds.runlog`) or plain arrays.

Modules: `formulas` (the bounds and the PAC-Bayes certificate as vectorised pure functions), `runlog`
(the run-directory schema and the typed `RunMeta`),
`estimators` (measured inputs from a run), `settings` (`BoundSettings`, the options of an
evaluation), `inputs` (`RunInputs`, a run's measured inputs, derived once), `assumptions` (the premises,
measured), `report` (`evaluate_run`, `BoundReport`, the PAC-Bayes dropout certificate and ``bounds.json``),
`compression` (ensemble size versus risk and Jensen gap), `curves` (a bound over one input), `cli`
(``lora-dropout bounds``).

The names below are imported on first use, so ``import bounds`` itself loads nothing heavy.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "formulas": (
        "BoundValue", "Estimate", "Lemma43Form", "ensemble_risk_bound", "estimate_jensen_gap",
        "estimate_mean", "lam_needed", "n_needed",
        "lemma43_bound", "per_sample_jensen_gap", "sparsity", "stability_bound", "theorem44_bound",
        "theorem44_gap", "uniform_stability_bound",
        # the PAC-Bayes dropout certificate (docs/certificate.md)
        "DropoutKL", "EnsembleCertificate", "GibbsLoss", "PacBayesCertificate", "bernoulli_kl", "certificate",
        "dropout_kl", "ensemble_transfer", "grid_delta", "kl_inv_upper", "monte_carlo_upper",
        "pac_bayes_kl_bound", "pac_bayes_kl_rhs",
    ),
    "runlog": (
        "SCHEMA_VERSION", "MissingTableError", "RunLog", "RunLogError", "RunMeta", "read_run", "read_run_meta",
        "validate_run",
    ),
    "estimators": (
        "LossRange", "MissingMeasurementError", "Quantity", "Risks", "StabilityEstimate", "choose_loss_range",
        "estimate_lam_eff", "estimate_risks", "estimate_stability", "loss_matrix", "per_sample_diversity",
        "per_sample_jensen_gap_table", "per_sample_perturbation",
    ),
    "settings": ("BoundSettings", "CertificateSettings"),
    "inputs": ("RunInputs",),
    "assumptions": ("Assumption",),
    "report": (
        "BoundReport", "certificate_reports", "certificate_table", "evaluate_run", "write_bounds",
        "write_certificate_entries",
    ),
    "compression": ("ensemble_compression", "subensemble_losses"),
    "curves": ("bound_curve",),
}
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}

__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'bounds' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
