"""`RunMeta`: meta.json read as a typed record, checked field by field."""

import json
from collections.abc import Mapping
from importlib.resources import files

import pytest

from bounds.runlog import SCHEMA_VERSION, RunLogError, RunMeta, Status, read_run, read_run_meta

EXAMPLE = files("bounds") / "data" / "example_run"


def _plain(value):
    """A read-only JSON value (mappings and tuples) back as dicts and lists."""
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    return [_plain(v) for v in value] if isinstance(value, tuple) else value


def _raw() -> dict:
    return json.loads((EXAMPLE / "meta.json").read_text())


def _meta(**kw) -> dict:
    meta = {"schema_version": SCHEMA_VERSION, "run_id": "r", "status": "success", "error": None, "config": {},
            "started_at": "2026-01-01T00:00:00+00:00"}
    meta.update(kw)
    return meta


def test_the_example_run_reads_as_its_json_says():
    raw = _raw()
    meta = read_run_meta(EXAMPLE)
    assert meta == RunMeta.from_dict(raw)
    for name in ("run_id", "schema_version", "started_at", "finished_at", "error", "device", "host", "pid"):
        assert _plain(getattr(meta, name)) == raw[name], name
    assert meta.status is Status.SUCCESS and meta.status == raw["status"]
    assert meta.wall_s == raw["wall_s"]
    for name in ("seeds", "git", "versions", "data", "prior", "final"):
        assert _plain(getattr(meta, name)) == raw[name], name
    assert meta.config_dict() == raw["config"]
    ld, train = raw["config"]["lora_dropout"], raw["config"]["train"]
    assert (meta.dropout_rate, meta.n_instances, meta.rescale) == (ld["dropout_rate"], ld["n_instances"],
                                                                   ld["rescale"])
    assert (meta.mask_scope, meta.eval_mode, meta.ensemble_average) == (ld["mask_scope"], ld["eval_mode"],
                                                                        ld["ensemble_average"])
    assert meta.adapter_method == raw["config"]["adapter"]["method"]
    assert (meta.task, meta.seed, meta.lr, meta.epochs, meta.prior_fraction) == (
        train["task"], train["seed"], train["lr"], train["epochs"], train["prior_fraction"])
    assert (meta.n_train, meta.n_train_source) == (raw["data"]["n_train"], "data.n_train")
    assert meta.n_test == raw["data"]["n_test"]
    assert meta.label_names == tuple(raw["data"]["label_names"])
    assert read_run(EXAMPLE).meta == meta


def test_the_record_is_read_only():
    meta = read_run_meta(EXAMPLE)
    with pytest.raises(AttributeError):
        meta.status = "failed"
    with pytest.raises(TypeError):
        meta.config["train"]["lr"] = 1.0
    with pytest.raises(TypeError):
        meta.data["label_names"][0] = "x"


def test_n_eval_instances_none_means_n_instances():
    ld = {"dropout_rate": 0.3, "n_instances": 3, "n_eval_instances": None}
    assert RunMeta.from_dict(_meta(config={"lora_dropout": ld})).n_eval_instances == 3
    assert RunMeta.from_dict(_meta(config={"lora_dropout": {**ld, "n_eval_instances": 8}})).n_eval_instances == 8


def test_sizes_fall_back_to_the_config():
    meta = RunMeta.from_dict(_meta(config={"train": {"n_train": 40, "n_test": "auto"}}))
    assert (meta.n_train, meta.n_train_source) == (40, "config.train.n_train")
    with pytest.raises(RunLogError, match="neither data.n_test nor config.train.n_test"):
        meta.n_test  # noqa: B018  ("auto" is resolved against data the run did not record)


def test_a_running_run_lacks_its_ending_and_absent_options_are_named_when_asked():
    meta = RunMeta.from_dict(_meta(status="running"), source="somewhere/meta.json")
    assert meta.finished_at is None and meta.final == {} and meta.data == {} and meta.prior is None
    assert meta.task == "classification"  # the only task before the field existed
    assert meta.prior_fraction is None  # a run from before the PAC-Bayes prior
    with pytest.raises(RunLogError, match=r"somewhere/meta.json has no config.lora_dropout.dropout_rate"):
        meta.dropout_rate  # noqa: B018
    with pytest.raises(RunLogError, match="no data.label_names"):
        meta.label_names  # noqa: B018


@pytest.mark.parametrize(
    ("meta", "message"),
    [
        ({k: v for k, v in _meta().items() if k not in ("run_id", "config")}, r"missing field\(s\) \['run_id', 'config'\]"),
        (_meta(status="done"), "status='done' is not one of 'running', 'success', 'failed'"),
        (_meta(status="failed"), "status failed without an error"),
        (_meta(schema_version=0), "schema_version 0"),
        (_meta(run_id=""), "run_id must be a non-empty string, got ''"),
        (_meta(wall_s=-1.0), "wall_s must be null or a number >= 0, got -1.0"),
        (_meta(pid="12"), "pid must be null or an integer, got '12'"),
        (_meta(data=[1]), r"data must be null or an object, got \[1\]"),
        (_meta(config=[]), r"config must be an object, got \[\]"),
        (_meta(config={"train": 3}), "config.train must be an object, got 3"),
        (_meta(config={"lora_dropout": {"dropout_rate": 1.5}}), r"config.lora_dropout.dropout_rate must be a "
                                                                 r"number in \[0, 1\], got 1.5"),
        (_meta(config={"lora_dropout": {"n_instances": 0}}), "config.lora_dropout.n_instances must be an integer "
                                                              ">= 1, got 0"),
        (_meta(config={"lora_dropout": {"n_eval_instances": 2.0}}), "n_eval_instances must be null or an integer"),
        (_meta(config={"lora_dropout": {"rescale": "no"}}), "config.lora_dropout.rescale must be a boolean"),
        (_meta(config={"train": {"prior_fraction": 1.0}}), r"config.train.prior_fraction must be a number in "
                                                           r"\[0, 1\), got 1.0"),
        (_meta(config={"train": {"lr": 0}}), "config.train.lr must be a number > 0, got 0"),
        ("not an object", "expected an object, got str"),
    ],
)
def test_each_bad_field_is_named_with_its_value(meta, message):
    with pytest.raises(RunLogError, match=message):
        RunMeta.from_dict(meta)


def test_every_problem_is_listed_at_once():
    with pytest.raises(RunLogError) as info:
        RunMeta.from_dict(_meta(status="done", pid="x", wall_s="y"), source="run/meta.json")
    text = str(info.value)
    assert text.startswith("run/meta.json is invalid:")
    assert "status='done'" in text and "pid must be" in text and "wall_s must be" in text
