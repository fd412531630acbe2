"""One training run from a `RunConfig` to a complete run directory (`bounds.runlog` schema)."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch
from tqdm.auto import tqdm

from .apply import LoraDropout
from .evaluate import calibration_rows, run_split, sample_frame, summary_rows
from .persist import save_lora_dropout
from .runconfig import RunConfig, derive_seed
from .runwriter import RunWriter
from .sparsity import module_sparsity
from .train import Prepared, build_model, fit, prepare, resolve_device, steps_per_epoch


@dataclass(frozen=True)
class RunResult:
    run_dir: Path
    final: dict


def new_run_id(config: RunConfig) -> str:
    """``<UTC time>-<config digest>``: sortable, and traceable to its configuration."""
    return f"{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}-{config.digest()}"


def train_run(config: RunConfig, out: str | Path, *, run_id: str | None = None, progress: bool = True
              ) -> RunResult:
    """Train one run and write its directory ``out / run_id``.

    The directory is complete after every evaluation: steps, tables and adapter are written as they
    are produced, and ``meta.json`` says ``running`` until the end (``failed`` with the error if an
    exception or Ctrl-C stops the run).
    """
    tc = config.train
    prepared = prepare(tc)
    n_steps = tc.epochs * steps_per_epoch(len(prepared.train), tc.batch_size)
    model, handle = build_model(config, len(prepared.splits.label_names), n_steps)
    run_id = run_id or new_run_id(config)
    seeds = {stream: derive_seed(tc.seed, stream) for stream in ("init", "order", "masks", "dropout")}
    device = resolve_device(tc.device)
    # the sizes as resolved against the data (the config may say "auto"): n_train and n_test from the
    # split itself, and the training examples of the train-risk evaluation
    data = {**prepared.splits.describe(), "eval_train_size": len(prepared.eval_train)}
    writer = RunWriter(Path(out) / run_id, run_id=run_id, config=config.to_dict(), seeds=seeds,
                       data=data, device=str(device))
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
                               tokenizer=prepared.tokenizer)
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
        mask_epoch = max(0, math.ceil(epoch) - 1)
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
        if tc.eval_at_start:
            evaluate(0, 0.0)
        fit(model, handle, prepared.train, tc, on_step=on_step, should_eval=should_eval, on_eval=evaluate)
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
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    from bounds.runlog import read_meta

    run_dir = Path(run_dir)
    config = RunConfig.from_dict(read_meta(run_dir)["config"])
    if device is not None:
        config = config.replace(train={"device": device})
    prepared = prepare(config.train)
    n_steps = config.train.epochs * steps_per_epoch(len(prepared.train), config.train.batch_size)
    model, handle = build_model(config, len(prepared.splits.label_names), n_steps)
    weights = load_file(str(run_dir / "adapter" / "adapter_model.safetensors"),
                        device=str(resolve_device(config.train.device)))
    set_peft_model_state_dict(model, weights)
    return LoadedRun(run_dir, config, prepared, model, handle, n_steps)
