"""`lora-dropout train` end to end on a tiny local model and a CSV file, into temporary directories."""

import json
import os
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest

from analysis.cli import main
from bounds.runlog import Predictor, RunLogError, read_run, run_state, validate_run
from tests.tiny import save_tiny_classifier, write_tiny_csv


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("assets")
    return {"model": str(save_tiny_classifier(root / "model")), "data": str(write_tiny_csv(root / "data.csv"))}


def _args(assets, out, run_id, *extra):
    return ["train", "--model", assets["model"], "--data", assets["data"], "--group-column", "group",
            "--n-train", "40", "--n-test", "none", "--epochs", "2", "--batch-size", "8", "--eval-batch-size", "16",
            "--eval-train-size", "20", "--lr", "5e-3", "--dropout-rate", "0.3", "--n-instances", "2",
            "--out", str(out), "--run-id", run_id, "--quiet", *extra]


def test_train_writes_a_valid_run_directory(assets, tmp_path, capsys):
    assert main(_args(assets, tmp_path, "r1")) == 0
    printed = capsys.readouterr().out
    assert str(tmp_path / "r1") in printed and "test/ensemble" in printed
    run = validate_run(tmp_path / "r1", require=("samples", "calibration", "modules"))
    assert run.meta.status == "success" and run_state(run.meta) == "success"
    assert run.meta.dropout_rate == 0.3
    assert run.meta.option("train", "n_train") == 40
    assert run.meta.git.keys() == {"commit", "dirty"} and run.meta.versions["torch"]
    # start + 2 epoch ends, two splits, three predictors
    assert len(run.steps) == 3 * 2 * len(Predictor)
    assert set(run.steps.step) == {0, 5, 10}  # 40 examples / batch 8 = 5 steps per epoch
    samples = run.table("samples")
    last = samples[(samples.step == 10) & (samples.split == "test") & (samples.predictor == "member")]
    assert sorted(last.instance.unique()) == [0, 1]  # n_eval_instances defaults to n_instances
    assert (tmp_path / "r1" / "adapter" / "lora_dropout_config.json").is_file()
    assert (tmp_path / "r1" / "adapter" / "adapter_model.safetensors").is_file()


def test_same_seed_gives_identical_steps(assets, tmp_path):
    for run_id in ("a", "b"):
        assert main(_args(assets, tmp_path, run_id, "--seed", "3")) == 0
    a, b = (read_run(tmp_path / r).steps for r in ("a", "b"))
    pd.testing.assert_frame_equal(a.drop(columns="wall_s"), b.drop(columns="wall_s"))
    assert main(_args(assets, tmp_path, "c", "--seed", "4")) == 0
    assert not read_run(tmp_path / "c").steps["risk"].equals(a["risk"])


def test_invalid_flag_value_names_the_field(assets, tmp_path, capsys):
    assert main(_args(assets, tmp_path, "bad", "--dropout-rate", "1.5")) == 2
    assert "dropout_rate=1.5" in capsys.readouterr().err


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_interrupt_leaves_a_readable_run_marked_failed(assets, tmp_path, signum):
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    args = _args(assets, tmp_path, "killed")
    args[args.index("--epochs") + 1] = "200"
    # a harness that runs us in the background may ignore SIGINT, and Python then never raises
    # KeyboardInterrupt; the child starts with the default disposition, as under a terminal
    proc = subprocess.Popen([sys.executable, "-m", "analysis.cli", *args], env=env, stderr=subprocess.PIPE,
                            text=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    steps = tmp_path / "killed" / "steps.jsonl"
    deadline = time.time() + 120
    while not (steps.is_file() and len(steps.read_text().splitlines()) >= 12) and time.time() < deadline:
        time.sleep(0.2)  # wait for two evaluations
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signum, err
    run = validate_run(tmp_path / "killed")
    assert run.meta.status == "failed" and "interrupted" in run.meta.error
    assert len(run.steps) >= 12
    assert len(run.table("samples")) > 0


def test_corrupted_meta_and_wrong_schema_version_are_rejected(assets, tmp_path):
    assert main(_args(assets, tmp_path, "r", "--epochs", "1")) == 0
    meta_path = tmp_path / "r" / "meta.json"
    meta = json.loads(meta_path.read_text())
    meta_path.write_text(json.dumps({**meta, "schema_version": 999}))
    with pytest.raises(RunLogError, match="schema_version 999"):
        validate_run(tmp_path / "r")
    meta_path.write_text(meta_path.read_text()[:40])
    with pytest.raises(RunLogError, match="corrupted"):
        validate_run(tmp_path / "r")


def test_adalora_trains_through_the_cli(assets, tmp_path):
    assert main(_args(assets, tmp_path, "ada", "--method", "adalora", "--r", "4", "--target-r", "2")) == 0
    run = validate_run(tmp_path / "ada", require=("samples", "modules"))
    assert run.meta.adapter_method == "adalora"
    sites = run.table("modules")["module"].unique()
    assert len(sites) == 4  # query and value of two layers, masked on P's rows and Q's columns


def test_bad_input_is_one_line_naming_it(assets, tmp_path, capsys):
    assert main(_args(assets, tmp_path, "x", "--text-column", "review")) == 2
    err = capsys.readouterr().err
    assert "review" in err and "Traceback" not in err


def _small_csv(path, n=30):
    """A data set far smaller than the size defaults, under the column names of a user's file."""
    frame = pd.read_csv(write_tiny_csv(path, n=n)).rename(columns={"text": "body", "label": "topic"})
    frame.to_csv(path, index=False)
    return path


def _default_size_args(assets, data, out, run_id, *extra):
    # no --n-train, --n-test or --eval-train-size: the defaults must fit the data
    return ["train", "--model", assets["model"], "--data", str(data), "--text-column", "body", "--label-column",
            "topic", "--epochs", "1", "--out", str(out), "--run-id", run_id, "--quiet", *extra]


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


def test_default_sizes_take_what_a_small_data_set_has(assets, tmp_path, capsys):
    data = _small_csv(tmp_path / "my.csv")
    assert main(_default_size_args(assets, data, tmp_path, "small")) == 0
    run = validate_run(tmp_path / "small", require=("samples",))
    # 30 rows, test_fraction 0.2: every example is used, and meta.json records the resolved counts
    assert (run.meta.data["n_train"], run.meta.data["n_test"], run.meta.data["eval_train_size"]) == (
        24, 6, 24)
    assert run.meta.option("train", "n_test") == "auto"  # the config as given (the study keys on it)
    samples = run.table("samples")
    last = samples[samples.step == samples.step.max()]
    assert last[last.split == "test"].sample_id.nunique() == 6
    assert last[last.split == "train"].sample_id.nunique() == 24
    # collected tables carry the n the run used, not the word "auto" (a column that can mix with numbers)
    from analysis.collect import collect

    assert collect([tmp_path / "small"]).runs["n_train"].tolist() == [24]


@pytest.mark.parametrize("flag, value, available", [("n_test", "7", "6 available test"),
                                                     ("n_train", "25", "24 available train"),
                                                     ("eval_train_size", "25", "24 available training")])
def test_an_explicit_size_above_what_is_available_is_a_one_line_error(assets, tmp_path, capsys, flag, value,
                                                                      available):
    data = _small_csv(tmp_path / "my.csv")
    assert main(_default_size_args(assets, data, tmp_path, "big", f"--{flag.replace('_', '-')}", value)) == 2
    err = _one_line_error(capsys)
    assert f"{flag}={value} exceeds the {available}" in err
    assert not (tmp_path / "big").exists()


@pytest.mark.parametrize("kind, problem", [
    ("missing", "no such folder"),
    ("empty-folder", "without config.json"),
    ("hub-name", "could not be loaded"),
])
def test_a_model_that_cannot_be_loaded_is_a_one_line_error_naming_the_flag(assets, tmp_path, capsys, kind,
                                                                           problem):
    model = {"missing": str(tmp_path / "no" / "such" / "dir"), "empty-folder": str(tmp_path),
             "hub-name": "no-such-owner/no-such-model"}[kind]  # offline (conftest): the hub is not asked
    args = ["train", "--model", model, "--data", assets["data"], "--out", str(tmp_path / "runs"), "--quiet"]
    assert main(args) == 2
    err = _one_line_error(capsys)
    assert "--model" in err and repr(model) in err and problem in err


@pytest.mark.parametrize("content, problem", [
    (b"", "is empty"),
    (b"body,topic\n", "has a header (body, topic) but no rows"),
    (b"\x89PNG\r\n\x1a\n\x00\xff", "is not UTF-8 text"),
], ids=["zero-bytes", "header-only", "binary"])
def test_an_empty_or_unreadable_data_file_is_a_one_line_error_naming_it(assets, tmp_path, capsys, content,
                                                                        problem):
    data = tmp_path / "my.csv"
    data.write_bytes(content)
    assert main(_default_size_args(assets, data, tmp_path, "bad")) == 2
    err = _one_line_error(capsys)
    assert str(data) in err and problem in err
