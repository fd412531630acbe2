"""The example run shipped with bounds (regenerate: python -m analysis.example_run) gives its stored values."""

import json
import math
import shutil
from importlib.resources import files

import pytest

from bounds.report import evaluate_run, write_bounds
from bounds.runlog import validate_run
from bounds.settings import BoundSettings

EXAMPLE = files("bounds") / "data" / "example_run"


def test_the_example_run_is_a_complete_valid_run():
    run = validate_run(EXAMPLE, require=("samples", "modules", "probes", "stability"))
    assert run.meta.status == "success"


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


def test_write_bounds_reproduces_the_stored_document(tmp_path):
    """The one writer of bounds.json, at the settings the example was written with, gives the stored reports
    entry for entry (every number, input, source and audit) and records those settings."""
    stored = json.loads((EXAMPLE / "bounds.json").read_text())
    run = tmp_path / "example_run"
    shutil.copytree(EXAMPLE, run)
    settings = BoundSettings(**stored["settings"])
    document = json.loads(write_bounds(run, settings).read_text())
    assert document["reports"] == stored["reports"]
    assert (document["run_id"], document["schema_version"]) == (stored["run_id"], stored["schema_version"])
    assert document["settings"] == settings.to_dict()
    assert stored["settings"].items() <= document["settings"].items()
