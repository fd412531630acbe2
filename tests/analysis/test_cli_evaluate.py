"""`lora-dropout evaluate RUN_DIR --data FILE`: a tiny trained run scored on other files."""

import hashlib
import json
import shutil

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from analysis.cli import main
from bounds.runlog import TABLES, read_run, read_steps
from tests.tiny import write_tiny_csv

P = 0.3  # dropout rate of the tiny run


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny LoRA Dropout run (labels neg/pos) and the files it was trained from."""
    from tests.tiny import save_tiny_classifier

    root = tmp_path_factory.mktemp("evaluate")
    model, data = save_tiny_classifier(root / "model"), write_tiny_csv(root / "data.csv")
    assert main(["train", "--model", str(model), "--data", str(data), "--group-column", "group",
                 "--n-train", "40", "--n-test", "none", "--epochs", "2", "--batch-size", "8",
                 "--eval-batch-size", "16", "--eval-train-size", "20", "--lr", "5e-2", "--lora-alpha", "128",
                 "--dropout-rate", str(P), "--n-instances", "3", "--out", str(root / "runs"), "--run-id", "r",
                 "--quiet"]) == 0
    return {"root": root, "model": model, "data": data, "run": root / "runs" / "r"}


@pytest.fixture
def run(trained, tmp_path):
    """A private copy of the run, so each test starts without evaluations."""
    return shutil.copytree(trained["run"], tmp_path / "r")


def _record(run_dir) -> dict:
    """sha256 of every file of the training record (everything but evaluations/)."""
    return {str(p.relative_to(run_dir)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(run_dir.rglob("*")) if p.is_file() and p.relative_to(run_dir).parts[0] != "evaluations"}


def _other_file(trained, path, n=24, seed=7, relabel=None):
    """New reviews with other column names; labels spelled by name (optionally renamed)."""
    write_tiny_csv(path, n=n, seed=seed)
    frame = pd.read_csv(path).rename(columns={"text": "review", "label": "sentiment"}).iloc[::-1]  # pos first
    frame["sentiment"] = frame["sentiment"].replace(relabel or {})
    frame = frame.drop(columns="group").reset_index(drop=True)
    frame.to_csv(path, index=False)
    return frame


def _independent_losses(trained, texts, labels, scale):
    """Cross-entropy of the saved adapter with dW scaled by ``scale``, by plain transformers + peft."""
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(trained["model"])
    base = AutoModelForSequenceClassification.from_pretrained(trained["model"], num_labels=2)
    model = PeftModel.from_pretrained(base, str(trained["run"] / "adapter")).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.mul_(scale)  # dW = B A * scaling: scaling B scales dW
        losses = []
        for text, label in zip(texts, labels, strict=True):
            enc = tok(text, truncation=True, max_length=64, return_tensors="pt")
            losses.append(F.cross_entropy(model(**enc).logits, torch.tensor([label])).item())
    return np.array(losses)


def test_evaluate_writes_tables_matching_an_independent_computation(trained, run, tmp_path, capsys):
    before = _record(run)
    # labels renamed on the way out and back, and the first row is "pos": the file's own order of first
    # appearance (pos, neg) is not the run's label order (neg, pos)
    frame = _other_file(trained, tmp_path / "critics.csv")
    assert frame["sentiment"].iloc[0] == "pos"
    assert main(["evaluate", str(run), "--data", str(tmp_path / "critics.csv"), "--text-column", "review",
                 "--label-column", "sentiment"]) == 0
    out = run / "evaluations" / "critics"  # the name defaults to the file's stem
    assert str(out) in capsys.readouterr().out
    assert _record(run) == before  # the training record is byte-identical

    samples = pd.read_parquet(out / "samples.parquet")
    assert list(samples.columns) == TABLES["samples"].column_names
    step = int(read_run(run).steps["step"].max())
    assert set(samples.step) == {step} and set(samples.split) == {"critics"}
    assert set(samples.predictor) == {"member", "deterministic", "ensemble", "full"}
    by = {p: g.sort_values(["sample_id", "instance"]) for p, g in samples.groupby("predictor")}
    ids = np.arange(len(frame))
    np.testing.assert_array_equal(by["deterministic"].sample_id, ids)

    labels = frame["sentiment"].map({"neg": 0, "pos": 1}).to_numpy()  # the run's label_names order
    det = _independent_losses(trained, frame["review"], labels, scale=(1 - P) ** 2)  # expected dW
    np.testing.assert_allclose(by["deterministic"].loss, det, rtol=1e-4, atol=1e-5)
    full = _independent_losses(trained, frame["review"], labels, scale=1.0)  # unmasked dW
    np.testing.assert_allclose(by["full"].loss, full, rtol=1e-4, atol=1e-5)
    assert np.abs(det - full).max() > 1e-3  # the two scales are distinguishable on this run

    # ensemble (average of member probabilities, Eq. 8) from the members' own rows
    members = by["member"].pivot(index="sample_id", columns="instance", values="loss").to_numpy()  # (n, N)
    assert members.shape == (len(frame), 3) and np.abs(members[:, 0] - members[:, 1]).max() > 1e-4
    p_label = np.exp(-members).mean(axis=1)
    np.testing.assert_allclose(by["ensemble"].loss, -np.log(p_label), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(by["ensemble"].confidence, np.maximum(p_label, 1 - p_label), rtol=1e-5, atol=1e-6)

    steps = read_steps(out).set_index("predictor")
    assert set(steps.index) == {"deterministic", "member_mean", "ensemble"} and (steps.n == len(frame)).all()
    np.testing.assert_allclose(steps.loc["deterministic", "risk"], det.mean(), rtol=1e-4)
    np.testing.assert_allclose(steps.loc["member_mean", "risk"], members.mean(), rtol=1e-5)
    np.testing.assert_allclose(steps.loc["ensemble", "risk"], by["ensemble"].loss.mean(), rtol=1e-5)
    calibration = pd.read_parquet(out / "calibration.parquet")
    assert list(calibration.columns) == TABLES["calibration"].column_names
    counts = calibration.groupby("predictor")["count"].sum()
    assert counts.to_dict() == {"deterministic": len(frame), "ensemble": len(frame), "member_mean": 3 * len(frame)}

    meta = json.loads((out / "evaluation.json").read_text())
    source = meta["source"]
    assert source["sha256"] == hashlib.sha256((tmp_path / "critics.csv").read_bytes()).hexdigest()
    assert source["n"] == len(frame) and source["columns"] == ["review", "sentiment"]
    assert (source["text_column"], source["label_column"]) == ("review", "sentiment")
    assert meta["run_id"] == "r" and meta["step"] == step and meta["label_names"] == ["neg", "pos"]
    assert meta["label_counts"] == frame["sentiment"].value_counts().to_dict()
    assert set(meta["git"]) == {"commit", "dirty"} and meta["evaluated_at"]


def test_evaluating_the_training_file_reproduces_the_runs_final_evaluation(trained, run):
    """Same rows, same sample ids: every member, the deterministic, ensemble and full rows of the run's
    own final test evaluation come back (so the adapter and the LoRA Dropout config were restored)."""
    assert main(["evaluate", str(run), "--data", str(trained["data"]), "--name", "again"]) == 0
    samples = read_run(run).table("samples")
    own = samples[(samples.step == samples.step.max()) & (samples.split == "test")]
    again = pd.read_parquet(run / "evaluations" / "again" / "samples.parquet")
    key = ["sample_id", "predictor", "instance"]
    merged = own.merge(again, on=key, suffixes=("_run", "_eval"), validate="one_to_one")
    assert len(merged) == len(own) > 0 and set(merged.predictor) == {"member", "deterministic", "ensemble", "full"}
    np.testing.assert_allclose(merged.loss_eval, merged.loss_run, rtol=1e-4, atol=1e-6)
    assert (merged.correct_eval == merged.correct_run).all()


def test_labels_are_matched_by_name_not_by_position(trained, run, tmp_path):
    # one class only, "pos": by position in the file it would be label 0 ("neg" in the run)
    frame = _other_file(trained, tmp_path / "scratch.csv", n=20, seed=3)
    frame = frame[frame.sentiment == "pos"]
    path = tmp_path / "only_pos.jsonl"
    frame.to_json(path, orient="records", lines=True)
    assert main(["evaluate", str(run), "--data", str(path), "--text-column", "review",
                 "--label-column", "sentiment"]) == 0
    samples = pd.read_parquet(run / "evaluations" / "only_pos" / "samples.parquet")
    det = samples[samples.predictor == "deterministic"].sort_values("sample_id")
    expected = _independent_losses(trained, frame["review"], [1] * len(frame), scale=(1 - P) ** 2)
    np.testing.assert_allclose(det.loss, expected, rtol=1e-4, atol=1e-5)


def test_unknown_label_is_one_line_naming_it(trained, run, tmp_path, capsys):
    before = _record(run)
    path = tmp_path / "mixed.csv"
    _other_file(trained, path, relabel={"pos": "positive"})
    code = main(["evaluate", str(run), "--data", str(path), "--text-column", "review", "--label-column", "sentiment"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "Traceback" not in err
    assert "'positive'" in err and str(path) in err and "['neg', 'pos']" in err
    assert not (run / "evaluations").exists() and _record(run) == before


def test_existing_evaluation_needs_overwrite_and_bad_columns_are_named(trained, run, tmp_path, capsys):
    path = tmp_path / "c.csv"
    _other_file(trained, path, n=8)
    args = ["evaluate", str(run), "--data", str(path), "--text-column", "review", "--label-column", "sentiment"]
    assert main(args) == 0
    first = (run / "evaluations" / "c" / "evaluation.json").read_text()
    assert main(args) == 2 and "--overwrite" in capsys.readouterr().err
    assert (run / "evaluations" / "c" / "evaluation.json").read_text() == first
    assert main([*args, "--overwrite"]) == 0
    assert json.loads((run / "evaluations" / "c" / "evaluation.json").read_text())["evaluated_at"]
    assert sorted(p.name for p in (run / "evaluations").iterdir()) == ["c"]  # no temporary folders left
    assert main(["evaluate", str(run), "--data", str(path), "--name", "d"]) == 2  # the run's columns (text, label) are absent
    assert "text_column='text'" in capsys.readouterr().err


def test_instruction_runs_are_refused_clearly(run, tmp_path, capsys):
    meta_path = run / "meta.json"
    meta = json.loads(meta_path.read_text())
    meta["config"]["train"]["task"] = "instruction"
    meta_path.write_text(json.dumps(meta))
    path = tmp_path / "x.csv"
    pd.DataFrame({"text": ["a", "b"], "label": ["neg", "pos"]}).to_csv(path, index=False)
    assert main(["evaluate", str(run), "--data", str(path)]) == 2
    err = capsys.readouterr().err
    assert "instruction" in err and "not yet" in err
