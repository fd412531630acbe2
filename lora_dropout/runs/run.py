"""One training run from a `RunConfig` to a complete run directory (`bounds.runlog` schema)."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from ..method.apply import LoraDropout
from ..method.persist import save_lora_dropout
from ..tasks.splits import examples_fingerprint
from .config import RunConfig, derive_seed
from .evaluate import calibration_rows, run_split, sample_frame, summary_rows
from .sparsity import module_sparsity
from .train import (
    Prepared,
    adapter_state,
    build_model,
    fit,
    load_adapter,
    make_optimizer,
    phases,
    prepare,
    prior_split,
    resolve_device,
)
from .writer import RunWriter


@dataclass(frozen=True)
class RunResult:
    run_dir: Path
    final: dict


def new_run_id(config: RunConfig) -> str:
    """``<UTC time>-<config digest>``: sortable, and traceable to its configuration."""
    return f"{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}-{config.digest()}"


def row_groups(prepared: Prepared) -> list:
    """The group of every row of ``prepared.train`` (None where the data have no groups), by sample id."""
    by_id = dict(zip(prepared.splits.train["sample_id"].astype(int), prepared.splits.train["group"], strict=True))
    return [by_id[int(i)] for i in prepared.train.sample_ids]


def prior_json(prepared: Prepared, split, tc) -> dict:
    """``prior/prior.json`` (`bounds.runlog.PRIOR_FILES`): which examples (and groups) the prior trained on, which
    may be certified, and the fingerprints of both lists' texts and labels (`examples_fingerprint`)."""
    ids = prepared.train.sample_ids
    inside = np.isin(np.arange(len(ids)), split.positions)
    prior_ids = [int(i) for i in ids[inside]]
    certifiable_ids = [int(i) for i in ids[~inside]]
    groups = row_groups(prepared)
    record = {"prior_fraction": float(tc.prior_fraction), "level": split.level, "prior_ids": prior_ids,
              "certifiable_ids": certifiable_ids,
              "prior_fingerprint": examples_fingerprint(prepared.splits.train, prior_ids),
              "certifiable_fingerprint": examples_fingerprint(prepared.splits.train, certifiable_ids)}
    if split.level == "group":
        chosen = set(split.prior_groups)
        record["prior_groups"] = list(split.prior_groups)
        record["certifiable_groups"] = list(dict.fromkeys(g for g in groups if g not in chosen))
    return record


def train_run(config: RunConfig, out: str | Path, *, run_id: str | None = None, progress: bool = True
              ) -> RunResult:
    """Train one run and write its directory ``out / run_id``.

    The directory is complete after every evaluation: steps, tables and adapter are written as they
    are produced, and ``meta.json`` says ``running`` until the end (``failed`` with the error if an
    exception or Ctrl-C stops the run).

    PAC-Bayes prior (``prior/``, `bounds.runlog.PRIOR_FILES`): the trainable parameters at the seeded
    initialisation are saved before any step; with ``prior_fraction > 0`` a prior phase trains on the prior
    examples first, without evaluations, and its result is saved; the posterior phase (the evaluations,
    ``steps.jsonl`` and ``adapter/``) then trains from it on all examples, its step counter continuing
    from the prior phase's (`lora_dropout.runs.train.phases`).
    """
    tc = config.train
    prepared = prepare(tc)
    split = prior_split(row_groups(prepared), tc)
    schedule = phases(tc, len(prepared.train), len(split.positions))  # raises before anything is written
    n_steps = schedule.total_steps
    model, handle = build_model(config, len(prepared.splits.label_names), n_steps)
    run_id = run_id or new_run_id(config)
    seeds = {stream: derive_seed(tc.seed, stream) for stream in ("init", "order", "masks", "dropout", "prior")}
    device = resolve_device(tc.device)
    # the sizes as resolved against the data (the config may say "auto"): n_train and n_test from the
    # split itself, and the training examples of the train-risk evaluation
    data = {**prepared.splits.describe(), "eval_train_size": len(prepared.eval_train)}
    in_prior = split.positions
    prior_record = prior_json(prepared, split, tc)
    prior = {"prior_fraction": float(tc.prior_fraction), "n_prior": len(prior_record["prior_ids"]),
             "n_certifiable": len(prior_record["certifiable_ids"]), "prior_steps": schedule.prior_steps,
             "posterior_first_step": schedule.prior_steps, "posterior_first_epoch": schedule.posterior_first_epoch,
             "posterior_epochs": schedule.posterior_epochs, "posterior_lr": schedule.posterior_lr,
             "split_level": split.level}
    writer = RunWriter(Path(out) / run_id, run_id=run_id, config=config.to_dict(), seeds=seeds,
                       data=data, device=str(device), prior=prior)
    window: list[float] = []  # Eq. 7 losses since the last evaluation
    evaluations = 0
    bar = tqdm(total=n_steps, desc=f"train {run_id}", disable=not progress, unit="step", leave=False)

    def evaluate(step: int, epoch: float) -> None:
        nonlocal evaluations
        objective = sum(window) / len(window) if window else None
        window.clear()
        final = {}
        for split, data in (("train", prepared.eval_train), ("test", prepared.test)):
            logits = run_split(model, handle, data, split, batch_size=tc.eval_batch_size, device=device,
                               full=step == n_steps,  # the unmasked model, theta(S), for the bounds
                               tokenizer=prepared.tokenizer, task=prepared.task)
            rows = [{**row, "step": step, "epoch": epoch, "objective": objective, "wall_s": writer.elapsed}
                    for row in summary_rows(logits)]
            writer.append_steps(rows)
            final.update({f"{r['split']}/{r['predictor']}": {k: r[k] for k in ("risk", "accuracy", "ece")}
                          for r in rows})
            writer.add_rows("calibration", pd.DataFrame(calibration_rows(logits)).assign(step=step))
            # the final evaluation always writes it: the bounds are evaluated there
            if tc.samples_every and (evaluations % tc.samples_every == 0 or step == n_steps):
                writer.add_rows("samples", sample_frame(logits).assign(step=step))
        # realised sparsity of the masks this epoch's training stream gives (up to 128 training examples)
        keys = torch.tensor(prepared.train.sample_ids[:128], device=device)
        mask_epoch = schedule.posterior_first_epoch + max(0, math.ceil(epoch) - 1)
        writer.add_rows("modules", module_sparsity(handle, keys, epoch=mask_epoch, step=step).assign(step=step))
        writer.flush_tables()
        save_lora_dropout(model, writer.dir / "adapter")
        writer.set_final(final)
        evaluations += 1
        bar.set_postfix(test_acc=f"{final['test/ensemble']['accuracy']:.3f}", refresh=False)

    def on_step(info) -> None:
        window.append(info.loss)
        bar.update(1)
        bar.set_postfix(loss=f"{sum(window[-20:]) / len(window[-20:]):.4f}", refresh=False)

    def should_eval(step: int, end_of_epoch: bool) -> bool:
        return (tc.eval_every and step % tc.eval_every == 0) or (end_of_epoch and not tc.eval_every) or (
            step == n_steps)

    with writer, bar:
        writer.save_tensors("prior/init.safetensors", adapter_state(model))
        writer.save_json("prior/prior.json", prior_record)
        step = 0
        if schedule.n_prior:
            step = fit(model, handle, prepared.train.subset(in_prior), tc, on_step=lambda info: bar.update(1))
            writer.save_tensors("prior/prior.safetensors", adapter_state(model))
        if tc.eval_at_start:
            evaluate(step, 0.0)
        optimizer, scheduler = make_optimizer(model, tc, lr=schedule.posterior_lr)
        fit(model, handle, prepared.train, tc, on_step=on_step, should_eval=should_eval, on_eval=evaluate,
            epochs=schedule.posterior_epochs, first_epoch=schedule.posterior_first_epoch, first_step=step,
            optimizer=optimizer, scheduler=scheduler)
        if not schedule.posterior_steps and not tc.eval_at_start:
            evaluate(n_steps, 0.0)  # no posterior step (posterior_epochs=0): still one final evaluation
    return RunResult(writer.dir, writer.meta["final"])


@dataclass
class LoadedRun:
    """A finished run brought back: its configuration, data, and model at theta(S)."""

    run_dir: Path
    config: RunConfig
    prepared: Prepared
    model: torch.nn.Module
    handle: LoraDropout
    n_steps: int


def load_run(run_dir: str | Path, *, device: str | None = None) -> LoadedRun:
    """Rebuild a run's model exactly as trained (same seeds, same data) and load ``adapter/`` into it.

    The freshly built model is what training started from; loading the saved adapter makes it
    theta(S). ``device`` overrides the device the run used.
    """
    from bounds.runlog import read_run_meta

    run_dir = Path(run_dir)
    config = RunConfig.from_dict(read_run_meta(run_dir).config_dict())
    if device is not None:
        config = config.replace(train={"device": device})
    prepared = prepare(config.train)
    n_prior = len(prior_split(row_groups(prepared), config.train).positions)
    n_steps = phases(config.train, len(prepared.train), n_prior).total_steps
    model, handle = build_model(config, len(prepared.splits.label_names), n_steps)
    load_adapter(model, run_dir / "adapter", device=resolve_device(config.train.device))
    return LoadedRun(run_dir, config, prepared, model, handle, n_steps)
