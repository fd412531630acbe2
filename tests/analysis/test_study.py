"""A tiny study end to end: runs, resume, collection with a corrupted run, Ray, figures and report."""

import dataclasses
import json
import shutil

import numpy as np
import pandas as pd
import pytest

from analysis.collect import collect
from analysis.presets import QUICK_POSTERIOR_STD_GRID, make_profile, profile_with
from analysis.reproduce import reproduce
from analysis.spec import StudySpec
from analysis.study import point_status, run_study
from analysis.summary import KEYS, select, value
from analysis.verdicts import Verdict
from bounds.runlog import read_meta
from lora_dropout.runs.config import RunConfig
from tests.tiny import save_tiny_classifier, write_tiny_csv


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("study")
    return {"model": str(save_tiny_classifier(root / "model")), "data": str(write_tiny_csv(root / "d.csv")),
            "group_column": "group", "n_train": 32, "n_test": None, "epochs": 2, "batch_size": 8,
            "eval_every": 0, "eval_train_size": 32, "eval_batch_size": 32, "lr": 5e-3}


def _spec(tiny, name="tiny"):
    return StudySpec(name=name, base=RunConfig().replace(train=tiny),
                     grid={"dropout_rate": [0.0, 0.3], "n_instances": [1, 2]})


def test_study_runs_resumes_and_keeps_failed_attempts(tiny, tmp_path):
    spec = _spec(tiny)
    first = run_study(spec, tmp_path, progress=False)
    assert len(first.done) == 4 and not first.failed
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert [p["run_id"] for p in manifest["points"]] == [p.run_id for p in spec.expand()]
    started = {r: read_meta(tmp_path / r)["started_at"] for r in first.done}
    shutil.rmtree(tmp_path / "p0.3-N2")
    meta_path = tmp_path / "p0.0-N2" / "meta.json"
    meta = json.loads(meta_path.read_text())
    meta_path.write_text(json.dumps({**meta, "status": "failed", "error": "simulated crash"}))
    second = run_study(spec, tmp_path, progress=False)
    assert sorted(second.done) == ["p0.0-N2", "p0.3-N2"] and sorted(second.skipped) == ["p0.0-N1", "p0.3-N1"]
    for run_id in second.skipped:  # untouched: not retrained
        assert read_meta(tmp_path / run_id)["started_at"] == started[run_id]
    attempts = list((tmp_path / "_attempts").iterdir())
    assert len(attempts) == 1 and attempts[0].name.startswith("p0.0-N2-")  # the failed attempt is kept
    assert read_meta(attempts[0])["error"] == "simulated crash"


def test_collect_reports_a_corrupted_run_and_keeps_the_others(tiny, tmp_path):
    run_study(_spec(tiny), tmp_path, progress=False)
    (tmp_path / "p0.3-N1" / "meta.json").write_text("{not json")
    coll = collect(tmp_path)
    assert sorted(coll.runs["run_id"]) == ["p0.0-N1", "p0.0-N2", "p0.3-N2"]
    assert len(coll.skipped) == 1 and "p0.3-N1" in coll.skipped[0][0] and "corrupted" in coll.skipped[0][1]
    assert {"test_accuracy_ensemble", "gap_full", "sparsity_realised"} <= set(coll.summary["quantity"])
    saved = coll.save(tmp_path / "collected")
    assert len(pd.read_parquet(saved / "summary.parquet")) == len(coll.summary)


@pytest.mark.slow
def test_ray_executor_gives_the_same_table_as_local(tiny, tmp_path):
    pytest.importorskip("ray")
    spec = _spec(tiny)
    local = run_study(spec, tmp_path / "local", progress=False, threads=1)
    remote = run_study(spec, tmp_path / "ray", executor="ray", progress=False, threads=1)
    assert sorted(remote.done) == sorted(local.done) and not remote.failed
    a, b = (collect(tmp_path / d).summary for d in ("local", "ray"))
    key = ["run_id", "quantity", *KEYS]
    merged = a.merge(b, on=key, suffixes=("_local", "_ray"))
    assert len(merged) == len(a) == len(b)
    finite = np.isfinite(merged["value_local"])
    np.testing.assert_allclose(merged.loc[finite, "value_ray"], merged.loc[finite, "value_local"], rtol=1e-6)


@pytest.mark.filterwarnings("error::analysis.figures.FigureAxesWarning")  # every axis labelled and numbered
def test_reproduce_tiny_profile_writes_every_figure_and_the_report(tiny, tmp_path):
    profile = profile_with(make_profile("quick"), **tiny)
    # eta on a subset of the 32 training examples, as the quick profile does on its 192
    post = dataclasses.replace(profile.spec.post, lipschitz_examples=12)
    profile = dataclasses.replace(profile, spec=dataclasses.replace(profile.spec, post=post))
    result = reproduce(profile, tmp_path, progress=False)
    assert not result.failed
    probes = pd.read_parquet(tmp_path / "runs" / "p0.3-N2-seed0" / "probes.parquet")
    lipschitz = probes[probes["quantity"].str.startswith("lipschitz_") | (probes["quantity"] == "grad_norm")]
    assert len(lipschitz) and (lipschitz["n"] == 12).all()
    names = {p.stem for p in result.figures}
    assert names == {"fig5_accuracy_over_p", "fig5_risk_over_p", "fig5_accuracy_over_n", "fig1_loss_curves",
                     "fig4_ablation", "fig3_ece_over_training", "fig3_reliability", "bound_vs_p",
                     "stability_beta", "compression_risk", "compression_jensen_gap", "sparsity",
                     "certificate_vs_p"}  # no certificate_vs_n: only one N is certified
    recertified, started = _check_certificates(tmp_path, result, profile.spec)
    for png in result.figures:
        assert png.with_suffix(".pdf").is_file()
        sidecar = json.loads(png.with_suffix(".json").read_text())
        assert {"commit", "dirty", "run_ids", "versions", "date", "command", "config", "table"} <= set(sidecar)
        assert sidecar["run_ids"] and sidecar["table"]
        # every run was trained here, by this checkout: one commit, all runs
        assert list(sidecar["run_commits"].values()) == [sidecar["run_ids"]]
    report = result.report.read_text()
    assert "Runs by the commit" not in report and "## Failed runs" not in report
    for claim in result.claims:
        assert claim.statement in report
    assert "Wall time" in report
    # resuming does no training: every run is already done
    again = reproduce(profile, tmp_path, progress=False)
    assert again.claims == result.claims
    assert (recertified / "certificates.parquet").is_file() and read_meta(recertified)["started_at"] == started
    # a run kept from an older commit (resuming keeps finished runs) is named with that commit
    meta_path = tmp_path / "runs" / "p0.6-N2-seed0" / "meta.json"
    meta = json.loads(meta_path.read_text())
    meta["git"]["commit"] = "0" * 40
    meta_path.write_text(json.dumps(meta))
    kept = reproduce(profile, tmp_path, progress=False)
    assert f"`{'0' * 40}` (1 run: p0.6-N2-seed0)" in kept.report.read_text()
    sidecar = json.loads(kept.figures[0].with_suffix(".json").read_text())
    assert sidecar["run_commits"]["0" * 40] == ["p0.6-N2-seed0"]


def _check_certificates(out, result, spec):
    """The quick profile certifies its p panel: collected, audited against the grid it used, claimed, resumed."""
    summary = pd.read_parquet(out / "collected" / "summary.parquet")
    cert = select(summary, "certificate", report="pacbayes_dropout")
    assert sorted(zip(cert["dropout_rate"], cert["n_instances"], strict=True)) == [(0.0, 1), (0.3, 2), (0.6, 2)]
    assert cert["value"].between(0, 1).all()
    run = summary[summary["run_id"] == "p0.3-N2-seed0"]
    gibbs, ensemble = {"report": "pacbayes_dropout"}, {"report": "pacbayes_dropout_ensemble"}
    assert value(run, "posterior_std", **gibbs) == QUICK_POSTERIOR_STD_GRID[0]
    assert value(run, "posterior_draws", **gibbs) == 2
    # the init prior certifies every training example; the tiny data have groups, so the bound counts groups
    assert value(run, "n_bound_rows", **gibbs) == 32
    n_groups = json.loads((out / "runs" / "p0.3-N2-seed0" / "meta.json").read_text())["data"]["n_groups"]["train"]
    assert value(run, "n_bound", **gibbs) == n_groups < 32
    for name, keys in (("measured", gibbs), ("kl", gibbs), ("train_gibbs_error", gibbs), ("certificate", ensemble),
                       ("linear_certificate", ensemble)):
        assert np.isfinite(value(run, name, **keys)), name
    assert value(run, "certificate", **ensemble) == pytest.approx(
        min(1.0, 2 * value(run, "linear_certificate", **ensemble)))
    # the grid audit holds against the grid the study used (recorded in bounds.json), not the default grid
    bounds = pd.read_parquet(out / "collected" / "bounds.parquet")
    grid = bounds[(bounds["report"] == "pacbayes_dropout") & (bounds["name"] == "grid_fixed_in_advance")]
    assert len(grid) == 3 and (grid["holds"] == "True").all()
    claims = {c.name: c for c in result.claims}
    assert claims["certificate_non_vacuous"].verdict is not Verdict.NOT_EVALUABLE
    assert claims["certificate_selects_p"].verdict is Verdict.INCONCLUSIVE  # one seed
    # resume: certificates missing (or measured with other settings) are measured again, without retraining
    point = next(p for p in spec.expand() if p.run_id == "p0.3-N2-seed0")
    run_dir = out / "runs" / point.run_id
    assert point_status(out / "runs", point) == "done"
    other = dataclasses.replace(point, post=dataclasses.replace(point.post, posterior_draws=3))
    assert point_status(out / "runs", other) == "certificates missing"
    (run_dir / "certificates.parquet").unlink()
    assert point_status(out / "runs", point) == "certificates missing"
    return run_dir, read_meta(run_dir)["started_at"]


def test_full_profile_can_decide_the_adalora_claim_and_draws_curves():
    """The full profile runs AdaLoRA with and without LoRA Dropout over the LoRA runs' seeds, and the runs of
    Figures 1 and 3 have at least 10 evaluation points (counted here from the schedule, not from the code)."""
    points = make_profile("full").spec.expand()
    seeds = {}
    for pt in points:
        c = pt.config
        seeds.setdefault((c.adapter.method, c.lora_dropout.dropout_rate, c.lora_dropout.n_instances),
                         set()).add(c.train.seed)
    assert seeds[("adalora", 0.0, 1)] == seeds[("adalora", 0.3, 2)] == seeds[("lora", 0.0, 1)] == {0, 1, 2}
    for pt in points:
        c, ld = pt.config, pt.config.lora_dropout
        if c.adapter.method == "lora" and (ld.dropout_rate, ld.n_instances) in {(0.0, 1), (0.3, 2)}:
            tc = c.train
            n_steps = tc.epochs * -(-tc.n_train // tc.batch_size)
            evals = set(range(tc.eval_every, n_steps + 1, tc.eval_every)) | {n_steps} | ({0} if tc.eval_at_start else set())
            assert len(evals) >= 10, (pt.run_id, sorted(evals))


def test_stability_on_an_adalora_point_is_refused_before_training():
    # probe_run cannot do leave-one-out on AdaLoRA (its rank allocator is not saved): the spec says so
    # when it is expanded, naming the point, instead of failing after the run has trained
    spec = StudySpec(name="s", points=({"method": "adalora"}, {"method": "lora"}), post_for=(({}, {"stability_k": 2}),))
    with pytest.raises(ValueError, match="point adalora: stability_k=2 on an AdaLoRA run"):
        spec.expand()
    lora_only = StudySpec(name="s", points=({"method": "adalora"}, {"method": "lora"}),
                          post_for=(({"method": "lora"}, {"stability_k": 2}),))
    assert [pt.post.stability_k for pt in lora_only.expand()] == [0, 2]


def test_report_lists_failed_runs_by_their_error(tmp_path):
    from analysis.reproduce import write_report

    profile = make_profile("quick")
    provenance = {"date": "d", "commit": "c", "dirty": False, "command": "x", "run_commits": {"c": ["a"]}}
    error = "RayTaskError(RuntimeError): ray::execute_point()\n  File ...\nRuntimeError: size mismatch for lora_A"
    text = write_report(tmp_path / "r.md", profile, [], [], [], 1.0, 2.0, provenance,
                        failed={"adalora-seed0": error}).read_text()
    assert "## Failed runs\n\n- `adalora-seed0`: RuntimeError: size mismatch for lora_A" in text


def test_ensemble_figures_draw_the_lora_runs_of_the_focus_only(tiny, tmp_path):
    # AdaLoRA runs share p and N with the focus configuration; Theorem 4.5's figures are of LoRA Dropout
    from analysis import tables
    from analysis.figures import study_figures
    from analysis.presets import Focus

    spec = StudySpec(name="mixed", base=RunConfig().replace(train=tiny, adapter={"r": 4, "target_r": 2}),
                     points=({"method": "lora", "dropout_rate": 0.3, "n_instances": 2},
                             {"method": "adalora", "dropout_rate": 0.3, "n_instances": 2, "lr": 0.1}))
    assert not run_study(spec, tmp_path / "runs", progress=False).failed
    coll = collect(tmp_path / "runs")
    comp = coll.compression
    assert set(comp["method"]) == {"lora", "adalora"}
    figures = {f.name: f.table for f in study_figures(coll, pd.DataFrame(), Focus(0.3, 2))}
    expected = tables.compression(comp[comp["method"] == "lora"])
    mixed = tables.compression(comp)
    assert not np.allclose(expected["ensemble_risk"], mixed["ensemble_risk"])  # the arms differ, so mixing shows
    for name in ("compression_risk", "compression_jensen_gap"):
        pd.testing.assert_frame_equal(figures[name], expected)
