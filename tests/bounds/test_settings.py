"""bounds.settings, bounds.inputs and the bounds.json writers: options checked once, inputs derived once, one
file format for every writer."""

from __future__ import annotations

import json

import pytest

from bounds.cli import main as bounds_main
from bounds.inputs import RunInputs
from bounds.report import BoundReport, recorded_certificate, write_bounds, write_certificate_entries
from bounds.runlog import DEFAULT_POSTERIOR_STD_GRID, BoundPredictor, Hypothesis, RunLogError, Space
from bounds.settings import BoundSettings, CertificateSettings

from .test_estimators import N_TRAIN, P, write_run


@pytest.mark.parametrize(("changes", "message"), [
    ({"delta": 0.0}, "delta must be a finite number in (0, 1), got 0.0"),
    ({"delta": float("nan")}, "delta must be"),
    ({"lam": float("inf")}, "lam must be a finite number >= 0, got inf"),
    ({"loss_range": 0}, "loss_range must be a finite number > 0, got 0.0"),
    ({"lipschitz": "q50"}, "lipschitz='q50' is not one of ('max', 'q99')"),
    ({"space": "weights"}, "space='weights' is not one of 'delta_w', 'factors'"),
    ({"predictor": "member"}, "predictor='member'"),
    ({"form": "loose"}, "form='loose'"),
    ({"hypothesis": ()}, "hypothesis: give at least one of unmasked, expected"),
    ({"hypothesis": ["unmasked", "masked"]}, "hypothesis='masked'"),
    ({"stability_method": ""}, "stability_method must be a non-empty string"),
    ({"certificate": {"posterior_std_grid": [0.1]}}, "certificate must be a CertificateSettings"),
])
def test_bound_settings_name_the_bad_field_and_value(changes, message):
    with pytest.raises(ValueError) as info:
        BoundSettings(**changes)
    assert message in str(info.value)


@pytest.mark.parametrize(("changes", "message"), [
    ({"posterior_std_grid": ()}, "posterior_std_grid must hold at least one value"),
    ({"posterior_std_grid": (0.1, -1.0)}, "posterior_std_grid must be a finite number > 0, got -1.0"),
    ({"posterior_std_grid": "0.1"}, "posterior_std_grid must be a sequence"),
    ({"posterior_draws": 0}, "posterior_draws must be an integer >= 1, got 0"),
    ({"delta_mc": 1.0}, "delta_mc must be a finite number in (0, 1), got 1.0"),
    ({"seed": 1.5}, "seed must be an integer, got 1.5"),
    ({"prior": 3}, "prior must be a string"),
])
def test_certificate_settings_name_the_bad_field_and_value(changes, message):
    with pytest.raises(ValueError) as info:
        CertificateSettings(**changes)
    assert message in str(info.value)


def test_settings_are_frozen_typed_and_plain_json():
    s = BoundSettings(lam=2, space="factors", predictor="ensemble", hypothesis=["expected", "unmasked", "expected"],
                      certificate=CertificateSettings(posterior_std_grid=[0.1, 0.01], seed=3))
    assert s.lam == 2.0 and isinstance(s.lam, float)
    assert s.space is Space.FACTORS and s.predictor is BoundPredictor.ENSEMBLE
    assert s.hypothesis == (Hypothesis.EXPECTED, Hypothesis.UNMASKED)  # repeats dropped, order kept
    assert s.posterior_std_grid == (0.1, 0.01) and s.lipschitz_quantity == "lipschitz_max"
    assert BoundSettings(hypothesis="expected").hypothesis == (Hypothesis.EXPECTED,)
    with pytest.raises(AttributeError):
        s.delta = 0.1
    d = s.to_dict()
    assert json.loads(json.dumps(d)) == d
    assert d["space"] == "factors" and d["hypothesis"] == ["expected", "unmasked"] and d["form"] == "printed"
    assert d["certificate"]["posterior_std_grid"] == [0.1, 0.01] and d["certificate"]["posterior_draws"] is None
    assert CertificateSettings.from_dict(d["certificate"]) == s.certificate
    assert BoundSettings().posterior_std_grid is None  # the certificate's audit then uses the default grid
    assert CertificateSettings().posterior_std_grid == DEFAULT_POSTERIOR_STD_GRID
    with pytest.raises(ValueError, match="unknown field"):
        CertificateSettings.from_dict({"grid": [0.1]})


def test_each_hypothesis_has_its_own_predictor_unless_one_is_given():
    assert BoundSettings().predictor_for("unmasked") is BoundPredictor.FULL
    assert BoundSettings().predictor_for("expected") is BoundPredictor.DETERMINISTIC
    assert BoundSettings(predictor="member_mean").predictor_for("expected") is BoundPredictor.MEMBER_MEAN


def test_run_inputs_are_derived_once_with_their_sources(tmp_path):
    run = write_run(tmp_path / "r")
    inputs = RunInputs(run, BoundSettings(loss_range=2.0, lam=0.5))
    assert (inputs.p.value, inputs.n.value) == (P, N_TRAIN)
    assert inputs.p.source == "meta.json config.lora_dropout.dropout_rate"
    assert inputs.n.source.startswith("meta.json ") and inputs.lam.value == 0.5
    assert inputs.loss_range.rigorous and inputs.loss_range.value == 2.0
    assert inputs.lipschitz is inputs.lipschitz and inputs.lipschitz.name == "lipschitz"  # computed once
    assert inputs.hessian_min_eig.source.startswith("probes.parquet quantity=hessian_min_eig space=delta_w")
    assert inputs.predictor is BoundPredictor.FULL and inputs.method() == "retrain"
    # a missing table fails only what needs it
    bare = RunInputs(write_run(tmp_path / "np", with_probes=False))
    assert bare.p.value == P
    with pytest.raises(RunLogError, match="--curvature"):
        bare.lipschitz  # noqa: B018


def test_every_writer_writes_one_format(tmp_path):
    run = write_run(tmp_path / "r")
    settings = BoundSettings(delta=0.1, loss_range=2.0)
    document = json.loads(write_bounds(run, settings).read_text())
    assert list(document) == ["reports", "run_id", "schema_version", "settings"]
    assert document["settings"] == settings.to_dict()
    # the command line writes the same document for the same options
    assert bounds_main([str(run), "--delta", "0.1", "--loss-range", "2"]) == 0
    assert json.loads((run / "bounds.json").read_text()) == document
    # certify's entries are merged in, and read back
    assert recorded_certificate(run) is None
    certify = CertificateSettings(posterior_std_grid=(0.01, 0.1), posterior_draws=2, prior="init", seed=0)
    entry = BoundReport.not_evaluable("pacbayes_dropout", "r", "t", "none")
    write_certificate_entries(run, [entry], certify)
    merged = json.loads((run / "bounds.json").read_text())
    assert merged["settings"] == {**settings.to_dict(), "certificate": certify.to_dict()}
    assert recorded_certificate(run) == certify
    assert [r["name"] for r in merged["reports"]][-1] == "pacbayes_dropout"
