"""Runs: the configuration of a training run, the training loop, the run directory's writer, evaluation,
metrics, the models and their provenance (`lora_dropout.runs.run.train_run` from a `RunConfig` to a complete
run directory in the `bounds.runlog` schema)."""
