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
from bounds.runlog import PREDICTORS, RunLogError, read_run, run_state, validate_run
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
    assert run.meta["status"] == "success" and run_state(run.meta) == "success"
    assert run.meta["config"]["lora_dropout"]["dropout_rate"] == 0.3
    assert run.meta["config"]["train"]["n_train"] == 40
    assert run.meta["git"].keys() == {"commit", "dirty"} and run.meta["versions"]["torch"]
    # start + 2 epoch ends, two splits, three predictors
    assert len(run.steps) == 3 * 2 * len(PREDICTORS)
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
    assert run.meta["status"] == "failed" and "interrupted" in run.meta["error"]
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
    assert run.meta["config"]["adapter"]["method"] == "adalora"
    sites = run.table("modules")["module"].unique()
    assert len(sites) == 4  # query and value of two layers, masked on P's rows and Q's columns


def test_bad_input_is_one_line_naming_it(assets, tmp_path, capsys):
    assert main(_args(assets, tmp_path, "x", "--text-column", "review")) == 2
    err = capsys.readouterr().err
    assert "review" in err and "Traceback" not in err
