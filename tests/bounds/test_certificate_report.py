"""bounds.report.certificate and write_certificate_entries on hand-written certificates.parquet tables: values
by hand, the audit, IO."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
from numpy.testing import assert_allclose

from bounds.cli import main as bounds_main
from bounds.formulas import kl_inv_upper
from bounds.report import (
    CERTIFICATE_REPORTS,
    certificate_reports,
    certificate_table,
    evaluate_run,
    write_certificate_entries,
)
from bounds.runlog import (
    CERTIFY_LOG,
    DEFAULT_POSTERIOR_STD_GRID,
    SCHEMA_VERSION,
    TABLES,
    MissingTableError,
    RunLogError,
    append_certify_log,
    validate_run,
)
from bounds.settings import BoundSettings, CertificateSettings

from .test_estimators import write_run

P, N_TRAIN, K, N_TEST = 0.3, 2000, 4, 500
DELTA, DELTA_MC = 0.05, 0.01
PRIOR_IDS, CERTIFIABLE = list(range(400)), list(range(400, 2000))
N_BOUND = len(CERTIFIABLE)
GRID = (0.01, 0.03, 0.1)
F_DIST, H_DIST = 0.02, 0.001
TRAIN_ERR = (0.15, 0.10, 0.25)  # the smallest error is not at the smallest KL: the grid matters
TRAIN_LIN = (0.16, 0.12, 0.26)
TEST_ERR = (0.17, 0.12, 0.27)
TEST_LIN = (0.18, 0.13, 0.28)
HOLDOUT_ERR = 0.14  # the prior's own Gibbs error on the certified examples


def rows(grid=GRID, *, prior="trained", n_bound=N_BOUND, f=F_DIST, h=H_DIST, grid_size=None,
         train_err=TRAIN_ERR, test_err=TEST_ERR, train_lin=TRAIN_LIN, test_lin=TEST_LIN) -> pd.DataFrame:
    out = []
    for i, s in enumerate(grid):
        fac, head = (1 - P) * f / (2 * s * s), h / (2 * s * s)
        out.append({"posterior_std": s, "p": P, "n_bound": n_bound, "n_test": N_TEST, "draws": K,
                    "factor_sq_dist": f, "head_sq_dist": h, "kl_factor_term": fac, "kl_head_term": head,
                    "kl": fac + head, "train_gibbs_error": train_err[i], "train_gibbs_linear": train_lin[i],
                    "test_gibbs_error": test_err[i], "test_gibbs_linear": test_lin[i], "prior": prior,
                    "grid_size": len(grid) if grid_size is None else grid_size, "delta": DELTA,
                    "delta_mc": DELTA_MC, "seed": 7, "passes": len(grid) * K, "level": "row",
                    "premise": "rows i.i.d. (the data have no group column); risk of a new row", "n_bound_rows": n_bound,
                    "n_test_rows": N_TEST, "evaluated_draws": n_bound * K, "data_fingerprint": "f" * 64,
                    "holdout_gibbs_error": HOLDOUT_ERR, "holdout_test_gibbs_error": HOLDOUT_ERR + 0.01})
    return pd.DataFrame(out, columns=TABLES["certificates"].column_names)


def write(path, frame=None, *, prior_record=None):
    """certificates.parquet and prior/prior.json, in a minimal run directory unless ``path`` holds a run."""
    path.mkdir(parents=True, exist_ok=True)
    if not (path / "meta.json").exists():
        meta = {"schema_version": SCHEMA_VERSION, "run_id": path.name, "status": "success", "error": None,
                "config": {"train": {"n_train": N_TRAIN}, "lora_dropout": {"dropout_rate": P}},
                "started_at": "2026-01-01T00:00:00+00:00", "data": {"n_train": N_TRAIN}}
        (path / "meta.json").write_text(json.dumps(meta))
    (rows() if frame is None else frame).to_parquet(path / "certificates.parquet")
    record = prior_record if prior_record is not None else {
        "prior_fraction": 0.4, "prior_ids": PRIOR_IDS, "certifiable_ids": CERTIFIABLE,
        "certifiable_fingerprint": "f" * 64}
    (path / "prior").mkdir(exist_ok=True)
    (path / "prior" / "prior.json").write_text(json.dumps(record))
    (path / CERTIFY_LOG).unlink(missing_ok=True)
    append_certify_log(path, {"kind": "grid", "settings": {}, "result": {}})  # one certificate tried
    return path


#: The settings of a run certified with GRID (the grid the certificate's audit is held against).
CERTIFIED = BoundSettings(certificate=CertificateSettings(posterior_std_grid=GRID))


def by_name(reports):
    return {r.name: r for r in reports}


def assumption(report, name):
    (found,) = [a for a in report.assumptions if a.name == name]
    return found


def by_hand(train, grid=GRID, n=N_BOUND, f=F_DIST, h=H_DIST):
    """The certificate of every grid point, written out from docs/certificate.md."""
    g = len(grid)
    values = []
    for s, e in zip(grid, train, strict=True):
        kl = ((1 - P) * f + h) / (2 * s**2)
        upper = kl_inv_upper(e, math.log(g / DELTA_MC) / (n * K))  # Monte Carlo upper value
        values.append(kl_inv_upper(upper, (kl + math.log(2 * math.sqrt(n) * g / DELTA)) / n))
    return np.array(values)


def test_value_is_the_smallest_certificate_by_hand_and_measured_is_its_test_error(tmp_path):
    r = by_name(certificate_reports(write(tmp_path / "run", rows()), posterior_std_grid=GRID))
    hand = by_hand(TRAIN_ERR)
    best = int(np.argmin(hand))
    gibbs = r["pacbayes_dropout"]
    assert gibbs.value == pytest.approx(hand[best], abs=1e-11) and 0 < gibbs.value < 1
    assert gibbs.measured == TEST_ERR[best] and str(GRID[best]) in gibbs.measured_name
    assert {q.name: q.value for q in gibbs.inputs}["posterior_std"] == GRID[best]
    # terms add up: estimate + Monte Carlo + PAC-Bayes, each part positive
    assert sum(gibbs.terms.values()) == pytest.approx(gibbs.value, abs=1e-15)
    assert gibbs.terms["gibbs_estimate"] == TRAIN_ERR[best]
    assert gibbs.terms["monte_carlo"] > 0 and gibbs.terms["pac_bayes"] > 0
    assert gibbs.status == "holds", str(gibbs)
    # every input says where it came from
    assert all(q.source for q in gibbs.inputs)
    # beside it, the hold-out baseline by hand: the test-set bound of the prior at delta + delta_mc
    diag = {q.name: q.value for q in gibbs.diagnostics}
    holdout = kl_inv_upper(HOLDOUT_ERR, math.log(1 / (DELTA + DELTA_MC)) / N_BOUND)
    assert diag["holdout_bound"] == pytest.approx(holdout, abs=1e-11) and diag["holdout_gibbs_error"] == HOLDOUT_ERR
    assert diag["certificate_over_holdout"] == pytest.approx(gibbs.value / holdout, rel=1e-9)
    assert diag["holdout_test_gibbs_error"] == pytest.approx(HOLDOUT_ERR + 0.01)
    # the ensemble: the smallest linear-loss certificate, doubled (capped at 1)
    hand_lin = by_hand(TRAIN_LIN)
    j = int(np.argmin(hand_lin))
    ens = r["pacbayes_dropout_ensemble"]
    assert ens.bound_on_measured == pytest.approx(hand_lin[j], abs=1e-11)
    assert ens.value == pytest.approx(min(1.0, 2 * hand_lin[j]), abs=1e-11)
    assert ens.measured == TEST_LIN[j]


def test_certificate_table_has_every_term_per_grid_point():
    table = certificate_table(rows().iloc[::-1])  # order of the rows does not matter
    assert table["posterior_std"].tolist() == list(GRID)
    assert_allclose(table["certificate"], by_hand(TRAIN_ERR), atol=1e-11)
    assert (table["gibbs_upper"] > table["train_gibbs_error"]).all()
    assert_allclose(table["kl"], ((1 - P) * F_DIST + H_DIST) / (2 * np.array(GRID) ** 2), rtol=1e-14)
    assert_allclose(table["ensemble_zero_one"], np.minimum(1, 2 * table["linear_certificate"]))
    # a larger delta gives a smaller certificate (the table's delta is the default)
    assert (certificate_table(rows(), delta=0.2)["certificate"] < table["certificate"]).all()


def test_audit_flags_certified_ids_the_prior_saw(tmp_path):
    record = {"prior_fraction": 0.4, "prior_ids": PRIOR_IDS, "certifiable_ids": list(range(390, 2000))}
    r = by_name(certificate_reports(write(tmp_path / "run", prior_record=record), posterior_std_grid=GRID))
    for report in r.values():
        a = assumption(report, "certified_disjoint_from_prior")
        assert a.holds is False and a.measured == 10 and "[390, 391, 392, 393, 394]" in a.detail
        assert report.status == "assumptions fail"
    # the init prior saw no example: nothing to overlap, and every training example is certifiable
    init = write(tmp_path / "init", rows(prior="init", n_bound=N_TRAIN), prior_record=record)
    gibbs = by_name(certificate_reports(init, posterior_std_grid=GRID))["pacbayes_dropout"]
    assert assumption(gibbs, "certified_disjoint_from_prior").holds is True
    assert assumption(gibbs, "n_bound_matches_prior").holds is True


def test_audit_flags_n_bound_that_includes_the_prior_examples(tmp_path):
    # certified on all n = 2000 examples although the trained prior saw 400 of them
    gibbs = by_name(certificate_reports(write(tmp_path / "run", rows(n_bound=N_TRAIN)), posterior_std_grid=GRID))[
        "pacbayes_dropout"]
    a = assumption(gibbs, "n_bound_matches_prior")
    assert a.holds is False and (a.measured, a.threshold) == (N_TRAIN, len(CERTIFIABLE))
    # the init prior must certify on all n
    init = write(tmp_path / "init", rows(prior="init", n_bound=1600))
    assert assumption(by_name(certificate_reports(init, posterior_std_grid=GRID))["pacbayes_dropout"],
                      "n_bound_matches_prior").holds is False


def test_audit_checks_the_grid_was_fixed_in_advance(tmp_path):
    run = write(tmp_path / "run")
    # the default grid differs from this table's: the grid must be given as an option
    gibbs = by_name(certificate_reports(run))["pacbayes_dropout"]
    assert assumption(gibbs, "grid_fixed_in_advance").holds is False and gibbs.status == "assumptions fail"
    assert assumption(by_name(certificate_reports(run, posterior_std_grid=GRID))["pacbayes_dropout"],
                      "grid_fixed_in_advance").holds is True
    # the default grid is accepted without an option
    default = write(tmp_path / "default", rows(DEFAULT_POSTERIOR_STD_GRID, train_err=[0.3] * 5, test_err=[0.3] * 5,
                                              train_lin=[0.3] * 5, test_lin=[0.3] * 5))
    assert assumption(by_name(certificate_reports(default))["pacbayes_dropout"], "grid_fixed_in_advance").holds
    # the best row alone, relabelled as a grid of one: chosen after the data, so the audit fails
    best = rows().iloc[[1]].assign(grid_size=1)
    cut = write(tmp_path / "cut", best)
    assert assumption(by_name(certificate_reports(cut, posterior_std_grid=GRID))["pacbayes_dropout"],
                      "grid_fixed_in_advance").holds is False
    # the best row alone, still claiming the grid of three: the table contradicts itself
    with pytest.raises(RunLogError, match="grid_size 3 but 1 rows"):
        certificate_reports(write(tmp_path / "cut3", rows().iloc[[1]]), posterior_std_grid=GRID)


def test_evaluation_count_and_kl_audits(tmp_path):
    gibbs = by_name(certificate_reports(write(tmp_path / "run"), posterior_std_grid=GRID))["pacbayes_dropout"]
    assert assumption(gibbs, "every_certified_example_evaluated").holds is True
    short = rows().assign(evaluated_draws=N_BOUND * K - 3)  # three (row, draw) losses never computed
    r = by_name(certificate_reports(write(tmp_path / "short", short), posterior_std_grid=GRID))["pacbayes_dropout"]
    a = assumption(r, "every_certified_example_evaluated")
    assert a.holds is False and a.measured == N_BOUND * K - 3 and a.threshold == N_BOUND * K
    assert assumption(gibbs, "kl_recomputed").holds is True
    tampered = rows().assign(kl=lambda f: f["kl"] * 0.5)  # a table whose kl disagrees with its distances
    r = by_name(certificate_reports(write(tmp_path / "bad", tampered), posterior_std_grid=GRID))["pacbayes_dropout"]
    assert assumption(r, "kl_recomputed").holds is False
    # the report uses the KL recomputed from the distances, not the table's
    assert r.value == pytest.approx(gibbs.value, abs=1e-15)


def test_a_certificate_of_one_is_vacuous(tmp_path):
    far = write(tmp_path / "far", rows(f=1e6, h=1e6))
    r = by_name(certificate_reports(far, posterior_std_grid=GRID))
    for report in r.values():
        assert report.vacuous and report.status == "vacuous" and report.value == 1.0
        assert "vacuous" in report.reason
        assert "vacuous" in str(report)


def test_evaluate_run_adds_the_certificate_only_when_measured(tmp_path):
    run = write_run(tmp_path / "r1")
    names = [r.name for r in evaluate_run(run)]
    assert not set(CERTIFICATE_REPORTS) & set(names)
    write(run, rows())  # trained prior: n_bound is checked against prior.json
    reports = by_name(evaluate_run(run, CERTIFIED))
    assert reports["pacbayes_dropout"].evaluable and "theorem44" in reports
    assert reports["pacbayes_dropout"].value == pytest.approx(by_hand(TRAIN_ERR).min(), abs=1e-11)
    # an unusable table: not evaluable, with the reason; the paper's reports are unaffected
    rows().assign(train_gibbs_error=1.5).to_parquet(run / "certificates.parquet")
    broken = by_name(evaluate_run(run, CERTIFIED))
    assert not broken["pacbayes_dropout"].evaluable and "[0, 1]" in broken["pacbayes_dropout"].reason
    assert broken["theorem44"].evaluable


def test_validate_run_accepts_absence_and_checks_presence(tmp_path):
    run = write_run(tmp_path / "r1")
    validate_run(run)
    with pytest.raises(RunLogError, match="lora-dropout certify"):
        validate_run(run, require=("certificates",))
    rows().to_parquet(run / "certificates.parquet")
    validate_run(run, require=("certificates",))
    rows().drop(columns="kl").to_parquet(run / "certificates.parquet")
    with pytest.raises(RunLogError, match="missing column"):
        validate_run(run)
    rows().assign(prior=["init", "trained", "init"]).to_parquet(run / "certificates.parquet")
    with pytest.raises(RunLogError, match="prior must be one value"):
        validate_run(run)
    with pytest.raises(MissingTableError):
        certificate_reports(write_run(tmp_path / "r2"))


def test_bounds_json_entries_are_merged_and_the_bounds_cli_keeps_them(tmp_path, capsys):
    run = write_run(tmp_path / "r1")
    write(run, rows())  # trained prior: n_bound is checked against prior.json
    # `lora-dropout bounds` with the grid certify used: every report, the certificate's audit passing
    assert bounds_main([str(run), "--posterior-std-grid", *map(str, GRID)]) == 0
    document = json.loads((run / "bounds.json").read_text())
    stored = {r["name"]: r for r in document["reports"]}
    assert {"theorem44", *CERTIFICATE_REPORTS[:2]} <= set(stored)
    grid_audit = [a for a in stored["pacbayes_dropout"]["assumptions"] if a["name"] == "grid_fixed_in_advance"]
    assert grid_audit[0]["holds"] is True
    assert document["settings"]["certificate"]["posterior_std_grid"] == list(GRID)
    # certify's entries replace the old ones and keep the rest
    reports = certificate_reports(run, posterior_std_grid=GRID, delta=0.1)
    certify = CertificateSettings(posterior_std_grid=GRID, posterior_draws=K, delta=0.1, delta_mc=DELTA_MC,
                                  prior="trained", seed=7)
    write_certificate_entries(run, reports, certify)
    document = json.loads((run / "bounds.json").read_text())
    names = [r["name"] for r in document["reports"]]
    assert names.count("pacbayes_dropout") == 1 and "theorem44" in names
    assert document["settings"]["certificate"] == certify.to_dict() and document["settings"]["lam"] == 1.0
    assert CertificateSettings.from_dict(document["settings"]["certificate"]) == certify
    stored = {r["name"]: r for r in document["reports"]}
    assert stored["pacbayes_dropout"]["value"] == pytest.approx(reports[0].value)
    # a run without bounds.json gets a new document with only the certificate
    fresh = write(tmp_path / "fresh")
    write_certificate_entries(fresh, certificate_reports(fresh, posterior_std_grid=GRID),
                              CertificateSettings(posterior_std_grid=GRID, delta=DELTA))
    document = json.loads((fresh / "bounds.json").read_text())
    assert [r["name"] for r in document["reports"]] == list(CERTIFICATE_REPORTS[:2])  # no rows-declared table
    assert list(document["settings"]) == ["certificate"]
    assert document["schema_version"] == SCHEMA_VERSION and document["run_id"] == "fresh"
