"""The collected summary's columns are the declared ones, and its rows carry the reports' and probes' values
under explicit keys (checked on the example run shipped with bounds)."""

import json
import math
from importlib.resources import files

import pandas as pd
import pytest

from analysis.collect import CONFIG_COLUMNS, collect
from analysis.summary import COLUMNS, KEYS, NOT_APPLICABLE, SUMMARY_COLUMNS, frame, row, select, value
from bounds.report import evaluate_run

EXAMPLE = files("bounds") / "data" / "example_run"


@pytest.fixture(scope="module")
def summary():
    coll = collect([EXAMPLE])
    assert not coll.skipped, coll.skipped
    return coll.summary


def test_the_columns_are_exactly_the_declared_ones(summary):
    assert COLUMNS == ("run_id", "quantity", "report", "estimator", "space", "hypothesis", "value", "stderr")
    assert COLUMNS == tuple(c.name for c in SUMMARY_COLUMNS) and set(KEYS) < set(COLUMNS)
    assert list(summary.columns) == [*COLUMNS, *(column for column, _, _ in CONFIG_COLUMNS)]
    assert list(frame([]).columns) == list(COLUMNS[1:])
    for key in KEYS:  # a key that does not apply is the empty string, never missing
        assert summary[key].map(type).eq(str).all(), key
    # no structure packed into a quantity's name
    assert not summary["quantity"].str.contains(r"[:\[\]]").any()


def test_a_row_holds_the_value_of_its_bound_report(summary):
    stored = {r["name"]: r for r in json.loads((EXAMPLE / "bounds.json").read_text())["reports"]}
    reports = {r.name: r for r in evaluate_run(EXAMPLE)}
    # by hand: Theorem 4.4 on the example run is 3.1151 (bounds.json), not vacuous
    (theorem44,) = select(summary, "bound", report="theorem44").itertuples()
    assert (theorem44.estimator, theorem44.space, theorem44.hypothesis) == (NOT_APPLICABLE, NOT_APPLICABLE, "unmasked")
    assert theorem44.value == reports["theorem44"].value == pytest.approx(3.1151397644912535, rel=1e-12)
    assert theorem44.value == pytest.approx(stored["theorem44"]["value"], rel=1e-12)
    assert math.isnan(theorem44.stderr)
    assert value(summary, "vacuous", report="theorem44") == 0.0
    assert value(summary, "bound_on_measured", report="theorem44") == reports["theorem44"].bound_on_measured
    # Prop. 4.2 per estimator: beta_hat is the report's measured value, with its stderr, under explicit keys
    (beta,) = select(summary, "beta_hat", estimator="retrain").itertuples()
    assert beta.report == "prop42[retrain]" and beta.hypothesis == "unmasked"
    assert beta.value == reports["prop42[retrain]"].measured == pytest.approx(0.01135335365931193, rel=1e-12)
    assert beta.stderr == next(q.stderr for q in reports["prop42[retrain]"].inputs if q.name == "beta_hat") > 0
    assert sorted(select(summary, "beta_hat")["estimator"]) == ["influence", "retrain", "warm_start"]
    for name, report in reports.items():  # every evaluable report's four numbers, nothing else under its name
        rows = summary[summary["report"] == name].set_index("quantity")["value"]
        assert {"bound", "bound_on_measured", "measured", "vacuous"} <= set(rows.index), name
        assert rows["measured"] == report.measured, name


def test_a_probe_row_holds_the_probes_table_value(summary):
    probes = pd.read_parquet(EXAMPLE / "probes.parquet")
    expected = probes[(probes["quantity"] == "hessian_min_eig") & (probes["space"] == "delta_w") &
                      (probes["hypothesis"] == "unmasked")]["value"]
    found = select(summary, "hessian_min_eig", space="delta_w", hypothesis="unmasked")
    assert found["report"].eq(NOT_APPLICABLE).all() and found["value"].tolist() == expected.tolist()
    assert value(summary, "hessian_min_eig_converged", space="delta_w", hypothesis="unmasked") in (0.0, 1.0)


def test_row_select_and_value():
    s = pd.DataFrame([{"run_id": "a", **row("bound", 0.2, report="theorem44", hypothesis="unmasked")},
                      {"run_id": "a", **row("bound", 0.3, report="theorem44[expected]", hypothesis="expected")},
                      {"run_id": "a", **row("test_accuracy_full", 0.7)}])
    assert list(s.columns) == list(COLUMNS)
    assert select(s, "bound", hypothesis="expected")["value"].tolist() == [0.3]
    assert len(select(s, "bound")) == 2 and select(s, "bound", space="delta_w").empty
    assert value(s, "test_accuracy_full") == 0.7 and math.isnan(value(s, "bound", report="lemma43"))
    assert value(s, "bound", default=-1.0, report="lemma43") == -1.0
