"""The example run shipped with bounds (regenerate: python -m analysis.example_run) gives its stored values."""

import json
import math
from importlib.resources import files

import pytest

from bounds.report import evaluate_run
from bounds.runlog import validate_run

EXAMPLE = files("bounds") / "data" / "example_run"


def test_the_example_run_is_a_complete_valid_run():
    run = validate_run(EXAMPLE, require=("samples", "modules", "probes", "stability"))
    assert run.meta["status"] == "success"


def test_evaluate_run_reproduces_the_stored_bounds():
    stored = {r["name"]: r for r in json.loads((EXAMPLE / "bounds.json").read_text())["reports"]}
    reports = evaluate_run(EXAMPLE)
    assert {r.name for r in reports} == set(stored)
    for report in reports:
        saved = stored[report.name]
        assert report.evaluable == saved["evaluable"] and report.vacuous == saved["vacuous"], report.name
        for key in ("value", "measured", "bound_on_measured"):
            ours, theirs = getattr(report, key), saved[key]
            if theirs is None:  # stored as null: inf (vacuous) or NaN (not evaluable)
                assert not math.isfinite(ours), (report.name, key, ours)
            else:
                assert ours == pytest.approx(theirs, rel=1e-12), (report.name, key)
