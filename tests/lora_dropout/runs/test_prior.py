"""Training with a PAC-Bayes prior (docs/certificate.md, "Priors"): the ``prior/`` files of a run, the prior
phase on the first examples of the seeded prior order, and the posterior phase trained from the prior."""

import json

import numpy as np
import pytest
import torch
from peft import set_peft_model_state_dict
from safetensors.torch import load_file

from bounds.runlog import read_run, validate_run
from lora_dropout.runs.config import RunConfig, TrainConfig, derive_seed
from lora_dropout.runs.run import train_run
from lora_dropout.runs.train import adapter_state, build_model, fit, phases, prepare, trainable_parameters
from tests.tiny import save_tiny_classifier, write_tiny_csv

N, BATCH, EPOCHS, LR = 40, 8, 2, 5e-3


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("prior-assets")
    return {"model": str(save_tiny_classifier(root / "model")), "data": str(write_tiny_csv(root / "data.csv"))}


def _config(assets, **train) -> RunConfig:
    return RunConfig().replace(
        train={"model": assets["model"], "data": assets["data"], "group_column": "group", "n_train": N,
               "n_test": None, "epochs": EPOCHS, "batch_size": BATCH, "eval_train_size": 16, "lr": LR,
               "device": "cpu", "seed": 1, **train},
        lora_dropout={"dropout_rate": 0.3, "n_instances": 2},
    )


def _fresh(config: RunConfig):
    """The run's model as `build_model` makes it (same seeds), with its prepared data."""
    prepared = prepare(config.train)
    n_prior = len(_documented_prior_positions(_groups(prepared), config.train.seed, config.train.prior_fraction))
    model, handle = build_model(config, len(prepared.splits.label_names),
                                phases(config.train, len(prepared.train), n_prior).total_steps)
    return model, handle, prepared


def _tensors(path) -> dict[str, torch.Tensor]:
    return load_file(str(path))


def _assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)


def _differs(a: dict, b: dict) -> bool:
    return any(not torch.equal(a[k], b[k]) for k in a)


def _documented_prior_positions(groups: list, seed: int, fraction: float) -> np.ndarray:
    """The documented prior split, computed here with a loop: the distinct groups in the order they first occur,
    permuted by the run seed's "prior" stream; every row of the first floor(fraction G) of them. Without groups
    (all None) the first floor(fraction n) rows of the permutation of the rows."""
    rng = np.random.default_rng(derive_seed(seed, "prior"))
    if all(g is None for g in groups):
        return np.sort(rng.permutation(len(groups))[: int(np.floor(fraction * len(groups)))])
    distinct = []
    for g in groups:
        if g not in distinct:
            distinct.append(g)
    chosen = [distinct[i] for i in rng.permutation(len(distinct))[: int(np.floor(fraction * len(distinct)))]]
    return np.array([i for i, g in enumerate(groups) if g in chosen], dtype=np.int64)


def _groups(prepared) -> list:
    by_id = dict(zip(prepared.splits.train.sample_id, prepared.splits.train.group, strict=True))
    return [by_id[int(i)] for i in prepared.train.sample_ids]


def _prior_steps(config: RunConfig, fraction: float = 0.5) -> int:
    _, _, prepared = _fresh(config)
    n_prior = len(_documented_prior_positions(_groups(prepared), config.train.seed, fraction))
    return config.train.epochs * -(-n_prior // BATCH)


def test_prior_fraction_zero_saves_the_init_and_trains_as_before(assets, tmp_path):
    config = _config(assets)
    run_dir = train_run(config, tmp_path, run_id="p0", progress=False).run_dir
    run = validate_run(run_dir, require=("samples",))
    init = _tensors(run_dir / "prior" / "init.safetensors")
    adapter = _tensors(run_dir / "adapter" / "adapter_model.safetensors")
    assert init.keys() == adapter.keys() and _differs(init, adapter)  # the same names; training moved them
    # the seeded initialisation: a freshly built model's trainable state, bit for bit
    model, handle, prepared = _fresh(config)
    _assert_same(init, adapter_state(model))
    assert not (run_dir / "prior" / "prior.safetensors").exists()
    split = json.loads((run_dir / "prior" / "prior.json").read_text())
    ids = [int(i) for i in prepared.train.sample_ids]
    assert {k: split[k] for k in ("prior_fraction", "level", "prior_ids", "certifiable_ids", "prior_groups")} == {
        "prior_fraction": 0.0, "level": "group", "prior_ids": [], "certifiable_ids": ids, "prior_groups": []}
    assert split["certifiable_groups"] == list(dict.fromkeys(_groups(prepared)))
    assert run.meta.prior["n_prior"] == 0 and run.meta.prior["n_certifiable"] == N
    # the run is the code path without a prior: `fit` from the init over all epochs, lr and steps from 0
    fit(model, handle, prepared.train, config.train)
    _assert_same(adapter, adapter_state(model))
    assert sorted(run.steps.step.unique()) == [0, 5, 10] and sorted(run.steps.epoch.unique()) == [0.0, 1.0, 2.0]
    # posterior_lr / posterior_epochs equal to lr / epochs are the same run (metrics included)
    same = train_run(_config(assets, posterior_lr=LR, posterior_epochs=EPOCHS), tmp_path, run_id="p0-explicit",
                     progress=False).run_dir
    _assert_same(adapter, _tensors(same / "adapter" / "adapter_model.safetensors"))
    cols = ["step", "epoch", "split", "predictor", "risk", "accuracy", "ece", "nll", "brier", "objective"]
    assert read_run(same).steps[cols].equals(run.steps[cols])


@pytest.fixture(scope="module")
def half(assets, tmp_path_factory):
    """A run with prior_fraction 0.5 and a posterior at a different learning rate, for one epoch."""
    config = _config(assets, prior_fraction=0.5, posterior_lr=1e-3, posterior_epochs=1)
    return config, train_run(config, tmp_path_factory.mktemp("half"), run_id="half", progress=False).run_dir


def test_prior_takes_whole_groups_of_the_prior_order(half):
    config, run_dir = half
    _, _, prepared = _fresh(config)
    ids = prepared.train.sample_ids
    groups = _groups(prepared)
    split = json.loads((run_dir / "prior" / "prior.json").read_text())
    positions = _documented_prior_positions(groups, config.train.seed, 0.5)
    assert split["prior_fraction"] == 0.5 and split["level"] == "group"
    assert split["prior_ids"] == [int(i) for i in ids[positions]]  # listed in the split's order
    assert set(split["prior_ids"]).isdisjoint(split["certifiable_ids"])
    assert sorted(split["prior_ids"] + split["certifiable_ids"]) == sorted(int(i) for i in ids)
    assert split["certifiable_ids"] == [int(i) for i in ids if int(i) not in set(split["prior_ids"])]
    # whole groups: no group has rows on both sides, and half of the groups (rounded down) are the prior's
    by_id = dict(zip((int(i) for i in ids), groups, strict=True))
    prior_groups = {by_id[i] for i in split["prior_ids"]}
    assert prior_groups.isdisjoint(by_id[i] for i in split["certifiable_ids"])
    assert sorted(split["prior_groups"]) == sorted(prior_groups)
    assert len(prior_groups) == len(set(groups)) // 2 and set(split["certifiable_groups"]) == set(groups) - prior_groups
    # the fingerprints are those of the listed examples' texts and labels
    from lora_dropout.tasks.splits import examples_fingerprint
    assert split["prior_fingerprint"] == examples_fingerprint(prepared.splits.train, split["prior_ids"])
    assert split["certifiable_fingerprint"] == examples_fingerprint(prepared.splits.train, split["certifiable_ids"])
    run = validate_run(run_dir)
    prior_steps = _prior_steps(config)
    assert run.meta.prior == {
        "prior_fraction": 0.5, "n_prior": len(positions), "n_certifiable": N - len(positions),
        "prior_steps": prior_steps, "posterior_first_step": prior_steps, "posterior_first_epoch": EPOCHS,
        "posterior_epochs": 1, "posterior_lr": 1e-3, "split_level": "group"}
    assert run.meta.seeds["prior"] == derive_seed(config.train.seed, "prior")


def test_prior_takes_rows_when_the_data_have_no_groups(assets, tmp_path):
    config = _config(assets, group_column=None, prior_fraction=0.5, posterior_epochs=0, eval_at_start=False)
    run_dir = train_run(config, tmp_path, run_id="rows", progress=False).run_dir
    _, _, prepared = _fresh(config)
    ids = prepared.train.sample_ids
    split = json.loads((run_dir / "prior" / "prior.json").read_text())
    positions = _documented_prior_positions([None] * N, config.train.seed, 0.5)
    assert split["level"] == "row" and "prior_groups" not in split
    assert split["prior_ids"] == [int(i) for i in ids[positions]] and len(positions) == N // 2
    # not simply the first half of the split
    assert set(split["prior_ids"]) != set(int(i) for i in ids[: N // 2])


def test_examples_fingerprint_changes_with_a_text_a_label_or_the_order():
    import pandas as pd

    from lora_dropout.tasks.splits import examples_fingerprint

    frame = pd.DataFrame({"sample_id": [3, 5, 7], "text": ["a b", "c", "d"], "label": [0, 1, 0], "group": [None] * 3})
    base = examples_fingerprint(frame, [3, 5, 7])
    assert base == examples_fingerprint(frame.iloc[::-1], [3, 5, 7])  # keyed by id, not by the frame's row order
    assert base != examples_fingerprint(frame, [5, 3, 7])
    assert base != examples_fingerprint(frame.assign(text=["a b", "c", "e"]), [3, 5, 7])
    assert base != examples_fingerprint(frame.assign(label=[0, 1, 1]), [3, 5, 7])
    # texts are length-prefixed, so moving a boundary between two texts changes the digest
    assert examples_fingerprint(frame.assign(text=["a", "b c", "d"]), [3, 5, 7]) != base


def test_prior_equals_an_independent_training_on_the_prior_examples(half):
    config, run_dir = half
    prior = _tensors(run_dir / "prior" / "prior.safetensors")
    init = _tensors(run_dir / "prior" / "init.safetensors")
    model, handle, prepared = _fresh(config)
    _assert_same(init, adapter_state(model))
    # a run on just the prior examples: same seeds, lr and epochs, same masks and objective
    subset = prepared.train.subset(_documented_prior_positions(_groups(prepared), config.train.seed, 0.5))
    steps = fit(model, handle, subset, config.train)
    assert steps == validate_run(run_dir).meta.prior["prior_steps"]
    _assert_same(prior, adapter_state(model))
    assert prior.keys() == _tensors(run_dir / "adapter" / "adapter_model.safetensors").keys()


def _posterior_reference(config: RunConfig, start: dict, lr: float):
    """The posterior as specified: from ``start``, a fresh AdamW at ``lr``, all examples, the streams continued."""
    model, handle, prepared = _fresh(config)
    set_peft_model_state_dict(model, start)
    tc = config.train
    optimizer = torch.optim.AdamW(trainable_parameters(model), lr=lr, weight_decay=tc.weight_decay)
    fit(model, handle, prepared.train, tc, epochs=tc.posterior_epochs, first_epoch=tc.epochs,
        first_step=_prior_steps(config), optimizer=optimizer, scheduler=None)
    return adapter_state(model)


def test_posterior_trains_from_the_prior_at_posterior_lr(half):
    config, run_dir = half
    adapter = _tensors(run_dir / "adapter" / "adapter_model.safetensors")
    prior = _tensors(run_dir / "prior" / "prior.safetensors")
    init = _tensors(run_dir / "prior" / "init.safetensors")
    _assert_same(adapter, _posterior_reference(config, prior, lr=1e-3))
    # the reference is sensitive to what it pins: the learning rate and the starting point
    assert _differs(adapter, _posterior_reference(config, prior, lr=LR))
    assert _differs(adapter, _posterior_reference(config, init, lr=1e-3))
    # the evaluations are the posterior's: from the prior's last step to the end
    steps = validate_run(run_dir, require=("samples",)).steps
    prior_steps = _prior_steps(config)
    assert sorted(steps.step.unique()) == [prior_steps, prior_steps + N // BATCH]
    assert sorted(steps.epoch.unique()) == [0.0, 1.0]
    assert steps.objective[steps.step == prior_steps].isna().all()  # no posterior step taken yet


def test_zero_posterior_epochs_leave_the_prior_as_the_posterior(assets, tmp_path):
    config = _config(assets, prior_fraction=0.5, posterior_epochs=0, eval_at_start=False)
    run_dir = train_run(config, tmp_path, run_id="only-prior", progress=False).run_dir
    _assert_same(_tensors(run_dir / "adapter" / "adapter_model.safetensors"),
                 _tensors(run_dir / "prior" / "prior.safetensors"))
    run = validate_run(run_dir, require=("samples",))
    assert sorted(run.steps.step.unique()) == [_prior_steps(config)]  # one (final) evaluation, at the prior's end
    assert set(run.table("samples").predictor) >= {"full"}


@pytest.mark.parametrize(("field", "value", "message"), [
    ("prior_fraction", 1.0, "prior_fraction=1.0"), ("prior_fraction", -0.1, "prior_fraction=-0.1"),
    ("prior_fraction", float("nan"), "prior_fraction=nan"), ("prior_fraction", True, "prior_fraction=True"),
    ("posterior_lr", 0.0, "posterior_lr=0.0"), ("posterior_lr", float("inf"), "posterior_lr=inf"),
    ("posterior_epochs", -1, "posterior_epochs=-1"), ("posterior_epochs", 1.5, "posterior_epochs=1.5"),
])
def test_invalid_prior_settings_name_the_field_and_value(field, value, message):
    with pytest.raises(ValueError, match=message.replace(".", r"\.")):
        TrainConfig(**{field: value})


def test_prior_settings_that_cannot_train_are_errors_before_anything_is_written(assets, tmp_path):
    with pytest.raises(ValueError, match=r"train\.prior_fraction=0\.5 with adapter\.method='adalora'"):
        RunConfig().replace(train={"prior_fraction": 0.5}, adapter={"method": "adalora"})
    RunConfig().replace(adapter={"method": "adalora"})  # the data-free prior is fine with AdaLoRA
    with pytest.raises(ValueError, match=r"prior_fraction=0\.01 of n_train=40 gives no prior example"):
        train_run(_config(assets, prior_fraction=0.01), tmp_path, run_id="tiny-prior", progress=False)
    assert not (tmp_path / "tiny-prior").exists()


def test_stability_refuses_a_run_with_a_trained_prior(half):
    from lora_dropout.probes.on_run import probe_run

    _, run_dir = half
    with pytest.raises(ValueError, match=r"prior_fraction=0\.5"):
        probe_run(run_dir, stability_k=1, progress=False)


def test_cli_prior_flags_end_to_end(assets, tmp_path, capsys):
    from analysis.cli import main

    args = ["train", "--model", assets["model"], "--data", assets["data"], "--group-column", "group",
            "--n-train", str(N), "--n-test", "none", "--epochs", "1", "--batch-size", str(BATCH),
            "--eval-train-size", "16", "--lr", "5e-3", "--dropout-rate", "0.3", "--n-instances", "2",
            "--out", str(tmp_path), "--quiet"]
    assert main([*args, "--run-id", "cli", "--prior-fraction", "0.25", "--posterior-lr", "2e-3",
                 "--posterior-epochs", "2"]) == 0
    run = validate_run(tmp_path / "cli", require=("samples",))
    train = run.meta.config["train"]
    assert (train["prior_fraction"], train["posterior_lr"], train["posterior_epochs"]) == (0.25, 2e-3, 2)
    config = RunConfig.from_dict(run.meta.config_dict())
    _, _, prepared = _fresh(config)
    n_prior = len(_documented_prior_positions(_groups(prepared), config.train.seed, 0.25))
    prior_steps = -(-n_prior // BATCH)
    assert (run.meta.prior["n_prior"], run.meta.prior["n_certifiable"]) == (n_prior, N - n_prior)
    assert run.meta.prior["prior_steps"] == prior_steps
    assert sorted(run.steps.step.unique()) == [prior_steps, prior_steps + 5, prior_steps + 10]
    for name in ("init.safetensors", "prior.safetensors", "prior.json"):
        assert (tmp_path / "cli" / "prior" / name).is_file()
    assert main([*args, "--run-id", "none", "--posterior-lr", "none", "--posterior-epochs", "none"]) == 0
    assert validate_run(tmp_path / "none").meta.config["train"]["posterior_lr"] is None
    capsys.readouterr()
    assert main([*args, "--run-id", "bad", "--prior-fraction", "1"]) == 2
    assert "prior_fraction=1" in capsys.readouterr().err
