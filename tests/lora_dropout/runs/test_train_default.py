"""Training on the embedded default (real MiniLM, real Rotten Tomatoes) learns something real."""

import pytest

from bounds.runlog import validate_run
from lora_dropout.runs.config import RunConfig
from lora_dropout.runs.run import train_run


@pytest.mark.slow
def test_a_short_run_on_the_default_beats_the_majority_class(tmp_path, all_cores):
    config = RunConfig().replace(
        train={"n_train": 1000, "n_test": 400, "epochs": 1, "lr": 2e-3, "eval_train_size": 100,
               "eval_at_start": False},
        lora_dropout={"dropout_rate": 0.1, "n_instances": 1, "n_eval_instances": 2},
    )
    result = train_run(config, tmp_path, run_id="default", progress=False)
    run = validate_run(result.run_dir)
    test = run.steps[(run.steps.split == "test") & (run.steps.step == run.steps.step.max())]
    majority = max(run.meta.data["label_fractions"]["test"].values())
    accuracy = test.set_index("predictor")["accuracy"]
    assert accuracy["ensemble"] > majority + 0.08, (accuracy.to_dict(), majority)
    assert accuracy["deterministic"] > majority + 0.08


@pytest.mark.slow
def test_the_full_profiles_adalora_learns_on_the_default(tmp_path, all_cores):
    # the full profile's AdaLoRA arm (its preset learning rate and rank schedule), evaluated once: at
    # LoRA's 2e-3 AdaLoRA predicted the majority class on every seed, which no comparison can use
    import math

    from analysis.presets import make_profile

    (point,) = [p for p in make_profile("full").spec.expand()
                if p.config.adapter.method == "adalora" and p.config.lora_dropout.dropout_rate == 0
                and p.config.train.seed == 0]
    config = point.config.replace(train={"n_test": 400, "eval_every": 0, "eval_train_size": 100,
                                         "eval_at_start": False})
    run = validate_run(train_run(config, tmp_path, run_id="adalora", progress=False).run_dir)
    test = run.steps[(run.steps.split == "test") & (run.steps.step == run.steps.step.max())]
    majority = max(run.meta.data["label_fractions"]["test"].values())
    accuracy = test.set_index("predictor")["accuracy"]["deterministic"]
    # better than a constant predictor by two binomial standard errors of the test accuracy
    n = int(test["n"].iloc[0])
    assert accuracy > majority + 2 * math.sqrt(majority * (1 - majority) / n), (accuracy, majority, n)
