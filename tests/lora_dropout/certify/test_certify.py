"""lora-dropout certify on a tiny trained run with a hand-written prior/: the table against a plain loop."""

from __future__ import annotations

import json
import shutil

import pandas as pd
import pytest
import torch
from peft import get_peft_model_state_dict
from safetensors.torch import load_file, save_file

from bounds.formulas import dropout_kl
from bounds.runlog import read_meta, validate_run
from lora_dropout.certify.measure import certify_run
from lora_dropout.runs.config import RunConfig
from lora_dropout.runs.run import load_run, train_run
from lora_dropout.runs.train import build_model, prepare, steps_per_epoch
from tests.tiny import save_tiny_classifier, write_tiny_csv

GRID = (0.02, 0.2)
K = 3
N_PRIOR = 12  # the trained prior saw the first 12 of the 32 training examples


def _state(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().contiguous() for k, v in get_peft_model_state_dict(model).items()}


def write_prior(run_dir, *, init=True, trained=True, record=True, prior_ids=None, certifiable_ids=None):
    """prior/ as the training side writes it: init state, a trained prior state and prior.json."""
    directory = run_dir / "prior"
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir()
    config = RunConfig.from_dict(read_meta(run_dir)["config"])
    prepared = prepare(config.train)
    n_steps = config.train.epochs * steps_per_epoch(len(prepared.train), config.train.batch_size)
    if init:  # the freshly built model is the seeded initialisation
        fresh, _ = build_model(config, len(prepared.splits.label_names), n_steps)
        save_file(_state(fresh), str(directory / "init.safetensors"))
    ids = [int(i) for i in prepared.train.sample_ids]
    if trained:  # a stand-in for the prior mean trained on prior_ids: theta(S) moved by a fixed amount
        g = torch.Generator().manual_seed(5)
        theta = _state(load_run(run_dir).model)
        save_file({k: v + 0.01 * torch.randn(v.shape, generator=g) for k, v in theta.items()},
                  str(directory / "prior.safetensors"))
    if record:
        prior_ids = ids[:N_PRIOR] if prior_ids is None else prior_ids
        certifiable = ids[N_PRIOR:] if certifiable_ids is None else certifiable_ids
        (directory / "prior.json").write_text(json.dumps(
            {"prior_fraction": N_PRIOR / len(ids), "prior_ids": prior_ids, "certifiable_ids": certifiable}))
    return ids


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A run on data without groups (the certificate at row level; tests/lora_dropout/certify/test_levels.py has
    the group level)."""
    root = tmp_path_factory.mktemp("certify")
    config = RunConfig().replace(
        train={"model": str(save_tiny_classifier(root / "model")), "data": str(write_tiny_csv(root / "d.csv")),
               "n_train": 32, "n_test": 10, "epochs": 2, "batch_size": 8,
               "eval_train_size": 8, "lr": 5e-3, "eval_at_start": False},
        lora_dropout={"dropout_rate": 0.3, "n_instances": 2},
    )
    run_dir = train_run(config, root / "runs", run_id="tiny", progress=False).run_dir
    write_prior(run_dir)
    return run_dir


@pytest.fixture(scope="module")
def certified(tiny_run):
    return certify_run(tiny_run, posterior_std_grid=GRID, posterior_draws=K, batch_size=5, progress=False)


def _copy(run_dir, tmp_path, name="run"):
    target = tmp_path / name
    shutil.copytree(run_dir, target)
    return target


def _loop(model, data, positions, sigma):
    """Reference: one example at a time, every draw separately, each member an explicit copy of the model with the
    noise added to every trainable parameter (tests/lora_dropout/certify/test_posterior.py), so a parameter the
    batched sampling left unperturbed changes the certificate's risks."""
    from lora_dropout import get_lora_dropout
    from tests.lora_dropout.certify.test_posterior import _explicit_member

    seed = get_lora_dropout(model).config.seed
    errors, linear, count = 0.0, 0.0, 0
    for i in positions:
        batch = data.collate([i])
        y = int(batch["labels"][0])
        for d in range(K):
            logits = _explicit_member(model, batch, 0, d, std=sigma, seed=seed)  # (C,)
            errors += float(int(logits.argmax()) != y)
            linear += 1.0 - float(torch.softmax(logits.double(), -1)[y])
            count += 1
    return errors / count, linear / count


def test_gibbs_errors_equal_a_plain_loop_on_the_certifiable_examples(tiny_run, certified):
    table = validate_run(tiny_run, require=("certificates",)).table("certificates")
    assert certified.prior == "trained"  # prior.safetensors is there: the default
    loaded = load_run(tiny_run)
    train, test = loaded.prepared.train, loaded.prepared.test
    ids = [int(i) for i in train.sample_ids]
    assert list(certified.certified_ids) == ids[N_PRIOR:]
    positions = range(N_PRIOR, len(ids))
    for sigma in GRID:
        row = table[table.posterior_std == sigma].iloc[0]
        assert (row.n_bound, row.n_test, row.draws, row.grid_size, row.passes) == (20, 10, K, 2, 2 * K)
        assert row.prior == "trained" and row.seed == loaded.handle.config.seed
        err, lin = _loop(loaded.model, train, positions, sigma)
        assert row.train_gibbs_error == pytest.approx(err, abs=1e-12)
        assert row.train_gibbs_linear == pytest.approx(lin, rel=1e-6)
        err, lin = _loop(loaded.model, test, range(len(test)), sigma)
        assert row.test_gibbs_error == pytest.approx(err, abs=1e-12)
        assert row.test_gibbs_linear == pytest.approx(lin, rel=1e-6)
    # the noise matters: the two posteriors are not the same predictor
    assert table.train_gibbs_linear.nunique() == 2


def test_kl_equals_dropout_kl_of_directly_computed_distances(tiny_run, certified):
    theta = _state(load_run(tiny_run).model)
    prior = load_file(str(tiny_run / "prior" / "prior.safetensors"))
    assert set(theta) == set(prior)
    factor = sum(float(((theta[k].double() - prior[k].double()) ** 2).sum()) for k in theta if ".lora_" in k)
    head = sum(float(((theta[k].double() - prior[k].double()) ** 2).sum()) for k in theta if ".lora_" not in k)
    assert factor > 0 and head > 0
    table = certified.table
    for row in table.itertuples():
        assert (row.factor_sq_dist, row.head_sq_dist) == pytest.approx((factor, head), rel=1e-12)
        kl = dropout_kl(0.3, factor, head, row.posterior_std)
        assert row.p == 0.3
        assert (row.kl_factor_term, row.kl_head_term, row.kl) == pytest.approx(
            (kl.factor_term, kl.head_term, kl.total), rel=1e-12)


def test_the_init_prior_certifies_every_training_example(tiny_run, tmp_path):
    run = _copy(tiny_run, tmp_path)
    (run / "prior" / "prior.safetensors").unlink()
    (run / "prior" / "prior.json").unlink()
    result = certify_run(run, posterior_std_grid=(0.1,), posterior_draws=1, progress=False)
    assert result.prior == "init" and len(result.certified_ids) == 32 and result.table.n_bound.iloc[0] == 32
    # the distance to the initialisation: B starts at 0, so it is the trained factors' size
    init = load_file(str(run / "prior" / "init.safetensors"))
    theta = _state(load_run(run).model)
    factor = sum(float(((theta[k].double() - init[k].double()) ** 2).sum()) for k in theta if ".lora_" in k)
    assert result.table.factor_sq_dist.iloc[0] == pytest.approx(factor, rel=1e-12)
    # asked for explicitly, the init prior also ignores a trained prior that is present
    both = _copy(tiny_run, tmp_path, "both")
    explicit = certify_run(both, posterior_std_grid=(0.1,), posterior_draws=1, prior="init", progress=False)
    assert explicit.prior == "init" and explicit.table.n_bound.iloc[0] == 32


def test_refusals_name_the_problem(tiny_run, tmp_path):
    run = _copy(tiny_run, tmp_path)
    ids = write_prior(run, trained=False, record=False)
    with pytest.raises(FileNotFoundError, match="no trained prior.*--prior init"):
        certify_run(run, prior="trained", progress=False)
    # certifiable ids the prior saw are refused
    write_prior(run, prior_ids=ids[:N_PRIOR], certifiable_ids=ids[N_PRIOR - 2:])
    with pytest.raises(ValueError, match="2 certifiable_ids were also seen by the trained prior"):
        certify_run(run, progress=False)
    write_prior(run, certifiable_ids=[*ids[N_PRIOR:], 10**9])
    with pytest.raises(ValueError, match="not training examples"):
        certify_run(run, progress=False)
    # a prior state that does not belong to this adapter
    write_prior(run)
    save_file({"classifier.weight": torch.zeros(2, 16)}, str(run / "prior" / "prior.safetensors"))
    with pytest.raises(ValueError, match="does not match the run's adapter"):
        certify_run(run, posterior_std_grid=(0.1,), posterior_draws=1, progress=False)
    # a run saved without prior/ (older toolkit)
    shutil.rmtree(run / "prior")
    with pytest.raises(FileNotFoundError, match="has no prior/ .*retrain it"):
        certify_run(run, progress=False)
    for bad in ((), (0.1, -1.0), (0.1, 0.1), (float("nan"),)):
        with pytest.raises(ValueError, match="posterior_std_grid"):
            certify_run(tiny_run, posterior_std_grid=bad, progress=False)
    with pytest.raises(ValueError, match="delta_mc"):
        certify_run(tiny_run, delta_mc=1.0, progress=False)


def test_cli_end_to_end_writes_the_table_and_bounds_json(tiny_run, tmp_path, capsys):
    from analysis.cli import main

    run = _copy(tiny_run, tmp_path)
    (run / "certificates.parquet").unlink(missing_ok=True)
    argv = ["certify", str(run), "--posterior-std-grid", *map(str, GRID), "--posterior-draws", "2", "--quiet"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "best pacbayes_dropout" in out and "best pacbayes_dropout_ensemble" in out and "prior=trained" in out
    assert "n_b=20" in out and "4 passes" in out
    table = validate_run(run, require=("certificates",)).table("certificates")
    assert sorted(table.posterior_std) == list(GRID) and set(table.draws) == {2}
    document = json.loads((run / "bounds.json").read_text())
    stored = {r["name"]: r for r in document["reports"]}
    assert set(stored) == {"pacbayes_dropout", "pacbayes_dropout_ensemble"}
    assert document["settings"]["certificate"]["posterior_std_grid"] == list(GRID)
    gibbs = stored["pacbayes_dropout"]
    audit = {a["name"]: a["holds"] for a in gibbs["assumptions"]}
    assert audit["certified_disjoint_from_prior"] and audit["grid_fixed_in_advance"] and audit["every_certified_example_evaluated"]
    assert audit["n_bound_matches_prior"] and audit["kl_recomputed"]
    best = table.loc[table.posterior_std == {q["name"]: q["value"] for q in gibbs["inputs"]}["posterior_std"]]
    assert gibbs["measured"] == pytest.approx(float(best.test_gibbs_error.iloc[0]))
    # `lora-dropout bounds` afterwards keeps the certificate beside the paper's reports
    assert main(["bounds", str(run), "--posterior-std-grid", *map(str, GRID)]) == 0
    names = [r["name"] for r in json.loads((run / "bounds.json").read_text())["reports"]]
    assert "theorem44" in names and "pacbayes_dropout" in names
    capsys.readouterr()


def test_cli_reuses_a_table_measured_with_the_same_settings_and_measures_otherwise(tiny_run, tmp_path, capsys):
    from analysis.cli import main

    run = _copy(tiny_run, tmp_path)
    (run / "certificates.parquet").unlink(missing_ok=True)
    argv = ["certify", str(run), "--posterior-std-grid", *map(str, GRID), "--posterior-draws", "2", "--quiet"]
    assert main(argv) == 0
    first = pd.read_parquet(run / "certificates.parquet")
    stamp = (run / "certificates.parquet").stat().st_mtime_ns
    capsys.readouterr()
    assert main(argv) == 0  # the same settings: the table is reused, its report printed again
    out = capsys.readouterr().out
    assert "not measured again" in out and "best pacbayes_dropout" in out
    assert (run / "certificates.parquet").stat().st_mtime_ns == stamp
    for extra in (["--force"], ["--delta", "0.1"], ["--seed", "7"]):  # measured again
        assert main([*argv, *extra]) == 0
        assert "not measured again" not in capsys.readouterr().out
        assert (run / "certificates.parquet").stat().st_mtime_ns != stamp
        stamp = (run / "certificates.parquet").stat().st_mtime_ns
    again = pd.read_parquet(run / "certificates.parquet")
    assert set(again.delta) == {0.05} and set(again.seed) == {7}
    # --force with the first settings measures the same numbers (the draws are a function of seed and sample id)
    assert main([*argv, "--force"]) == 0
    pd.testing.assert_frame_equal(pd.read_parquet(run / "certificates.parquet"), first)
    capsys.readouterr()


def test_cli_bad_inputs_end_with_one_line(tiny_run, tmp_path, capsys):
    from analysis.cli import main

    cases = [
        (["certify", str(tmp_path / "nowhere")], "is not a run directory"),
        (["certify", str(tiny_run), "--posterior-std-grid", "0.1", "-0.5"], "posterior_std_grid must be a finite number > 0, got -0.5"),
    ]
    bare = _copy(tiny_run, tmp_path)
    shutil.rmtree(bare / "prior")
    cases.append((["certify", str(bare)], "has no prior/"))
    no_trained = tmp_path / "no_trained"
    shutil.copytree(bare, no_trained)
    write_prior(no_trained, trained=False)
    cases.append((["certify", str(no_trained), "--prior", "trained"], "no trained prior"))
    for argv, message in cases:
        assert main([*argv, "--quiet"]) == 2, argv  # bad input: argparse's usage code
        err = capsys.readouterr().err.strip()
        assert err.startswith("lora-dropout certify: ") and message in err and "\n" not in err, err


def test_certify_uses_the_prior_that_training_wrote(tmp_path):
    import dataclasses

    from bounds.report import certificate_reports
    from lora_dropout.runs.config import TrainConfig

    if "prior_fraction" not in {f.name for f in dataclasses.fields(TrainConfig)}:
        pytest.skip("this toolkit's training does not write prior/ yet")
    config = RunConfig().replace(
        train={"model": str(save_tiny_classifier(tmp_path / "model")), "data": str(write_tiny_csv(tmp_path / "d.csv")),
               "group_column": "group", "n_train": 20, "n_test": 6, "epochs": 1, "batch_size": 8,
               "eval_train_size": 4, "lr": 5e-3, "eval_at_start": False, "prior_fraction": 0.5},
        lora_dropout={"dropout_rate": 0.3, "n_instances": 2},
    )
    run = train_run(config, tmp_path / "runs", run_id="with_prior", progress=False).run_dir
    record = json.loads((run / "prior" / "prior.json").read_text())
    result = certify_run(run, posterior_std_grid=(0.1,), posterior_draws=1, progress=False)
    assert result.prior == "trained" and set(result.certified_ids) == set(record["certifiable_ids"])
    assert not set(result.certified_ids) & set(record["prior_ids"]) and record["prior_ids"]
    gibbs = certificate_reports(run, posterior_std_grid=(0.1,))[0]
    audit = {a.name: a.holds for a in gibbs.assumptions}
    assert audit["certified_disjoint_from_prior"] and audit["n_bound_matches_prior"]
