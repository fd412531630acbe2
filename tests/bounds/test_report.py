"""bounds.report and bounds.cli on synthetic runs: values against the formulas by hand, the audit, IO."""

from __future__ import annotations

import argparse
import dataclasses
import json
import math

import numpy as np
import pandas as pd
import pytest
from numpy.testing import assert_allclose

from bounds.cli import main, register
from bounds.report import BoundReport, evaluate_run
from bounds.runlog import MissingTableError
from bounds.settings import BoundSettings

from .test_estimators import (
    N_TRAIN,
    STABILITY,
    TEST_DET,
    TEST_MEMBERS,
    TRAIN_DET,
    TRAIN_MEMBERS,
    ensemble_of,
    probe_rows,
    write_run,
)

C = 2.0
S = 0.75  # p = 0.5
ETA, HMIN, LAM, DELTA = 2.0, 0.2, 1.0, 0.05
R_HAT = 0.625  # deterministic train risk clipped at 2 (test_estimators)
R_TEST = 0.975
BETA_CLIPPED = (0.1 + 0.1 + 0.3 + 1.6) / 4  # retrain |loss_si - loss_s| with loss_si clipped at 2
MAX_CLIPPED = 1.6


def by_name(reports: list[BoundReport]) -> dict[str, BoundReport]:
    return {r.name: r for r in reports}


def assumption(report: BoundReport, name: str):
    (found,) = [a for a in report.assumptions if a.name == name]
    return found


@pytest.fixture
def run(tmp_path):
    return write_run(tmp_path / "run1")


@pytest.fixture
def reports(run):
    return by_name(evaluate_run(run, BoundSettings(delta=DELTA, lam=LAM, loss_range=C)))


def test_report_names(reports):
    assert list(reports) == ["prop42[retrain]", "prop42[warm_start]", "lemma43", "theorem44",
                             "uniform_stability", "ensemble"]
    assert all(r.evaluable and r.run_id == "run1" for r in reports.values())


def test_theorem44_equals_the_formula_by_hand(reports):
    r = reports["theorem44"]
    gap = math.sqrt((C**2 + 24 * C * ETA**2 / (HMIN + 2 * LAM * S)) / (2 * N_TRAIN * DELTA))
    assert_allclose([r.value, r.terms["r_hat"], r.terms["gap"]], [R_HAT + gap, R_HAT, gap])
    assert_allclose([r.measured, r.bound_on_measured], [R_TEST - R_HAT, gap])
    assert "Thm 4.4" in r.theorem and not r.vacuous and r.reason == ""
    inputs = {q.name: q for q in r.inputs}
    names = ("loss_range", "lipschitz", "hessian_min_eig", "n_train", "delta")
    assert_allclose([inputs[k].value for k in names], [C, ETA, HMIN, N_TRAIN, DELTA])
    assert "lipschitz_max" in inputs["lipschitz"].source and "clipped" in inputs["r_hat"].source
    # lam_eff is shown alongside (0.2 / 3.75, test_estimators), not used
    lam_eff, lam_need, n_need = r.diagnostics
    assert_allclose(lam_eff.value, 0.2 / 3.75)
    assert "not in the paper" in lam_eff.note
    # what it would take: Lambda_min = 0.2 > 0 needs no lam; n > (C^2 + 24 C eta^2 / D) / (2 delta C^2)
    assert (lam_need.name, lam_need.value) == ("lam_needed", 0.0)
    assert n_need.name == "n_needed"
    assert_allclose(n_need.value, (4 + 24 * 2 * 4 / 1.7) / (2 * 0.05 * 4))  # = 292.35..., D = 0.2 + 1.5
    assert r.value - r.terms["r_hat"] > C  # n = 100 < n_needed: the gap is above C, as n_needed says


def test_prop42_per_method_against_beta_hat(reports):
    beta = 2 * ETA**2 / ((HMIN + 2 * LAM * S) * N_TRAIN)
    r = reports["prop42[retrain]"]
    assert_allclose([r.value, r.measured], [beta, 0.875])  # unclipped |changes| 0.1, 0.1, 0.3, 3.0
    below = assumption(r, "measured_below_bound")
    assert below.holds is False and r.status == "violated"
    assert_allclose(reports["prop42[warm_start]"].measured, 0.075)
    assert assumption(reports["prop42[warm_start]"], "measured_below_bound").holds is False
    # theorem44 audits the same comparison for the preferred method (retrain)
    assert assumption(reports["theorem44"], "stability_below_theory").holds is False


def test_lemma43_printed_by_hand(reports):
    r = reports["lemma43"]
    gap = math.sqrt((C**2 + 12 * C * N_TRAIN * BETA_CLIPPED) / (2 * N_TRAIN * DELTA))
    assert_allclose([r.value, r.bound_on_measured], [R_HAT + gap, gap])
    assert "printed" in r.theorem
    assert assumption(r, "loss_range").holds is True


def test_lemma43_corrected_form(run):
    # param_distance is measured on the merged dW (delta_w), so eta must be the delta_w probe
    r = by_name(evaluate_run(run, BoundSettings(loss_range=C, form="corrected")))["lemma43"]
    beta_1 = ETA * (0.01 + 0.02 + 0.03 + 0.04) / 4  # delta_w lipschitz_max * mean param_distance (retrain)
    gap = math.sqrt((C**2 + 6 * C * N_TRAIN * (beta_1 + BETA_CLIPPED)) / (2 * N_TRAIN * DELTA))
    assert r.evaluable
    assert_allclose([r.value, {q.name: q.value for q in r.inputs}["stability_1"]], [R_HAT + gap, 0.05])
    assert "corrected" in r.theorem
    # eta in the factor space (lipschitz_max 3.0 there) against a delta_w distance: refused, naming both
    r = by_name(evaluate_run(run, BoundSettings(loss_range=C, form="corrected", space="factors")))["lemma43"]
    assert not r.evaluable and "beta_1" in r.reason
    assert "space='factors'" in r.reason and "space='delta_w'" in r.reason and "param_distance" in r.reason


def test_uniform_stability_by_hand(reports):
    r = reports["uniform_stability"]
    concentration = (4 * N_TRAIN * MAX_CLIPPED + C) * math.sqrt(math.log(1 / DELTA) / (2 * N_TRAIN))
    expected = R_HAT + 2 * MAX_CLIPPED + concentration
    assert_allclose(r.value, expected)
    assert assumption(r, "uniform_stability").holds is None
    assert "uniform" in r.theorem


def test_ensemble_bound_by_hand(reports):
    r = reports["ensemble"]
    member_train = np.minimum(TRAIN_MEMBERS, C).mean()
    gap = math.sqrt((C**2 + 24 * C * ETA**2 / (HMIN + 2 * LAM * S)) / (2 * N_TRAIN * DELTA))
    assert_allclose(r.value, member_train + gap)
    assert_allclose(r.measured, np.minimum(ensemble_of(TEST_MEMBERS), C).mean() - member_train)
    assert assumption(r, "jensen").holds is True
    assert "Thm 4.5" in r.theorem


def test_predictor_option_changes_the_risks(run):
    r = by_name(evaluate_run(run, BoundSettings(loss_range=C, predictor="member_mean")))["theorem44"]
    assert_allclose(r.terms["r_hat"], np.minimum(TRAIN_MEMBERS, C).mean())
    r = by_name(evaluate_run(run))["theorem44"]  # observed C, unclipped
    assert_allclose([r.terms["r_hat"], r.measured], [TRAIN_DET.mean(), TEST_DET.mean() - TRAIN_DET.mean()])
    assert assumption(r, "loss_range").holds is None
    r = by_name(evaluate_run(run, BoundSettings(lipschitz="q99")))["theorem44"]
    assert {q.name: q.value for q in r.inputs}["lipschitz"] == 1.5


def test_positive_curvature_holds_and_every_premise_is_measured(reports):
    r = reports["theorem44"]
    statuses = {a.name: a.holds for a in r.assumptions}
    assert statuses == {"loss_range": True, "psd_hessian": True, "positive_denominator": True,
                        "stationarity": True, "lipschitz_lam": True, "lipschitz_coverage": True,
                        "closeness": True, "stability_below_theory": False, "measured_below_bound": True}
    assert_allclose(assumption(r, "stationarity").measured, 0.05 / 1.0)  # grad_norm / lipschitz_mean
    assert_allclose(assumption(r, "closeness").measured, 0.04 / math.sqrt(5.0))
    assert r.assumptions_hold is False and r.status == "assumptions fail"


def test_negative_curvature_fails_psd_and_a_non_positive_denominator_is_vacuous(tmp_path):
    run = write_run(tmp_path / "neg", probes=probe_rows(hessian_min_eig=-0.1))
    # D = -0.1 + 2 * 1 * 0.75 > 0: the value is finite, but Prop. 4.2's PSD premise fails
    r = by_name(evaluate_run(run, BoundSettings(loss_range=C, lam=1.0)))["theorem44"]
    assert not r.vacuous and math.isfinite(r.value)
    assert assumption(r, "psd_hessian").holds is False and assumption(r, "positive_denominator").holds is True
    assert r.status == "assumptions fail"
    # lam = 0.05: D = -0.1 + 2 * 0.05 * 0.75 = -0.025 <= 0: vacuous, with the reason
    r = by_name(evaluate_run(run, BoundSettings(loss_range=C, lam=0.05)))["theorem44"]
    assert r.vacuous and r.value == math.inf and r.status == "vacuous"
    assert "-0.025" in r.reason and "<= 0" in r.reason
    assert assumption(r, "positive_denominator").holds is False
    below = assumption(r, "measured_below_bound")
    assert below.holds is True and "vacuous" in below.detail
    assert by_name(evaluate_run(run, BoundSettings(loss_range=C, lam=0.05)))["ensemble"].vacuous


def test_lambda_min_exactly_zero_holds_the_psd_premise(tmp_path):
    # PSD means Lambda_min >= 0: a zero eigenvalue (flat direction) satisfies it
    run = write_run(tmp_path / "zero", probes=probe_rows(hessian_min_eig=0.0))
    r = by_name(evaluate_run(run, BoundSettings(loss_range=C)))["theorem44"]
    psd = assumption(r, "psd_hessian")
    assert psd.holds is True and psd.measured == 0.0 and ">= 0" in psd.detail
    assert not r.vacuous  # D = 0 + 2 lam s = 1.5


def test_unconverged_lanczos_leaves_the_psd_premise_not_measured(tmp_path):
    probes = probe_rows(hessian_min_eig=0.2)
    unconverged = probes["quantity"] == "hessian_min_eig"
    probes.loc[unconverged, "converged"] = False
    probes.loc[unconverged, "residual"] = 0.37
    run = write_run(tmp_path / "unconv", probes=probes)
    reports = by_name(evaluate_run(run, BoundSettings(loss_range=C)))
    for name in ("prop42[retrain]", "theorem44", "ensemble"):
        r = reports[name]
        psd, denominator = assumption(r, "psd_hessian"), assumption(r, "positive_denominator")
        assert psd.holds is None and denominator.holds is None, name  # not held, not failed
        assert "not measured" in psd.detail and "did not converge" in psd.detail and "0.37" in psd.detail
        (h,) = [q for q in r.inputs if q.name == "hessian_min_eig"]
        assert "did not converge" in h.note, name  # the bound says its Lambda_min is no measurement
    r = reports["theorem44"]
    assert r.evaluable and math.isfinite(r.value)
    assert "not measured" in str(r)
    # a table written before the converged column: convergence unknown, so not measured either
    run = write_run(tmp_path / "old", probes=probe_rows().drop(columns="converged"))
    psd = assumption(by_name(evaluate_run(run, BoundSettings(loss_range=C)))["theorem44"], "psd_hessian")
    assert psd.holds is None and "does not record" in psd.detail


def test_eta_from_a_subset_is_labelled_in_inputs_and_audit(tmp_path):
    probes = probe_rows()
    probes.loc[probes["quantity"].str.startswith("lipschitz"), "n"] = 40  # 40 of n_train = 100 probed
    r = by_name(evaluate_run(write_run(tmp_path / "sub", probes=probes), BoundSettings(loss_range=C)))["theorem44"]
    label = f"eta: max over 40 of n={N_TRAIN} training examples (subset)"
    (eta,) = [q for q in r.inputs if q.name == "lipschitz"]
    assert eta.n == 40 and eta.note.startswith(label)
    coverage = assumption(r, "lipschitz_coverage")
    assert coverage.holds is None and coverage.detail.startswith(label)
    assert (coverage.measured, coverage.threshold) == (40, N_TRAIN)
    assert label in str(r) and r.status == "assumptions fail"  # stability_below_theory still fails
    # every example probed: labelled "(all)", and the premise holds
    r = by_name(evaluate_run(write_run(tmp_path / "all"), BoundSettings(loss_range=C)))["theorem44"]
    coverage = assumption(r, "lipschitz_coverage")
    assert coverage.holds is True and f"over {N_TRAIN} of n={N_TRAIN} training examples (all)" in coverage.detail
    assert {q.name: q for q in r.inputs}["lipschitz"].note == ""


def test_stationarity_closeness_and_lam_flip(tmp_path):
    far = STABILITY.assign(param_distance=1.0)
    run = write_run(tmp_path / "flip", probes=probe_rows(grad_norm=0.5, lam=2.0), stability=far)
    r = by_name(evaluate_run(run, BoundSettings(loss_range=C)))["theorem44"]
    assert assumption(r, "stationarity").holds is False
    assert assumption(r, "closeness").holds is False
    assert assumption(r, "lipschitz_lam").holds is False
    probes = probe_rows().assign(lam=np.nan)
    r = by_name(evaluate_run(write_run(tmp_path / "nolam", probes=probes), BoundSettings(loss_range=C)))[
        "theorem44"]
    assert assumption(r, "lipschitz_lam").holds is None


def test_missing_probes_gives_not_evaluable_reports_naming_the_command(tmp_path):
    run = write_run(tmp_path / "noprobes", with_probes=False)
    reports = by_name(evaluate_run(run, BoundSettings(loss_range=C)))
    for name in ("prop42[retrain]", "theorem44", "ensemble"):
        r = reports[name]
        assert not r.evaluable and r.status == "not evaluable"
        assert f"lora-dropout probe {run} --curvature" in r.reason
        assert math.isnan(r.value) and "not evaluable: run" in str(r)
    assert reports["lemma43"].evaluable and reports["uniform_stability"].evaluable  # need no probes


def test_missing_probe_row_is_named(tmp_path):
    run = write_run(tmp_path / "noq99", probes=probe_rows().query("quantity != 'lipschitz_q99'"))
    r = by_name(evaluate_run(run, BoundSettings(lipschitz="q99")))["theorem44"]
    assert not r.evaluable and "quantity=lipschitz_q99 space=delta_w" in r.reason


def test_missing_stability_and_modules(tmp_path):
    run = write_run(tmp_path / "bare", stability=None, modules=False)
    reports = by_name(evaluate_run(run, BoundSettings(loss_range=C)))
    assert not reports["prop42"].evaluable and "--stability-k" in reports["prop42"].reason
    assert not reports["lemma43"].evaluable and not reports["uniform_stability"].evaluable
    r = reports["theorem44"]
    assert r.evaluable and assumption(r, "closeness").holds is None
    assert "stability.parquet" in assumption(r, "closeness").detail
    assert math.isnan(r.diagnostics[0].value) and "modules.parquet" in r.diagnostics[0].note


def test_missing_samples_raises(tmp_path):
    run = write_run(tmp_path / "nosamples")
    (run / "samples.parquet").unlink()
    with pytest.raises(MissingTableError, match="samples.parquet"):
        evaluate_run(run)


def test_bad_options_raise():
    for kwargs in (dict(lipschitz="q50"), dict(space="weights"), dict(predictor="x"), dict(delta=1.5),
                   dict(lam=-1.0), dict(form="loose")):
        (name,) = kwargs
        with pytest.raises(ValueError, match=name):
            BoundSettings(**kwargs)


def test_to_frame_to_dict_and_str(reports):
    r = reports["theorem44"]
    frame = r.to_frame()
    assert list(frame.columns[:5]) == ["report", "run_id", "kind", "name", "value"]
    counts = frame["kind"].value_counts()
    assert counts["term"] == len(r.terms) and counts["input"] == len(r.inputs)
    assert counts["assumption"] == len(r.assumptions) and counts["value"] == 1
    assert frame.query("kind == 'value'")["value"].item() == r.value
    assert (frame["report"] == "theorem44").all()
    d = r.to_dict()
    assert d["value"] == r.value and d["status"] == r.status and len(d["assumptions"]) == len(r.assumptions)
    text = str(r)
    assert "theorem44" in text and "psd_hessian" in text and "assumptions fail" in text
    vacuous = BoundReport("x", "r", "t", math.inf, 0.1, "m", math.inf, {"gap": math.inf}, vacuous=True,
                          reason="D<=0")
    assert vacuous.to_dict()["value"] is None and vacuous.to_dict()["vacuous"] is True
    json.dumps(vacuous.to_dict(), allow_nan=False)
    with pytest.raises(dataclasses.FrozenInstanceError):
        r.value = 0.0
    with pytest.raises(TypeError):
        r.terms["gap"] = 0.0


def _strict(text: str):
    def refuse(constant):
        raise ValueError(f"non-strict JSON constant {constant}")

    return json.loads(text, parse_constant=refuse)


def test_cli_writes_strict_json_atomically(tmp_path, capsys):
    run = write_run(tmp_path / "clirun", probes=probe_rows(hessian_min_eig=-0.1))
    assert main([str(run), "--lam", "0.05", "--loss-range", "2"]) == 0  # theorem44 vacuous: inf -> null
    out = capsys.readouterr().out
    assert "theorem44 [vacuous]" in out and "bounds.json" in out
    document = _strict((run / "bounds.json").read_text())
    assert document["run_id"] == "clirun" and document["settings"]["loss_range"] == 2.0
    theorem44 = {r["name"]: r for r in document["reports"]}["theorem44"]
    assert theorem44["value"] is None and theorem44["vacuous"] is True
    assert sorted(p.name for p in run.iterdir() if p.name.startswith(".")) == []  # no temp file left


def test_cli_not_evaluable_reports_are_strict_json_too(tmp_path):
    run = write_run(tmp_path / "np", with_probes=False, stability=None)
    assert main([str(run)]) == 0
    document = _strict((run / "bounds.json").read_text())
    assert all(r["value"] is None for r in document["reports"] if not r["evaluable"])


def test_cli_register_and_errors(tmp_path, capsys):
    parser = argparse.ArgumentParser(prog="lora-dropout")
    register(parser.add_subparsers(dest="command", required=True))
    run = write_run(tmp_path / "reg")
    args = parser.parse_args(["bounds", str(run), "--delta", "0.1", "--predictor", "ensemble"])
    assert args.func(args) == 0
    assert _strict((run / "bounds.json").read_text())["settings"]["delta"] == 0.1
    (run / "samples.parquet").unlink()
    assert main([str(run)]) == 2
    assert "samples.parquet" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([str(run), "--loss-range", "-1"])


def test_reports_on_real_table_dtypes(tmp_path):
    """String columns as pandas writes them (pyarrow strings) and float32-rounded losses still work."""
    from .test_estimators import samples_frame

    samples = samples_frame()
    samples["loss"] = samples["loss"].astype(np.float32).astype(np.float64)
    samples["split"] = samples["split"].astype(pd.StringDtype("pyarrow"))
    run = write_run(tmp_path / "f32", samples=samples)
    r = by_name(evaluate_run(run, BoundSettings(loss_range=C)))["ensemble"]
    assert r.evaluable and assumption(r, "jensen").holds is True


def test_clipping_can_break_jensen_and_the_audit_says_so(tmp_path):
    """A clipped cross-entropy is not convex: members 0.1 and 5.0 clipped at 1 average 0.55, while the
    ensemble's -log((e^-0.1 + e^-5) / 2) = 0.786 stays below the clip, so the gap is negative."""
    from .test_estimators import samples_frame

    test_members = TEST_MEMBERS.copy()
    test_members[:, 0] = [0.1, 5.0]
    run = write_run(tmp_path / "j", samples=samples_frame(TRAIN_MEMBERS, test_members))
    clipped = assumption(by_name(evaluate_run(run, BoundSettings(loss_range=1.0)))["ensemble"], "jensen")
    assert clipped.holds is False
    assert_allclose(clipped.measured, 0.55 + np.log(np.mean(np.exp([-0.1, -5.0]))))
    assert assumption(by_name(evaluate_run(run))["ensemble"], "jensen").holds is True


def test_an_empty_stability_table_is_not_evaluable(tmp_path):
    run = write_run(tmp_path / "empty", stability=STABILITY.iloc[:0])
    reports = by_name(evaluate_run(run, BoundSettings(loss_range=C)))
    assert not reports["prop42"].evaluable and "no rows" in reports["prop42"].reason
    assert not reports["lemma43"].evaluable and reports["theorem44"].evaluable


# --------------------------------------------------------------------------------------------------
# hypothesis="expected": the expected predictor's probes and risks (issue 13 item 6)
# --------------------------------------------------------------------------------------------------

EXP_ETA, EXP_HMIN = 1.2, -0.5  # expected-predictor probes, distinct from the unmasked ones (2.0, 0.2)
FULL_SHIFT = 0.3  # the full (unmasked) rows' losses sit above the deterministic (expected) rows'


def two_hypothesis_run(path, *, eval_mode="ensemble", rescale=False, expected=True):
    """The synthetic run with unmasked AND expected probe rows, and full rows != deterministic rows."""
    from .test_estimators import samples_frame

    samples = samples_frame()
    samples.loc[samples["predictor"] == "full", "loss"] += FULL_SHIFT
    unmasked = probe_rows().assign(hypothesis="unmasked")
    frames = [unmasked]
    if expected:
        exp = probe_rows(hessian_min_eig=EXP_HMIN, grad_norm=0.01).assign(hypothesis="expected")
        exp.loc[exp["quantity"] == "lipschitz_max", "value"] = EXP_ETA
        frames.append(exp)
    run = write_run(path, samples=samples, probes=pd.concat(frames, ignore_index=True))
    meta = json.loads((run / "meta.json").read_text())
    meta["config"]["lora_dropout"].update(eval_mode=eval_mode, rescale=rescale)
    (run / "meta.json").write_text(json.dumps(meta))
    return run


def test_expected_hypothesis_uses_its_probes_and_the_deterministic_risks(tmp_path):
    run = two_hypothesis_run(tmp_path / "hyp")
    both = BoundSettings(delta=DELTA, lam=LAM, loss_range=C, hypothesis=["unmasked", "expected"])
    reports = by_name(evaluate_run(run, both))
    assert list(reports)[-2:] == ["prop42[expected]", "theorem44[expected]"]
    assert "theorem44" in reports and "lemma43" in reports  # the unmasked reports come first, unchanged
    r = reports["theorem44[expected]"]
    d = EXP_HMIN + 2 * LAM * S  # 1.0
    gap = math.sqrt((C**2 + 24 * C * EXP_ETA**2 / d) / (2 * N_TRAIN * DELTA))
    assert_allclose([r.terms["r_hat"], r.terms["gap"], r.measured], [R_HAT, gap, R_TEST - R_HAT])
    inputs = {q.name: q for q in r.inputs}
    assert_allclose([inputs["lipschitz"].value, inputs["hessian_min_eig"].value, inputs["expected_scale"].value],
                    [EXP_ETA, EXP_HMIN, 0.25])  # (1 - p)^2 at p = 0.5
    assert "hypothesis=expected" in inputs["lipschitz"].source and "deterministic" in inputs["r_hat"].source
    assert "expected predictor" in r.theorem
    assert assumption(r, "psd_hessian").holds is False and assumption(r, "positive_denominator").holds is True
    below = assumption(r, "stability_below_theory")
    assert below.holds is None and "unmasked model" in below.detail
    # the unmasked report still reads the unmasked rows and the full predictor's risks
    u = reports["theorem44"]
    assert_allclose([{q.name: q for q in u.inputs}["hessian_min_eig"].value, u.terms["r_hat"]],
                    [HMIN, np.minimum(TRAIN_DET + FULL_SHIFT, C).mean()])
    p42 = reports["prop42[expected]"]
    assert_allclose(p42.value, 2 * EXP_ETA**2 / (d * N_TRAIN))
    assert math.isnan(p42.measured) and assumption(p42, "measured_below_bound").holds is None
    assert p42.status == "assumptions fail"  # Lambda_min < 0: the PSD premise fails
    # what it would take, from the expected probes: lam > 0.5 / (2 * 0.75); n > (4 + 24*2*1.44/1) / (0.05*2*4)
    need = {q.name: q.value for q in r.diagnostics}
    assert_allclose([need["lam_needed"], need["n_needed"]], [1 / 3, (4 + 24 * 2 * 1.44) / 0.4])


def test_expected_hypothesis_with_rescale_has_scale_one(tmp_path):
    run = two_hypothesis_run(tmp_path / "rescaled", rescale=True)
    r = by_name(evaluate_run(run, BoundSettings(loss_range=C, hypothesis="expected")))["theorem44[expected]"]
    assert {q.name: q for q in r.inputs}["expected_scale"].value == 1.0


def test_expected_hypothesis_fails_clearly_when_the_run_does_not_log_its_predictor(tmp_path):
    run = two_hypothesis_run(tmp_path / "full", eval_mode="full")
    reports = by_name(evaluate_run(run, BoundSettings(loss_range=C, hypothesis="expected")))
    r = reports["theorem44[expected]"]
    assert not r.evaluable and "eval_mode='full'" in r.reason and "no risk of the expected predictor" in r.reason
    assert reports["prop42[expected]"].evaluable  # Prop. 4.2 needs no risk
    # no expected probes: the reason names the command that measures them
    none = two_hypothesis_run(tmp_path / "none", expected=False)
    r = by_name(evaluate_run(none, BoundSettings(hypothesis="expected")))
    assert "--curvature --hypothesis expected" in r["theorem44[expected]"].reason
    with pytest.raises(ValueError, match="hypothesis"):
        BoundSettings(hypothesis="masked")


def test_cli_hypothesis_keeps_both_in_bounds_json(tmp_path):
    run = two_hypothesis_run(tmp_path / "cli")
    assert main([str(run), "--loss-range", "2", "--hypothesis", "unmasked", "expected"]) == 0
    document = _strict((run / "bounds.json").read_text())
    names = [r["name"] for r in document["reports"]]
    assert {"theorem44", "theorem44[expected]", "prop42[expected]"} <= set(names)
    assert document["settings"]["hypothesis"] == ["unmasked", "expected"]
    exp = {r["name"]: r for r in document["reports"]}["theorem44[expected]"]
    assert {d["name"] for d in exp["diagnostics"]} >= {"lam_needed", "n_needed"}
