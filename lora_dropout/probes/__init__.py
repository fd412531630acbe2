"""Measurements on a trained run, each written as a table into its run directory: per-sample
gradients and curvature (`probes.parquet`), leave-one-out stability (`stability.parquet`) and the
PAC-Bayes posterior's draws (`certificates.parquet`).

Modules: `space` (the adapted parameters as one flat vector, per parameter space and hypothesis),
`gradients` (per-sample gradients, Hessian-vector products, stationarity), `curvature` (Lanczos and
conjugate gradients on any Hessian-vector product), `measure` (the ``probes`` table), `stability`
(leave-one-out estimators), `on_run` (``lora-dropout probe``); `noise` (counter-based posterior
noise), `posterior` (posterior draws), `prior_distance` (the distances in ``KL(Q || P)``), `certify`
(``lora-dropout certify``).
"""
