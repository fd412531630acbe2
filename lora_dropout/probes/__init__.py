"""Measurements of the paper's quantities on a trained run, each written as a table into its run directory:
per-sample gradients and curvature (`probes.parquet`) and leave-one-out stability (`stability.parquet`). The
toolkit's own PAC-Bayes certificate is in `lora_dropout.certify`.

Modules: `space` (the adapted parameters as one flat vector, per parameter space and hypothesis),
`gradients` (per-sample gradients, Hessian-vector products, stationarity), `curvature` (Lanczos and
conjugate gradients on any Hessian-vector product), `measure` (the ``probes`` table), `stability`
(leave-one-out estimators), `on_run` (``lora-dropout probe``).
"""
