"""What each instrument costs, relative to one training epoch, measured side by side in one process.

On the embedded default (MiniLM, Rotten Tomatoes), ``--n-train`` examples, batch 32, LoRA Dropout at
p = 0.3, N = 2. Prints ratios (machines are noisy; nothing here is a pass/fail timing):

- each instrument over one training epoch: the per-sample loss matrix at one evaluation (train and test
  splits, all members, deterministic and full predictors), calibration, realised sparsity, the
  curvature probes, one leave-one-out index by coupled retraining, and by warm start;
- bookkeeping (tables, statistics, parquet writing) over the forward passes an evaluation needs
  (goal < 5%);
- vmap per-sample gradients over a per-example loop (goal >= 10x);
- Hessian-vector products Lanczos needs for 1e-3 relative accuracy on the smallest eigenvalue against
  the dense answer, on a model small enough for a dense Hessian (goal <= 100), and on MiniLM against a
  tight-tolerance run;
- a default instrumented run (``lora-dropout train`` defaults) over the same run without the
  per-sample loss matrix (``--samples-every 0``) (goal <= 1.5).

    python benchmarks/instrumentation.py [--n-train 128] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from lora_dropout.probes.curvature import dense_hessian, lanczos_extremes
from lora_dropout.probes.gradients import hessian_hvp, per_sample_grad_norms, per_sample_grad_norms_loop
from lora_dropout.probes.measure import run_probes
from lora_dropout.probes.space import ParamSpace
from lora_dropout.probes.stability import LoraLooProblem
from lora_dropout.runs.config import RunConfig
from lora_dropout.runs.evaluate import calibration_rows, run_split, sample_frame, summary_rows
from lora_dropout.runs.run import train_run
from lora_dropout.runs.sparsity import module_sparsity
from lora_dropout.runs.train import build_model, fit, prepare, steps_per_epoch
from lora_dropout.runs.writer import write_table


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n-train", type=int, default=128)
    parser.add_argument("--probe-examples", type=int, default=32)
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args(argv)

    config = RunConfig().replace(train={"n_train": args.n_train, "n_test": args.n_train, "epochs": 1, "lr": 2e-3,
                                        "eval_train_size": args.n_train},
                                 lora_dropout={"dropout_rate": 0.3, "n_instances": 2})
    tc = config.train
    prepared = prepare(tc)
    n_steps = steps_per_epoch(len(prepared.train), tc.batch_size)
    model, handle = build_model(config, 2, n_steps)
    results: dict[str, tuple[float, str]] = {}

    epoch_s, _ = timed(lambda: fit(model, handle, prepared.train, tc))

    def evaluate():
        return [run_split(model, handle, d, s, batch_size=tc.eval_batch_size, device="cpu", full=True)
                for s, d in (("train", prepared.eval_train), ("test", prepared.test))]

    forward_s, logits = timed(evaluate)

    def bookkeeping():
        with tempfile.TemporaryDirectory() as tmp:
            for lg in logits:
                summary_rows(lg)
                write_table(tmp, "samples", sample_frame(lg).assign(step=0))
                write_table(tmp, "calibration", pd.DataFrame(calibration_rows(lg)).assign(step=0))

    books_s, _ = timed(bookkeeping)
    calib_s, _ = timed(lambda: [calibration_rows(lg) for lg in logits])
    keys = torch.tensor(prepared.train.sample_ids[:128])
    sparsity_s, _ = timed(lambda: module_sparsity(handle, keys, epoch=0))
    probe_data = prepared.train.subset(range(min(args.probe_examples, len(prepared.train))))
    probes_s, _ = timed(lambda: run_probes(model, handle, probe_data, spaces=("delta_w",), tol=1e-2))
    problem = LoraLooProblem(type("Loaded", (), {"model": model, "handle": handle, "prepared": prepared,
                                                  "config": config, "n_steps": n_steps})(), probe_data=probe_data)
    retrain_s, _ = timed(lambda: problem.retrain(0))
    warm_s, _ = timed(lambda: (problem.warm_start(None), problem.warm_start(0)))

    results["per_sample_matrix_over_epoch"] = (forward_s / epoch_s, "one evaluation, train + test splits")
    results["calibration_over_epoch"] = (calib_s / epoch_s, "reliability bins of 3 predictors, 2 splits")
    results["sparsity_over_epoch"] = (sparsity_s / epoch_s, "modules table from 128 x N masks")
    results["curvature_over_epoch"] = (probes_s / epoch_s, f"delta_w space, {len(probe_data)} examples, tol 1e-2")
    results["loo_retrain_index_over_epoch"] = (retrain_s / epoch_s, "one index = one training run")
    results["loo_warm_start_index_over_epoch"] = (warm_s / epoch_s, "reference + one index, 1 epoch each")
    results["bookkeeping_over_forward"] = (books_s / forward_s, "tables, statistics, parquet (goal < 0.05)")

    small = probe_data.subset(range(min(16, len(probe_data))))
    vmap_s, _ = timed(lambda: per_sample_grad_norms(model, handle, small, space="factors"))
    loop_s, _ = timed(lambda: per_sample_grad_norms_loop(model, handle, small, space="factors"))
    results["loop_over_vmap_per_sample_grads"] = (loop_s / vmap_s, f"{len(small)} examples, factors space (goal >= 10)")

    # Lanczos against a dense Hessian: a MiniLM-sized run is far beyond a dense eigendecomposition, so
    # this uses a tiny 2-layer BERT (the test suite's) in float64.
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from lora_dropout import LoraDropoutConfig, apply_lora_dropout
    from lora_dropout.tasks.classification import EncodedSplit
    from tests.tiny import tiny_batch, tiny_lora

    tiny = tiny_lora(b_scale=3.0).double()
    tiny.set_attn_implementation("eager")
    tiny_handle = apply_lora_dropout(tiny, LoraDropoutConfig(dropout_rate=0.3))
    b = tiny_batch(batch_size=32, seq_len=8, num_labels=3)
    data = EncodedSplit(tuple({"input_ids": row.tolist()} for row in b["input_ids"]), b["labels"].numpy(),
                        np.arange(32), 0)
    hvp, dim = hessian_hvp(tiny, tiny_handle, data, space="delta_w")
    space = ParamSpace(tiny, tiny_handle, "delta_w")
    batch = data.collate(range(32))
    with space.active():
        dense = dense_hessian(lambda f: space.loss(f, batch), space.flat())
    exact = float(torch.linalg.eigvalsh(dense)[0])
    lanczos = lanczos_extremes(hvp, dim, tol=1e-3)
    err = abs(lanczos["min_eig"] - exact) / abs(exact)
    results["lanczos_hvps_tiny_1e-3"] = (float(lanczos["min_hvps"]),
                                         f"dim {dim}, relative error {err:.1e} vs dense (goal <= 100 HVPs)")

    # an instrumented default run over the same run without the per-sample loss matrix
    with tempfile.TemporaryDirectory() as tmp:
        full_s, _ = timed(lambda: train_run(config.replace(train={"epochs": 2}), tmp, run_id="on", progress=False))
        bare_s, _ = timed(lambda: train_run(config.replace(train={"epochs": 2, "samples_every": 0}), tmp,
                                            run_id="off", progress=False))
    results["instrumented_over_plain_run"] = (full_s / bare_s, "defaults vs --samples-every 0, 2 epochs (goal <= 1.5)")

    machine = f"{platform.machine()} {torch.get_num_threads()} threads, torch {torch.__version__}"
    print(f"# instrumentation on {date.today()} | {machine} | n_train {args.n_train}, one epoch = {epoch_s:.1f} s")
    print("| measurement | ratio | note |")
    print("|---|---|---|")
    for key, (ratio, note) in results.items():
        print(f"| {key} | {ratio:.3g} | {note} |")
    if args.json:
        Path(args.json).write_text(json.dumps({"date": str(date.today()), "machine": machine, "epoch_s": epoch_s,
                                               "results": {k: {"ratio": r, "note": n} for k, (r, n) in
                                                           results.items()}}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
