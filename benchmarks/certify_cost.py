"""What ``lora-dropout certify`` costs, measured side by side with training in one process.

On the embedded default (MiniLM, Rotten Tomatoes), ``--n-train`` training and test examples (default 32,
so that the default run takes about 3 minutes on 2 CPU cores; both costs grow linearly in the examples, so
the ratios hardly depend on it), batch 32, LoRA Dropout at p = 0.3, N = 2, one epoch; then
`lora_dropout.certify.measure.certify_run` on that run with the default ``posterior_std`` grid and ``k = --draws``
posterior draws per example. Prints counts and ratios (machines are noisy; nothing here is a pass/fail
timing):

(a) passes over the certified split: the examples the model's forward actually processed (counted by a
    forward pre-hook on the model, rows of every call, attributed to the split being measured), over the
    number of certified examples, against certify's own ``passes`` and the goal ``grid size x k + 1``;
    the same count on the test split, and the number of forward calls against the number expected;
(b) ``certify_run`` over one training epoch of the same run (`lora_dropout.runs.train.fit` on a freshly built
    model, timed just before and just after certify; the mean is the denominator): the whole command
    (rebuilding the run, parquet) and the posterior sampling alone, on the certified split and on both;
(c) per draw batch: `lora_dropout.certify.posterior.posterior_logits` (``k`` draws, per-example Gaussian
    perturbation) over `lora_dropout.method.ensemble.predict` with ``k`` members, on the same batch, alternated in
    rounds (ratio of medians): what the per-example perturbation (noise and per-row matmuls) costs; and
    `lora_dropout.certify.posterior.posterior_logits_over_grid` (what certify calls: masks and noise drawn once for
    the grid) over one `posterior_logits` call per grid point.

    python benchmarks/certify_cost.py [--n-train 32] [--draws 4] [--prior-fraction 0.5] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import torch

import lora_dropout.certify.measure as certify_mod
from bounds.runlog import DEFAULT_POSTERIOR_STD_GRID
from lora_dropout.certify.posterior import posterior_logits, posterior_logits_over_grid
from lora_dropout.method.ensemble import predict
from lora_dropout.method.objective import instance_chunks
from lora_dropout.runs.config import RunConfig
from lora_dropout.runs.run import train_run
from lora_dropout.runs.train import build_model, fit, prepare, steps_per_epoch


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def side_by_side(a, b, rounds, reps=3):
    """Median time of ``a`` over median time of ``b``, alternating a and b in every round."""
    a(), b()  # warm-up
    ta, tb = [], []
    for _ in range(rounds):
        for fn, into in ((a, ta), (b, tb)):
            times = []
            for _ in range(reps):
                t0 = time.perf_counter()
                fn()
                times.append(time.perf_counter() - t0)
            into.append(statistics.median(times))
    return statistics.median(ta) / statistics.median(tb), statistics.median(ta), statistics.median(tb)


class ForwardCounter:
    """Counts the model's forward calls and the rows (examples x draws) they process, per split."""

    def __init__(self):
        self.split = "other"
        self.calls: dict[str, int] = {}
        self.rows: dict[str, int] = {}
        self.data_sizes: dict[str, int] = {}
        self.sampling_s: dict[str, float] = {}

    def hook(self, module, args, kwargs):
        x = kwargs.get("input_ids", args[0] if args else None)
        self.calls[self.split] = self.calls.get(self.split, 0) + 1
        self.rows[self.split] = self.rows.get(self.split, 0) + int(x.shape[0])


def instrumented_certify(run_dir, counter: ForwardCounter, **kwargs):
    """`certify_run` with a forward pre-hook on the model it loads and its Monte Carlo step timed per split."""
    loaded_box = {}
    load_run, gibbs_risks = certify_mod.load_run, certify_mod.gibbs_risks

    def counting_load_run(*a, **kw):
        loaded = load_run(*a, **kw)
        loaded_box["hook"] = loaded.model.register_forward_pre_hook(counter.hook, with_kwargs=True)
        loaded_box["run"] = loaded
        return loaded

    def split_gibbs_risks(model, data, **kw):
        counter.split = "test" if data is loaded_box["run"].prepared.test else "certified"
        counter.data_sizes[counter.split] = len(data)
        t0 = time.perf_counter()
        try:
            return gibbs_risks(model, data, **kw)
        finally:
            counter.sampling_s[counter.split] = counter.sampling_s.get(counter.split, 0.0) + time.perf_counter() - t0
            counter.split = "other"

    certify_mod.load_run, certify_mod.gibbs_risks = counting_load_run, split_gibbs_risks
    try:
        seconds, result = timed(lambda: certify_mod.certify_run(run_dir, progress=False, **kwargs))
    finally:
        certify_mod.load_run, certify_mod.gibbs_risks = load_run, gibbs_risks
        if "hook" in loaded_box:
            loaded_box["hook"].remove()
    return seconds, result, loaded_box["run"]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n-train", type=int, default=32, help="training examples (and test examples)")
    parser.add_argument("--n-test", type=int, help="test examples (default: --n-train)")
    parser.add_argument("--draws", type=int, default=certify_mod.DEFAULT_POSTERIOR_DRAWS, help="k")
    parser.add_argument("--grid", type=float, nargs="+", default=list(DEFAULT_POSTERIOR_STD_GRID),
                        help="posterior_std grid (default: bounds.runlog.DEFAULT_POSTERIOR_STD_GRID)")
    parser.add_argument("--prior-fraction", type=float, default=0.0,
                        help="> 0: a trained prior, certified split = the certifiable examples")
    parser.add_argument("--sigma", type=float, default=0.01, help="posterior_std of the per-batch comparison")
    parser.add_argument("--draw-batch", type=int, default=16, help="examples in the per-batch comparison")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args(argv)
    n_test = args.n_test or args.n_train
    grid, k = tuple(args.grid), args.draws

    config = RunConfig().replace(train={"n_train": args.n_train, "n_test": n_test, "epochs": 1, "lr": 2e-3,
                                        "eval_train_size": args.n_train, "samples_every": 0,
                                        "eval_at_start": False, "prior_fraction": args.prior_fraction},
                                 lora_dropout={"dropout_rate": 0.3, "n_instances": 2})
    tc = config.train
    prepared = prepare(tc)
    n_steps = steps_per_epoch(len(prepared.train), tc.batch_size)

    def one_epoch():
        model, handle = build_model(config, 2, n_steps)
        seconds, _ = timed(lambda: fit(model, handle, prepared.train, tc))
        return seconds

    counter = ForwardCounter()
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = train_run(config, tmp, run_id="certify-cost", progress=False).run_dir  # also the warm-up
        epoch_before = one_epoch()
        certify_s, result, loaded = instrumented_certify(run_dir, counter, posterior_std_grid=grid,
                                                         posterior_draws=k)
    epoch_after = one_epoch()
    epoch_s = (epoch_before + epoch_after) / 2

    n_cert, n_te = counter.data_sizes["certified"], counter.data_sizes["test"]
    passes_cert = counter.rows.get("certified", 0) / n_cert
    passes_test = counter.rows.get("test", 0) / n_te
    goal = len(grid) * k + 1
    bs = loaded.config.train.eval_batch_size
    chunks = len(list(instance_chunks(k, loaded.handle.config.max_instances_per_forward)))
    expected_calls = len(grid) * (math.ceil(n_cert / bs) + math.ceil(n_te / bs)) * chunks
    counted_calls = sum(counter.calls.values())
    recorded = int(result.table["passes"].iloc[0])

    model = loaded.model
    certified = loaded.prepared.train.subset(
        [i for i, s in enumerate(loaded.prepared.train.sample_ids) if int(s) in set(result.certified_ids)])
    batch = certified.collate(range(min(args.draw_batch, len(certified))))
    perturbed = lambda: posterior_logits(model, batch, posterior_std=args.sigma, draws=k)  # noqa: E731
    ensemble = lambda: predict(model, batch, mode="ensemble", n_instances=k)  # noqa: E731
    per_batch, post_s, ens_s = side_by_side(perturbed, ensemble, args.rounds, reps=1)
    over_grid = lambda: posterior_logits_over_grid(model, batch, posterior_stds=grid, draws=k)  # noqa: E731
    one_by_one = lambda: [posterior_logits(model, batch, posterior_std=s, draws=k) for s in grid]  # noqa: E731
    grid_ratio, _, _ = side_by_side(over_grid, one_by_one, args.rounds, reps=1)

    def met(ok):
        return "met" if ok else "not met"

    rows = [
        ("passes over certified split (forward rows / n_bound)", f"{passes_cert:g}",
         f"<= grid x k + 1 = {len(grid)} x {k} + 1 = {goal}", met(passes_cert <= goal)),
        ("certify's recorded `passes`", f"{recorded}", f"= counted ({passes_cert:g})",
         met(recorded == passes_cert)),
        ("passes over test split (forward rows / n_test)", f"{passes_test:g}", "grid x k (test Gibbs error)", "-"),
        ("forward calls (all of certify)", f"{counted_calls}",
         f"= grid x (batches of both splits) x chunks = {expected_calls}",
         met(counted_calls == expected_calls and counter.calls.get("other", 0) == 0)),
        ("examples processed (rows, certified + test)", f"{sum(counter.rows.values())}",
         f"= grid x k x (n_bound + n_test) = {len(grid) * k * (n_cert + n_te)}",
         met(sum(counter.rows.values()) == len(grid) * k * (n_cert + n_te))),
        ("certify_run / one training epoch", f"{certify_s / epoch_s:.3g}", "ratio (whole command)", "-"),
        ("posterior sampling, certified split / one training epoch", f"{counter.sampling_s['certified'] / epoch_s:.3g}",
         f"ratio (Monte Carlo step on the {n_cert} certified examples)", "-"),
        ("posterior sampling, both splits / one training epoch", f"{sum(counter.sampling_s.values()) / epoch_s:.3g}",
         f"ratio (certified + {n_te} test examples)", "-"),
        (f"posterior_logits / ensemble predict, {k} draws, batch {batch['input_ids'].shape[0]}",
         f"{per_batch:.3g}", f"ratio of medians, sigma {args.sigma:g}, {args.rounds} rounds", "-"),
        (f"whole grid in one call / one call per posterior_std ({len(grid)} of them), same batch",
         f"{grid_ratio:.3g}", "< 1: the masks and noise are drawn once for the grid", met(grid_ratio < 1)),
    ]

    machine = (f"{platform.platform()} {platform.machine()}, {torch.get_num_threads()} threads, "
               f"torch {torch.__version__}")
    print(f"# certify_cost on {date.today()} | {machine}")
    print(f"# n_train {args.n_train}, n_bound {n_cert} ({result.prior} prior), n_test {n_te}, p 0.3, N 2, "
          f"grid {list(grid)}, k {k}, eval batch {bs} | one epoch = {epoch_s:.1f} s "
          f"({epoch_before:.1f} / {epoch_after:.1f}), certify_run = {certify_s:.1f} s "
          f"(sampling {sum(counter.sampling_s.values()):.1f} s), draw batch {post_s:.3f} s vs {ens_s:.3f} s")
    print("| measurement | value | goal | met? |")
    print("|---|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    if args.json:
        Path(args.json).write_text(json.dumps({
            "date": str(date.today()), "machine": machine, "args": vars(args), "epoch_s": epoch_s,
            "epoch_s_before_after": [epoch_before, epoch_after], "certify_s": certify_s,
            "sampling_s": counter.sampling_s, "forward_calls": counter.calls, "forward_rows": counter.rows,
            "n_bound": n_cert, "n_test": n_te, "recorded_passes": recorded, "expected_calls": expected_calls,
            "posterior_over_ensemble_per_batch": {"ratio": per_batch, "posterior_s": post_s, "ensemble_s": ens_s},
            "rows": [dict(zip(("measurement", "value", "goal", "met"), r, strict=True)) for r in rows]}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
