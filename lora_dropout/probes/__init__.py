"""Measurements on a trained run, each written as a table into its run directory: per-sample
gradients and curvature (`probes.parquet`), leave-one-out stability (`stability.parquet`) and the
PAC-Bayes posterior's draws (`certificates.parquet`)."""
