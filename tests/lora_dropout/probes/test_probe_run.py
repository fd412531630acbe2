"""Probes and stability on a real (tiny) run directory, and the coupling of leave-one-out runs."""

import numpy as np
import pytest
import torch

from bounds.runlog import validate_run
from lora_dropout import LoraDropoutConfig, apply_lora_dropout
from lora_dropout.probes.on_run import probe_run
from lora_dropout.runs.config import RunConfig
from lora_dropout.runs.run import load_run, train_run
from lora_dropout.runs.train import fit
from lora_dropout.tasks.classification import EncodedSplit
from tests.tiny import save_tiny_classifier, tiny_lora, write_tiny_csv


def _tiny_config(root, **sections):
    return RunConfig().replace(
        train={"model": str(save_tiny_classifier(root / "model")), "data": str(write_tiny_csv(root / "d.csv")),
               "group_column": "group", "n_train": 32, "n_test": None, "epochs": 2, "batch_size": 8,
               "eval_train_size": 16, "lr": 5e-3, "eval_at_start": False},
        lora_dropout={"dropout_rate": 0.3, "n_instances": 2}, **sections)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("probe")
    return train_run(_tiny_config(root), root / "runs", run_id="tiny", progress=False).run_dir


def _assert_reload_reproduces_final_test_losses(run_dir):
    from lora_dropout.runs.evaluate import run_split

    run = validate_run(run_dir)
    loaded = load_run(run_dir)
    logits = run_split(loaded.model, loaded.handle, loaded.prepared.test, "test", batch_size=16, device="cpu")
    samples = run.table("samples")
    last = samples[(samples.step == samples.step.max()) & (samples.split == "test")
                   & (samples.predictor == "deterministic")].sort_values("sample_id")
    order = np.argsort(logits.sample_ids)
    det = torch.nn.functional.cross_entropy(logits.deterministic_logits, torch.tensor(logits.labels),
                                            reduction="none").numpy()[order]
    np.testing.assert_allclose(det, last.loss.to_numpy(), rtol=1e-5, atol=1e-6)


def test_reloaded_run_reproduces_its_final_losses(tiny_run):
    _assert_reload_reproduces_final_test_losses(tiny_run)


def test_reloaded_adalora_run_with_pruned_ranks_reproduces_its_final_losses(tmp_path):
    # AdaLoRA's final phase keeps target_r of r ranks per layer and peft saves only those: the reload
    # must shrink the fresh layers to the saved rank pattern (with ranknum unchanged), or it fails
    config = _tiny_config(tmp_path, adapter={"method": "adalora", "r": 4, "target_r": 1})
    run_dir = train_run(config, tmp_path / "runs", run_id="ada", progress=False).run_dir
    import json

    pattern = json.loads((run_dir / "adapter" / "adapter_config.json").read_text())["rank_pattern"]
    assert pattern and any(not all(kept) for kept in pattern.values())  # some ranks were pruned
    _assert_reload_reproduces_final_test_losses(run_dir)


def test_probe_writes_valid_probes_and_stability_tables(tiny_run):
    result = probe_run(tiny_run, curvature=True, spaces=("delta_w", "factors"), stability_k=2,
                       probe_examples=16, progress=False)
    run = validate_run(tiny_run, require=("probes", "stability"))
    probes = run.table("probes")
    assert set(probes.space) == {"delta_w", "factors"}
    assert {"lipschitz_max", "hessian_min_eig", "hessian_max_eig", "grad_norm"} <= set(probes.quantity)
    # eta is a max over every training example by default; the Hessian over the first probe_examples
    n_by_quantity = probes.groupby("quantity")["n"].agg(set).to_dict()
    for q in ("lipschitz_max", "lipschitz_q99", "lipschitz_mean", "grad_norm"):
        assert n_by_quantity[q] == {run.meta.n_train} == {32}, q
    assert n_by_quantity["hessian_min_eig"] == n_by_quantity["hessian_max_eig"] == {16}
    assert probes["converged"].dtype == bool
    stability = run.table("stability")
    assert result.skipped == {}  # H + 2 lam s I is positive definite on this run: influence exists
    assert set(stability.method) == {"retrain", "warm_start", "influence"} and len(stability) == 6
    retrain = stability[stability.method == "retrain"]
    # removing an example and retraining moves the parameters, and by far less than their size
    assert (retrain.param_distance > 0).all()


def test_cli_lipschitz_subset_is_recorded_and_labelled_by_the_bounds(tiny_run, capsys):
    from analysis.cli import main
    from bounds.report import evaluate_run

    assert main(["probe", str(tiny_run), "--curvature", "--probe-examples", "8", "--lipschitz-examples", "12",
                 "--quiet"]) == 0
    probes = validate_run(tiny_run, require=("probes",)).table("probes").set_index("quantity")
    assert probes.loc["lipschitz_max", "n"] == 12 and probes.loc["hessian_min_eig", "n"] == 8
    (r,) = [r for r in evaluate_run(tiny_run) if r.name == "theorem44"]
    label = "eta: max over 12 of n=32 training examples (subset)"
    assert label in {q.name: q for q in r.inputs}["lipschitz"].note
    coverage = [a for a in r.assumptions if a.name == "lipschitz_coverage"][0]
    assert coverage.holds is None and label in coverage.detail


def test_retraining_without_removal_reproduces_theta_s_exactly(tiny_run):
    # the coupling's null test: same init, same order, same masks => bit-identical parameters on CPU
    from lora_dropout.probes.stability import LoraLooProblem

    problem = LoraLooProblem(load_run(tiny_run))
    for again, original in zip(problem.retrain(None), problem.theta_s(), strict=True):
        torch.testing.assert_close(again, original, rtol=0, atol=0)


def test_coupled_leave_one_out_differs_only_in_the_removed_example():
    seen = {}
    data = EncodedSplit(tuple({"input_ids": [2, 3 + i % 40, 4]} for i in range(20)), np.arange(20) % 3,
                        np.arange(100, 120), 0)
    from lora_dropout.runs.config import TrainConfig

    tc = TrainConfig(batch_size=6, epochs=2, lr=1e-3, device="cpu")
    for name, exclude in (("full", ()), ("loo", (107,))):
        model = tiny_lora(seed=0)
        handle = apply_lora_dropout(model, LoraDropoutConfig(dropout_rate=0.3, n_instances=2))
        order = []
        fit(model, handle, data, tc, exclude=exclude,
            on_step=lambda info, order=order: order.extend(info.sample_ids.tolist()))
        seen[name] = order
    assert 107 not in seen["loo"] and seen["full"].count(107) == 2
    assert [s for s in seen["full"] if s != 107] == seen["loo"]


def test_expected_hypothesis_probe_bounds_and_collect_end_to_end(tiny_run, tmp_path):
    """probe --hypothesis expected adds rows beside the unmasked ones; bounds and collect keep both apart."""
    import json
    import shutil

    from analysis.cli import main
    from analysis.collect import collect

    run = tmp_path / "tiny"
    shutil.copytree(tiny_run, run)  # the module's run stays as the other tests left it
    common = ["--curvature", "--probe-examples", "8", "--quiet"]
    assert main(["probe", str(run), *common]) == 0
    assert main(["probe", str(run), *common, "--hypothesis", "expected"]) == 0
    assert main(["probe", str(run), *common, "--lam", "0.5"]) == 0  # re-measuring one hypothesis keeps the other
    probes = validate_run(run, require=("probes",)).table("probes")
    assert sorted(probes.groupby("hypothesis").size().items()) == [("expected", 6), ("unmasked", 6)]
    assert set(probes.loc[probes.hypothesis == "unmasked", "lam"].dropna()) == {0.5}
    assert set(probes.loc[probes.hypothesis == "expected", "lam"].dropna()) == {1.0}
    by = probes.set_index(["hypothesis", "quantity"])["value"]
    assert by[("expected", "lipschitz_max")] != by[("unmasked", "lipschitz_max")]  # dW scaled by 0.49

    assert main(["bounds", str(run), "--hypothesis", "unmasked", "expected"]) == 0
    reports = {r["name"]: r for r in json.loads((run / "bounds.json").read_text())["reports"]}
    exp = reports["theorem44[expected]"]
    assert exp["evaluable"] and reports["theorem44"]["evaluable"]
    inputs = {q["name"]: q for q in exp["inputs"]}
    assert inputs["expected_scale"]["value"] == pytest.approx(0.49)  # (1 - 0.3)^2, no rescale
    assert "hypothesis=expected" in inputs["lipschitz"]["source"]
    assert "deterministic" in inputs["r_hat"]["source"]
    assert {d["name"] for d in exp["diagnostics"]} >= {"lam_needed", "n_needed"}

    coll = collect([run])
    assert not coll.skipped
    s = coll.summary  # analysis.summary: (quantity, report, space, hypothesis) keep both hypotheses apart
    keys = set(zip(s["quantity"], s["report"], s["space"], s["hypothesis"], strict=True))
    assert {("lam_needed", "theorem44", "", "unmasked"), ("n_needed", "theorem44", "", "unmasked"),
            ("lam_needed", "theorem44[expected]", "", "expected"), ("bound", "theorem44[expected]", "", "expected"),
            ("hessian_min_eig", "", "delta_w", "expected"), ("hessian_min_eig", "", "delta_w", "unmasked")} <= keys
    assert s[(s["quantity"] == "beta_hat") & (s["report"] == "prop42[expected]")].empty
    assert {"theorem44", "theorem44[expected]", "prop42[expected]"} <= set(coll.bounds["report"])
