"""The learned PAC-Bayes dropout posterior: the objective's pieces against the bounds formulas and closed forms,
its gradient against finite differences, and learn + certify on a tiny run against a plain loop."""

from __future__ import annotations

import hashlib
import math
import shutil

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from bounds.formulas import learned_dropout_kl, pac_bayes_kl_bound
from bounds.runlog import read_learned_record, validate_run
from lora_dropout import LoraDropoutConfig, apply_lora_dropout
from lora_dropout.certify.learned import (
    LEARN_FIRST_DRAW,
    LearnSettings,
    bounded_cross_entropy,
    certify_learned,
    learn_posterior,
    learned_kl,
    quad_bound,
    surrogate_loss,
)
from lora_dropout.certify.posterior import posterior_logits, posterior_parameters
from lora_dropout.runs.run import load_run
from tests.lora_dropout.certify.test_certify import tiny_run, write_prior  # noqa: F401 (the module fixture)
from tests.tiny import tiny_batch, tiny_lora

GRID = (0.02, 0.2)
K = 2


def test_learned_kl_in_torch_is_the_bounds_formula_and_its_std_gradient_the_closed_form():
    rng = np.random.default_rng(0)
    names = ["a", "b", "h"]
    weight = {"a": 0.7, "b": 0.7, "h": 1.0}
    count = {"a": 12, "b": 30, "h": 5}
    stds = dict(zip(names, rng.uniform(0.01, 0.1, 3), strict=True))
    dist = dict(zip(names, rng.uniform(0.0, 0.5, 3), strict=True))
    log_std = {n: torch.tensor(math.log(stds[n]), dtype=torch.float64, requires_grad=True) for n in names}
    for sp in GRID:
        got = learned_kl(sp, weight=weight, count=count, log_std=log_std,
                         sq_dist={n: torch.tensor(dist[n], dtype=torch.float64) for n in names})
        ref = learned_dropout_kl(sp, weight=[weight[n] for n in names], count=[count[n] for n in names],
                                 posterior_std=[stds[n] for n in names], sq_dist=[dist[n] for n in names])
        assert float(got.detach()) == pytest.approx(ref.total, rel=1e-12)
        (grad,) = torch.autograd.grad(got, [log_std["b"]])
        # d/ds of w n (-s + e^{2s} / (2 sp^2)) = w n (e^{2s} / sp^2 - 1)
        assert float(grad) == pytest.approx(0.7 * 30 * (stds["b"] ** 2 / sp**2 - 1.0), rel=1e-12)


@pytest.mark.parametrize("risk", [0.0, 0.05, 0.3, 0.9])
@pytest.mark.parametrize("kl", [0.0, 5.0, 500.0])
def test_quad_bound_is_never_below_the_kl_certificate_and_is_4c_at_zero_risk(risk, kl):
    n, delta = 400, 0.05
    q = float(quad_bound(torch.tensor(risk, dtype=torch.float64), torch.tensor(kl, dtype=torch.float64), n, delta))
    exact = pac_bayes_kl_bound(risk, kl, n, delta)
    assert q >= exact - 1e-9  # kl_inv_upper's bisection tolerance
    if risk == 0.0:
        assert q == pytest.approx(4 * (kl + math.log(2 * math.sqrt(n) / delta)) / (2 * n), rel=1e-12)


def test_the_surrogates_by_hand():
    # two classes; log-probabilities of the label 0, ln 0.5, and far below ln(min_prob)
    logits = torch.tensor([[50.0, -50.0], [1.0, 1.0], [-50.0, 50.0]])
    labels = torch.tensor([0, 0, 0])
    got = bounded_cross_entropy(logits, labels, 1e-4)
    assert got.tolist() == pytest.approx([0.0, math.log(2) / math.log(1e4), 1.0], abs=1e-12)
    assert surrogate_loss(logits, labels, LearnSettings(surrogate="bounded_ce")).tolist() == got.tolist()
    # the default: 1 - prob_y, with prob_y = sigmoid(z_0 - z_1)
    lin = surrogate_loss(torch.tensor([[0.3, -0.2]], dtype=torch.float64), torch.tensor([0]), LearnSettings())
    assert float(lin) == pytest.approx(1.0 - 1.0 / (1.0 + math.exp(-0.5)), rel=1e-12)


def test_gradient_through_the_perturbed_forward_matches_finite_differences():
    from lora_dropout.certify.posterior import perturbed, shared_draws

    model = tiny_lora().double()
    apply_lora_dropout(model, LoraDropoutConfig(dropout_rate=0.3, seed=3))
    batch = tiny_batch(4)
    keys = torch.tensor([3, 1, 4, 1 + 5])
    factors, head = posterior_parameters(model)
    names = [*factors, *head]
    shared = shared_draws(model, keys, draws=2, first_draw=7, seed=1)

    def f(log_std):
        with perturbed(model, shared, {n: torch.exp(s) for n, s in log_std.items()}):
            logits = model(input_ids=batch["input_ids"].repeat(2, 1),
                           attention_mask=batch["attention_mask"].repeat(2, 1)).logits
        return bounded_cross_entropy(logits, batch["labels"].repeat(2), 1e-4).mean()

    base = {n: torch.tensor(math.log(0.3), dtype=torch.float64) for n in names}
    for name in (names[0], names[-1]):  # a LoRA factor and a head tensor
        leaf = {n: v.clone().requires_grad_(n == name) for n, v in base.items()}
        (grad,) = torch.autograd.grad(f(leaf), [leaf[name]])
        h = 1e-5
        up, down = ({**base, name: base[name] + s} for s in (h, -h))
        fd = (float(f(up).detach()) - float(f(down).detach())) / (2 * h)
        assert abs(float(grad)) > 1e-4  # the std matters, so the comparison says something
        assert float(grad) == pytest.approx(fd, rel=1e-5, abs=1e-9)  # central difference error O(h^2)


@pytest.fixture(scope="module")
def learned(tiny_run, tmp_path_factory):  # noqa: F811
    run = tmp_path_factory.mktemp("learned") / "run"
    shutil.copytree(tiny_run, run)
    for stale in ("certificates.parquet", "bounds.json"):
        (run / stale).unlink(missing_ok=True)
    adapter = hashlib.sha256((run / "adapter" / "adapter_model.safetensors").read_bytes()).hexdigest()
    result = learn_posterior(run, prior_std_grid=GRID, settings=LearnSettings(epochs=4, lr=1e-3, std_lr=0.1,
                                                                               batch_size=5), progress=False)
    after = hashlib.sha256((run / "adapter" / "adapter_model.safetensors").read_bytes()).hexdigest()
    return run, result, adapter == after


def test_learning_lowers_the_bound_and_leaves_the_run_untouched(learned):
    run, result, adapter_unchanged = learned
    record = read_learned_record(run)
    assert adapter_unchanged
    assert record == result.record and record["prior"] == "trained" and record["n_bound"] == 20
    assert record["first_draw"] == LEARN_FIRST_DRAW and record["prior_std_grid"] == list(GRID)
    history = record["objective"]
    assert len(history) == 4 and history[-1] < history[0], history
    stds = {t["posterior_std"] for t in record["tensors"].values()}
    assert len(stds) > 1 and record["init_std"] in GRID  # each tensor moved its own std from the start


def test_certified_risks_equal_a_loop_and_the_kl_the_bounds_formula(learned):
    run, _, _ = learned
    table = certify_learned(run, posterior_draws=K, batch_size=3, progress=False)
    assert validate_run(run, require=("learned_certificates",)).has("learned_certificates")
    record = read_learned_record(run)
    std = {n: t["posterior_std"] for n, t in record["tensors"].items()}
    loaded = load_run(run)
    mean = load_file(str(run / "posterior" / "learned.safetensors"))
    prior = load_file(str(run / "prior" / "prior.safetensors"))
    factors, head = posterior_parameters(loaded.model)
    with torch.no_grad():
        for n, t in {**factors, **head}.items():
            t.copy_(mean[n])
    # reference: one example at a time, every draw separately
    train = loaded.prepared.train
    ids = set(read_prior_ids(run))
    errors = count = 0
    for i, s in enumerate(train.sample_ids):
        if int(s) in ids:
            continue
        batch = train.collate([i])
        logits = posterior_logits(loaded.model, batch, posterior_std=std, draws=K)
        errors += sum(int(logits[d, 0].argmax()) != int(batch["labels"][0]) for d in range(K))
        count += K
    assert set(table.train_gibbs_error) == {errors / count}
    # the KL from distances summed here, from the two files
    from peft import get_peft_model_state_dict  # noqa: F401 (the files use peft's names for the prior)

    from lora_dropout import get_lora_dropout
    from lora_dropout.method.peft_seam import adapter_file_names

    file_names = adapter_file_names(get_lora_dropout(loaded.model).model)
    names = list(std)
    dist = [float(((mean[n].double() - prior[file_names[n]].double()) ** 2).sum()) for n in names]
    p = 0.3
    for row in table.itertuples():
        ref = learned_dropout_kl(row.prior_std, weight=[(1 - p) if n in factors else 1.0 for n in names],
                                 count=[mean[n].numel() for n in names], posterior_std=[std[n] for n in names],
                                 sq_dist=dist)
        assert row.kl == pytest.approx(ref.total, rel=1e-9)
        assert row.draws == K and row.n_bound == 20 and row.grid_size == len(GRID)


def read_prior_ids(run):
    from bounds.runlog import read_prior_record

    return read_prior_record(run)["prior_ids"]


def test_refusals_name_the_problem(tiny_run, tmp_path):  # noqa: F811
    with pytest.raises(ValueError, match="std_lr"):
        LearnSettings(std_lr=0.0)
    with pytest.raises(ValueError, match="min_prob"):
        LearnSettings(min_prob=1.0)
    with pytest.raises(ValueError, match="surrogate='hinge'"):
        LearnSettings(surrogate="hinge")
    bare = tmp_path / "bare"
    shutil.copytree(tiny_run, bare)
    with pytest.raises(FileNotFoundError, match="learn the posterior first"):
        certify_learned(bare, progress=False)


def test_cli_learns_certifies_and_records_the_report_with_its_audit(tiny_run, tmp_path, capsys):  # noqa: F811
    import json

    from analysis.cli import main
    from bounds.report import evaluate_run, learned_certificate_reports

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    argv = ["certify", str(run), "--posterior-std-grid", *map(str, GRID), "--posterior-draws", "2",
            "--learn-posterior", "--learn-epochs", "2", "--learn-lr", "1e-3", "--quiet"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "best pacbayes_dropout_learned" in out and "learned_certificates.parquet" in out
    # the same call again measures and learns nothing: no certificate is added to the union bound
    from bounds.runlog import read_certify_log

    assert [e["kind"] for e in read_certify_log(run)] == ["grid", "learned"]
    assert main(argv) == 0
    again = capsys.readouterr().out
    assert "not measured again" in again and "not learned again" in again
    assert len(read_certify_log(run)) == 2
    stored = {r["name"]: r for r in json.loads((run / "bounds.json").read_text())["reports"]}
    assert {"pacbayes_dropout", "pacbayes_dropout_ensemble", "pacbayes_dropout_learned"} <= set(stored)
    audit = {a["name"]: a["holds"] for a in stored["pacbayes_dropout_learned"]["assumptions"]}
    # the grid and the learned posterior are two certificates tried: every stored report splits delta over both
    for name in ("pacbayes_dropout", "pacbayes_dropout_learned"):
        inputs = {q["name"]: q["value"] for q in stored[name]["inputs"]}
        assert inputs["delta"] == pytest.approx(0.05 / 2), name
    for name in ("certified_disjoint_from_prior", "n_bound_matches_prior", "grid_fixed_in_advance",
                 "selection_counted", "kl_recomputed", "draws_independent_of_learning", "learned_tensors_match_run"):
        assert audit[name], name
    names = [r.name for r in evaluate_run(run)]  # the default grid differs from GRID: the audit says so
    assert "pacbayes_dropout_learned" in names
    # a tampered table and a grid other than learning's are caught
    table = pd.read_parquet(run / "learned_certificates.parquet")
    table.assign(kl=table.kl * 0.5).to_parquet(run / "learned_certificates.parquet")
    (report,) = learned_certificate_reports(run, prior_std_grid=GRID)
    assert {a.name: a.holds for a in report.assumptions}["kl_recomputed"] is False
    (report,) = learned_certificate_reports(run, prior_std_grid=(0.02, 0.3))
    assert {a.name: a.holds for a in report.assumptions}["grid_fixed_in_advance"] is False
    # learned.json's KL weights and counts are checked against the run's p and the saved tensors, not trusted
    path = run / "posterior" / "learned.json"
    original = json.loads(path.read_text())
    factor = next(n for n in original["tensors"] if ".lora_A." in n)
    head = next(n for n in original["tensors"] if ".lora_" not in n)
    for name, key, value in ((factor, "weight", 1.0), (head, "weight", 0.7), (factor, "count", 1)):
        tampered = json.loads(json.dumps(original))
        tampered["tensors"][name][key] = value
        path.write_text(json.dumps(tampered))
        (report,) = learned_certificate_reports(run, prior_std_grid=GRID)
        assert {a.name: a.holds for a in report.assumptions}["learned_tensors_match_run"] is False, (name, key)
    path.write_text(json.dumps(original))


def test_a_study_point_that_learns_resumes_in_place_and_records_the_report(tiny_run, tmp_path):  # noqa: F811
    import json

    from analysis.pipeline import learned_current, run_point
    from analysis.spec import Point, PostTraining
    from analysis.study import point_status
    from bounds.runlog import read_run_meta
    from lora_dropout.runs.config import RunConfig

    study = tmp_path / "study"
    shutil.copytree(tiny_run, study / "tiny")
    for stale in ("certificates.parquet", "bounds.json"):
        (study / "tiny" / stale).unlink(missing_ok=True)
    config = RunConfig.from_dict(read_run_meta(study / "tiny").config_dict())
    post = PostTraining(certify=True, learn_posterior=True, posterior_std_grid=GRID, posterior_draws=K)
    point = Point("tiny", {}, config, post)
    assert point_status(study, point) == "certificates missing"
    run_point(study, point)
    assert point_status(study, point) == "done" and learned_current(study / "tiny", post)
    names = [r["name"] for r in json.loads((study / "tiny" / "bounds.json").read_text())["reports"]]
    assert "pacbayes_dropout_learned" in names and "pacbayes_dropout" in names
    # the summary carries the learned certificate (the hypothesis does not apply to it), as certificate_over reads it
    from analysis.collect import collect
    from analysis.tables import certificate_over

    summary = collect([study / "tiny"]).summary
    learned = summary[(summary["report"] == "pacbayes_dropout_learned") & (summary["quantity"] == "certificate")]
    report = next(r for r in json.loads((study / "tiny" / "bounds.json").read_text())["reports"]
                  if r["name"] == "pacbayes_dropout_learned")
    assert len(learned) == 1 and learned["value"].iloc[0] == pytest.approx(report["value"], rel=1e-12)
    over = certificate_over(summary, "dropout_rate")
    assert over["learned"].iloc[0] == pytest.approx(report["value"], rel=1e-12)
    assert over["learned_measured"].iloc[0] == pytest.approx(report["measured"], rel=1e-12)
    other = PostTraining(certify=True, learn_posterior=True, posterior_std_grid=GRID, posterior_draws=K + 1)
    assert not learned_current(study / "tiny", other)  # other draws: measured again
    with pytest.raises(ValueError, match="learn_posterior=True needs certify=True"):
        PostTraining(learn_posterior=True)
