"""lora-dropout certify on grouped data: the group-level certificate, the rows declared i.i.d., the premises the
toolkit checks (data unchanged since training, every example evaluated, every certificate tried counted) and
refusals (docs/certificate.md, "Premises")."""

from __future__ import annotations

import json
import shutil

import pandas as pd
import pytest
import torch

from bounds.formulas import certificate
from bounds.report import certificate_reports
from bounds.runlog import read_certify_log, validate_run
from lora_dropout.certify.measure import certify_run
from lora_dropout.certify.posterior import posterior_logits
from lora_dropout.runs.config import RunConfig
from lora_dropout.runs.run import load_run, train_run
from tests.tiny import save_tiny_classifier, write_tiny_csv

GRID, K = (0.02, 0.2), 2


@pytest.fixture(scope="module")
def grouped_run(tmp_path_factory):
    """A run on a CSV of 12 groups of unequal sizes (so a mean of group means is not the mean of rows) with a
    prior trained on half of the training split's groups."""
    root = tmp_path_factory.mktemp("levels")
    data = write_tiny_csv(root / "d.csv", n=120)
    frame = pd.read_csv(data).sample(frac=1.0, random_state=3)  # groups with unequal label shares, too
    sizes = [4, 6, 8, 10, 12, 14, 16, 18, 4, 6, 10, 12]
    frame["group"] = [f"g{k}" for k, size in enumerate(sizes) for _ in range(size)]
    frame.to_csv(data, index=False)
    config = RunConfig().replace(
        train={"model": str(save_tiny_classifier(root / "model")), "data": str(data), "group_column": "group",
               "n_train": None, "n_test": None, "epochs": 1, "batch_size": 8, "eval_train_size": 8, "lr": 5e-3,
               "eval_at_start": False, "prior_fraction": 0.5, "posterior_epochs": 1},
        lora_dropout={"dropout_rate": 0.3, "n_instances": 2},
    )
    run_dir = train_run(config, root / "runs", run_id="grouped", progress=False).run_dir
    return run_dir, data


def _copy(run_dir, tmp_path, name="run"):
    target = tmp_path / name
    shutil.copytree(run_dir, target)
    return target


def _per_row_errors(model, data, positions, sigma) -> dict[int, float]:
    """Reference: each example alone, its 0-1 error averaged over its K draws, by sample id."""
    out = {}
    for i in positions:
        batch = data.collate([i])
        logits = posterior_logits(model, batch, posterior_std=sigma, draws=K)  # (K, 1, C)
        out[int(batch["sample_id"][0])] = float((logits[:, 0].argmax(-1) != batch["labels"][0]).double().mean())
    return out


def test_group_level_table_is_the_mean_over_groups_of_group_means(grouped_run, tmp_path):
    run = _copy(grouped_run[0], tmp_path)
    certify_run(run, posterior_std_grid=GRID, posterior_draws=K, batch_size=7, assume_iid_rows=True, progress=False)
    log = validate_run(run, require=("certificates", "certificates_iid_rows"))
    record = json.loads((run / "prior" / "prior.json").read_text())
    loaded = load_run(run)
    train, test, splits = loaded.prepared.train, loaded.prepared.test, loaded.prepared.splits
    group = dict(zip(pd.concat([splits.train, splits.test]).sample_id, pd.concat([splits.train, splits.test]).group,
                     strict=True))
    certified = [i for i, s in enumerate(train.sample_ids) if int(s) in set(record["certifiable_ids"])]
    assert record["level"] == "group" and len(record["certifiable_groups"]) >= 2
    for level, table in (("group", log.table("certificates")), ("row", log.table("certificates_iid_rows"))):
        for sigma in GRID:
            row = table[table.posterior_std == sigma].iloc[0]
            for split, data, positions, n_rows in (("train", train, certified, len(record["certifiable_ids"])),
                                                   ("test", test, range(len(test)), len(test))):
                errors = pd.Series(_per_row_errors(loaded.model, data, positions, sigma))
                if level == "group":  # groupby by hand: each group's mean, then the mean over groups
                    by_group = errors.groupby(errors.index.map(group)).mean()
                    expected, units = float(by_group.mean()), len(by_group)
                else:
                    expected, units = float(errors.mean()), len(errors)
                assert row[f"{split}_gibbs_error"] == pytest.approx(expected, abs=1e-12), (level, split, sigma)
                assert row["n_bound" if split == "train" else "n_test"] == units
                assert row["n_bound_rows" if split == "train" else "n_test_rows"] == n_rows
            assert row.level == level and row.evaluated_draws == len(certified) * K and row.passes == len(GRID) * K
    assert log.table("certificates").n_bound.iloc[0] == len(record["certifiable_groups"])
    # the reports: the headline at group level, the declared rows beside it, each with its premise
    reports = {r.name: r for r in certificate_reports(run, posterior_std_grid=GRID)}
    assert set(reports) == {"pacbayes_dropout", "pacbayes_dropout_ensemble", "pacbayes_dropout_iid_rows"}
    audit = {name: {a.name: a for a in r.assumptions} for name, r in reports.items()}
    assert audit["pacbayes_dropout"]["independence_level"].holds is True
    assert audit["pacbayes_dropout_iid_rows"]["independence_level"].holds is None  # declared: not checkable
    assert "declared" in audit["pacbayes_dropout_iid_rows"]["independence_level"].detail
    for name in ("certified_disjoint_from_prior", "n_bound_matches_prior", "data_unchanged",
                 "every_certified_example_evaluated", "selection_counted", "kl_recomputed"):
        assert audit["pacbayes_dropout"][name].holds is True, name
    # the bound counts groups: its value is the certificate at n_b = groups, not rows
    table = log.table("certificates").sort_values("posterior_std")
    i = [q.name for q in reports["pacbayes_dropout"].inputs].index("posterior_std")
    sigma = reports["pacbayes_dropout"].inputs[i].value
    r = table[table.posterior_std == sigma].iloc[0]
    expected = certificate(r.train_gibbs_error, r.kl, r.n_bound, K, 0.05, 0.01, grid_size=len(GRID)).value
    assert reports["pacbayes_dropout"].value == pytest.approx(float(expected), rel=1e-12)


def test_the_holdout_baseline_is_the_prior_own_gibbs_error(grouped_run, tmp_path):
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    run = _copy(grouped_run[0], tmp_path)
    # a prior far from the posterior (its adapter moved at random), so the two predictors err on other examples
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(0)
    state = load_file(str(run / "adapter" / "adapter_model.safetensors"))
    save_file({k: v + torch.randn(v.shape, generator=g) for k, v in state.items()},
              str(run / "prior" / "prior.safetensors"))
    table = certify_run(run, posterior_std_grid=GRID, posterior_draws=K, progress=False).table
    record = json.loads((run / "prior" / "prior.json").read_text())
    reference = load_run(run)  # a separate model, set to the prior mean from the file
    set_peft_model_state_dict(reference.model, load_file(str(run / "prior" / "prior.safetensors")))
    train, test, splits = reference.prepared.train, reference.prepared.test, reference.prepared.splits
    group = dict(zip(pd.concat([splits.train, splits.test]).sample_id, pd.concat([splits.train, splits.test]).group,
                     strict=True))
    certified = [i for i, s in enumerate(train.sample_ids) if int(s) in set(record["certifiable_ids"])]
    for column, data, positions in (("holdout_gibbs_error", train, certified),
                                    ("holdout_test_gibbs_error", test, range(len(test)))):
        errors = pd.Series(_per_row_errors(reference.model, data, positions, 0.0))
        expected = float(errors.groupby(errors.index.map(group)).mean().mean())
        assert table[column].tolist() == pytest.approx([expected] * len(table), abs=1e-12), column
    # at_prior puts the prior mean in place and restores the posterior exactly
    from lora_dropout.certify.prior_distance import at_prior

    model = load_run(run).model
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    prior = load_file(str(run / "prior" / "prior.safetensors"))
    with at_prior(model, prior):
        moved = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    assert any(not torch.equal(moved[n], before[n]) for n in before)
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters() if p.requires_grad)
    # the prior is another predictor than the posterior, so the comparison above decides something
    posterior = pd.Series(_per_row_errors(model, train, certified, 0.0))
    assert float(posterior.groupby(posterior.index.map(group)).mean().mean()) != pytest.approx(
        table.holdout_gibbs_error.iloc[0], abs=1e-9)
    reports = {r.name: r for r in certificate_reports(run, posterior_std_grid=GRID)}
    diag = {q.name: q.value for q in reports["pacbayes_dropout"].diagnostics}
    assert diag["holdout_gibbs_error"] == pytest.approx(table.holdout_gibbs_error.iloc[0])


def test_every_certificate_tried_enters_the_union_bound(grouped_run, tmp_path):
    run = _copy(grouped_run[0], tmp_path)
    first = certify_run(run, posterior_std_grid=GRID, posterior_draws=K, progress=False).table
    once = certificate_reports(run, posterior_std_grid=GRID)[0]
    second = certify_run(run, posterior_std_grid=GRID, posterior_draws=K, seed=123, progress=False).table
    entries = read_certify_log(run)
    assert [e["settings"]["seed"] for e in entries] == [int(first.seed.iloc[0]), 123]
    assert [e["kind"] for e in entries] == ["grid", "grid"] and all("time" in e for e in entries)
    twice = certificate_reports(run, posterior_std_grid=GRID)[0]
    inputs = {q.name: q.value for q in twice.inputs}
    assert inputs["certificates_tried"] == 2 and inputs["delta"] == pytest.approx(0.05 / 2)
    sigma = inputs["posterior_std"]
    r = second[second.posterior_std == sigma].iloc[0]
    by_hand = certificate(r.train_gibbs_error, r.kl, r.n_bound, K, 0.05 / 2, 0.01 / 2, grid_size=len(GRID)).value
    assert twice.value == pytest.approx(float(by_hand), rel=1e-12)
    assert {a.name: a.holds for a in once.assumptions}["selection_counted"] is True
    assert "2 certificate measurements" in {a.name: a.detail for a in twice.assumptions}["selection_counted"]
    # the same settings again draw the same masks and noise: the same certificate, not a third one
    assert certify_run(run, posterior_std_grid=GRID, posterior_draws=K, seed=123, progress=False).table.equals(second)
    thrice = certificate_reports(run, posterior_std_grid=GRID)[0]
    assert {q.name: q.value for q in thrice.inputs}["certificates_tried"] == 2 and len(read_certify_log(run)) == 3
    assert thrice.value == twice.value


def test_an_edited_or_reordered_data_file_is_refused(grouped_run, tmp_path):
    run_dir, data = grouped_run
    for edit in ("text", "order"):
        run = _copy(run_dir, tmp_path, f"run-{edit}")
        frame = pd.read_csv(data)
        if edit == "text":
            frame.loc[frame.index[-1], "text"] = frame["text"].iloc[-1] + " edited"
        else:
            frame = frame.iloc[::-1]
        moved = tmp_path / f"{edit}.csv"
        frame.to_csv(moved, index=False)
        meta = json.loads((run / "meta.json").read_text())
        meta["config"]["train"]["data"] = str(moved)
        (run / "meta.json").write_text(json.dumps(meta))
        try:
            certify_run(run, posterior_std_grid=GRID, posterior_draws=K, progress=False)
        except ValueError as exc:
            assert str(moved) in str(exc) and "no longer matches" in str(exc), exc
        else:  # the edit may only touch a test row: then the certified texts are unchanged and so is the digest
            assert edit == "text"
            assert {a.name: a.holds for a in certificate_reports(run, posterior_std_grid=GRID)[0].assumptions
                    }["data_unchanged"] is True


def test_audit_items_fail_on_tampered_records(grouped_run, tmp_path):
    run = _copy(grouped_run[0], tmp_path)
    certify_run(run, posterior_std_grid=GRID, posterior_draws=K, progress=False)
    path = run / "certificates.parquet"
    table = pd.read_parquet(path)
    for column, value, item in (("evaluated_draws", int(table.evaluated_draws.iloc[0]) - 1,
                                 "every_certified_example_evaluated"),
                                ("passes", int(table.passes.iloc[0]) - 1, "every_certified_example_evaluated"),
                                ("data_fingerprint", "0" * 64, "data_unchanged")):
        tampered = table.copy()
        tampered[column] = value
        tampered.to_parquet(path)
        audit = {a.name: a.holds for a in certificate_reports(run, posterior_std_grid=GRID)[0].assumptions}
        assert audit[item] is False, (column, audit)
    table.to_parquet(path)
    assert all(a.holds is not False for a in certificate_reports(run, posterior_std_grid=GRID)[0].assumptions)


def test_a_prior_that_took_rows_of_grouped_data_certifies_only_declared_rows(grouped_run, tmp_path):
    run = _copy(grouped_run[0], tmp_path)
    record = json.loads((run / "prior" / "prior.json").read_text())
    ids = record["prior_ids"] + record["certifiable_ids"]
    # a row split as earlier versions wrote it: every other row, so every group is on both sides
    rows = {"prior_fraction": 0.5, "prior_ids": ids[::2], "certifiable_ids": ids[1::2]}
    (run / "prior" / "prior.json").write_text(json.dumps(rows))
    with pytest.raises(ValueError, match="no group is independent of the prior.*--assume-iid-rows"):
        certify_run(run, posterior_std_grid=GRID, posterior_draws=K, progress=False)
    result = certify_run(run, posterior_std_grid=GRID, posterior_draws=K, assume_iid_rows=True, progress=False)
    assert set(result.table.level) == {"row"} and "declared" in result.table.premise.iloc[0]
    assert not (run / "certificates_iid_rows.parquet").exists()
    assert result.table.n_bound.iloc[0] == len(rows["certifiable_ids"])


def test_data_without_groups_are_certified_per_row(tmp_path):
    data = write_tiny_csv(tmp_path / "d.csv", n=60)
    config = RunConfig().replace(
        train={"model": str(save_tiny_classifier(tmp_path / "model")), "data": str(data), "n_train": None,
               "n_test": 10, "epochs": 1, "batch_size": 8, "eval_train_size": 8, "eval_at_start": False},
        lora_dropout={"dropout_rate": 0.3, "n_instances": 2})
    run = train_run(config, tmp_path / "runs", run_id="rows", progress=False).run_dir
    table = certify_run(run, posterior_std_grid=(0.05,), posterior_draws=K, progress=False).table
    assert table.level.iloc[0] == "row" and "no group column" in table.premise.iloc[0]
    assert table.n_bound.iloc[0] == table.n_bound_rows.iloc[0] == validate_run(run).meta.n_train
