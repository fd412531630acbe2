"""The run-log schema: validation finds each kind of damage and names it."""

import json

import numpy as np
import pandas as pd
import pytest

from bounds.runlog import (
    SCHEMA_VERSION,
    TABLES,
    MissingTableError,
    RunLogError,
    read_run,
    read_steps,
    run_state,
    validate_run,
)


def _meta(**kw):
    meta = {"schema_version": SCHEMA_VERSION, "run_id": "r", "status": "success", "error": None, "config": {},
            "started_at": "2026-01-01T00:00:00+00:00"}
    meta.update(kw)
    return meta


def _step(**kw):
    row = {"step": 0, "epoch": 0.0, "split": "test", "predictor": "ensemble", "n": 10, "risk": 0.5,
           "accuracy": 0.7, "ece": 0.1, "nll": 0.5, "brier": 0.4, "objective": None, "wall_s": 1.0}
    row.update(kw)
    return row


def _write(run, meta=None, steps=(), samples=None):
    run.mkdir(exist_ok=True)
    (run / "meta.json").write_text(json.dumps(meta or _meta()))
    (run / "steps.jsonl").write_text("".join(json.dumps(s) + "\n" for s in steps))
    if samples is not None:
        samples.to_parquet(run / "samples.parquet")
    return run


def _samples(n=4, **override):
    frame = pd.DataFrame({"step": 0, "split": "test", "sample_id": np.arange(n), "predictor": "member",
                          "instance": 0, "loss": 0.3, "correct": True, "confidence": 0.8})
    for k, v in override.items():
        frame[k] = v
    return frame


def test_a_good_run_validates(tmp_path):
    run = validate_run(_write(tmp_path / "r", steps=[_step(), _step(predictor="member_mean")], samples=_samples()),
                       require=("samples",))
    assert len(run.steps) == 2 and len(run.table("samples")) == 4


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (dict(samples=_samples(loss=np.inf)), "non-finite"),
        (dict(samples=_samples().drop(columns="loss")), "missing column"),
        (dict(samples=pd.concat([_samples(), _samples()])), "duplicate key"),
        (dict(steps=[_step(), _step()]), "duplicate key"),
        (dict(steps=[_step(predictor="majority")]), "unknown predictor"),
        (dict(meta=_meta(status="done")), "status='done' is not one of"),
        (dict(meta=_meta(status="failed")), "without an error"),
        (dict(meta={k: v for k, v in _meta().items() if k != "run_id"}), "missing field"),
    ],
)
def test_damage_is_named(tmp_path, damage, message):
    with pytest.raises(RunLogError, match=message):
        validate_run(_write(tmp_path / "r", **damage))


def _probes(**override):
    frame = pd.DataFrame({"quantity": ["lipschitz_max", "hessian_min_eig"], "space": "delta_w",
                          "value": [1.0, -0.1], "stderr": np.nan, "iterations": [8, 40],
                          "residual": [np.nan, 1e-3], "converged": [True, False], "n": [8, 4],
                          "lam": [1.0, np.nan]})
    for k, v in override.items():
        frame[k] = v
    return frame


@pytest.mark.parametrize(
    ("probes", "message"),
    [
        (_probes().drop(columns="converged"), r"missing column\(s\) \['converged'\]"),
        (_probes(converged=["yes", "no"]), "converged must be boolean"),
        (_probes(converged=[True, None]), "converged has 1 missing"),
    ],
)
def test_probes_record_lanczos_convergence(tmp_path, probes, message):
    run = _write(tmp_path / "r", steps=[_step()])
    _probes().to_parquet(run / "probes.parquet")
    assert validate_run(run, require=("probes",)).table("probes")["converged"].tolist() == [True, False]
    probes.to_parquet(run / "probes.parquet")
    with pytest.raises(RunLogError, match=message):
        validate_run(run, require=("probes",))


def test_missing_table_names_its_producer(tmp_path):
    run = _write(tmp_path / "r", steps=[_step()])
    with pytest.raises(MissingTableError, match="lora-dropout probe .* --stability-k"):
        read_run(run).table("stability")
    with pytest.raises(RunLogError, match="probes.parquet"):
        validate_run(run, require=("probes",))


def test_torn_last_line_is_dropped_but_a_torn_middle_line_is_an_error(tmp_path):
    run = _write(tmp_path / "r", steps=[_step()])
    with open(run / "steps.jsonl", "a") as fh:
        fh.write('{"step": 1, "epo')
    assert len(read_steps(run)) == 1
    (run / "steps.jsonl").write_text('{"step": 1, "epo\n' + json.dumps(_step()) + "\n")
    with pytest.raises(RunLogError, match="line 1"):
        read_steps(run)


def test_run_state_tells_a_dead_writer(tmp_path):
    import socket

    assert run_state(_meta(status="success")) == "success"
    assert run_state(_meta(status="running", host=socket.gethostname(), pid=2**22 + 12345)) == "stale"
    import os

    assert run_state(_meta(status="running", host=socket.gethostname(), pid=os.getpid())) == "running"


def test_every_column_is_documented():
    for table in TABLES.values():
        assert set(table.key) <= set(table.column_names), table.name
        assert all(c.description for c in table.columns), table.name


def test_probes_without_a_hypothesis_column_read_as_unmasked(tmp_path):
    run = _write(tmp_path / "r", steps=[_step()])
    _probes().to_parquet(run / "probes.parquet")  # written before the column existed
    table = validate_run(run, require=("probes",)).table("probes")
    assert table["hypothesis"].tolist() == ["unmasked", "unmasked"]
    # both hypotheses in one table: the key includes the hypothesis, a repeat within one is still refused
    both = pd.concat([_probes(hypothesis="unmasked"), _probes(hypothesis="expected")], ignore_index=True)
    both.to_parquet(run / "probes.parquet")
    assert sorted(set(validate_run(run, require=("probes",)).table("probes")["hypothesis"])) == ["expected",
                                                                                                 "unmasked"]
    pd.concat([both, both.iloc[:1]]).to_parquet(run / "probes.parquet")
    with pytest.raises(RunLogError, match="duplicate key"):
        validate_run(run, require=("probes",))
