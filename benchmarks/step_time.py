"""Step time and memory of LoRA Dropout against peft's LoRA, measured side by side in one process.

Prints ratios, never absolute timings as pass/fail (machines are noisy). Each measurement alternates
the two contenders in rounds and reports the ratio of medians. On MiniLM (the embedded default),
batch 32 of real Rotten Tomatoes snippets, r = 8 on query/value:

(a) LoRA Dropout step at N = 1 / peft LoRA step with ``lora_dropout = p``  (goal <= 1.05)
(b) batched N = 4 step / (4 x the N = 1 step)                               (goal <= 1.0)
(c) looped N = 4 step / batched N = 4 step
(d) 8-member ensemble prediction / (8 x a single prediction)                (goal <= 1.0)
(e) peak activation memory of N = 4 / N = 1 (storages autograd holds for backward; CUDA peak on GPU),
    and of N = 4 chunked one instance per pass / N = 1

    python benchmarks/step_time.py [--device cuda] [--dtype bfloat16] [--rounds 7] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from datetime import date

import torch

from lora_dropout import LoraDropoutConfig, apply_lora_dropout, predict
from lora_dropout.method.objective import looped_n_instance_loss, n_instance_backward
from lora_dropout.runs.models import AdapterConfig, load_classifier, load_tokenizer, make_peft_model
from lora_dropout.tasks.data import load_rotten_tomatoes


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def _median_time(fn, device, reps):
    times = []
    for _ in range(reps):
        _sync(device)
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def side_by_side(a, b, device, rounds, reps=3):
    """Median time of ``a`` over median time of ``b``, alternating a and b in every round."""
    a(), b()  # warm-up
    ta, tb = [], []
    for _ in range(rounds):
        ta.append(_median_time(a, device, reps))
        tb.append(_median_time(b, device, reps))
    return statistics.median(ta) / statistics.median(tb), statistics.median(ta), statistics.median(tb)


class _Saved:
    """A tensor saved for backward; tells the meter when autograd lets go of it."""

    def __init__(self, tensor, meter, ptr):
        self.tensor, self.meter, self.ptr = tensor, meter, ptr

    def __del__(self):
        self.meter.release(self.ptr)


class ActivationMeter:
    """Peak bytes of distinct storages that autograd holds for backward, parameters excluded.

    Device-independent (works on CPU, where there is no allocator statistic): the activation memory
    that N-instance tiling multiplies and ``max_instances_per_forward`` bounds.
    """

    def __init__(self, model):
        self.params = {p.untyped_storage().data_ptr() for p in model.parameters()}
        self.live: dict[int, list] = {}  # storage pointer -> [bytes, references]
        self.current = self.peak = 0

    def pack(self, tensor):
        ptr = tensor.untyped_storage().data_ptr()
        if ptr in self.params:
            return tensor
        if ptr not in self.live:
            self.live[ptr] = [tensor.untyped_storage().nbytes(), 0]
            self.current += self.live[ptr][0]
            self.peak = max(self.peak, self.current)
        self.live[ptr][1] += 1
        return _Saved(tensor, self, ptr)

    def release(self, ptr):
        entry = self.live[ptr]
        entry[1] -= 1
        if entry[1] == 0:
            self.current -= entry[0]
            del self.live[ptr]

    @staticmethod
    def unpack(saved):
        return saved.tensor if isinstance(saved, _Saved) else saved


def peak_activation_bytes(model, fn):
    meter = ActivationMeter(model)
    with torch.autograd.graph.saved_tensors_hooks(meter.pack, meter.unpack):
        fn()
    return meter.peak


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--dropout-rate", type=float, default=0.3)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype)

    data = load_rotten_tomatoes(seed=0, n_train=args.batch_size)
    tok = load_tokenizer()
    enc = tok(list(data.train.text), padding="max_length", truncation=True, max_length=args.max_length,
              return_tensors="pt")
    batch = {"input_ids": enc["input_ids"].to(device), "attention_mask": enc["attention_mask"].to(device),
             "labels": torch.tensor(data.train.label.to_numpy(), device=device)}

    def model(peft_dropout):
        base = load_classifier(num_labels=2, seed=0, base_dropout=0.0, dtype=dtype)
        return make_peft_model(base, AdapterConfig(peft_lora_dropout=peft_dropout)).to(device).train()

    peft_lora = model(args.dropout_rate)
    ours = model(0.0)
    handle = apply_lora_dropout(ours, LoraDropoutConfig(dropout_rate=args.dropout_rate, n_instances=1))
    opt_a = torch.optim.AdamW([p for p in peft_lora.parameters() if p.requires_grad], lr=1e-5)
    opt_b = torch.optim.AdamW([p for p in ours.parameters() if p.requires_grad], lr=1e-5)

    def peft_step():
        opt_a.zero_grad()
        peft_lora(**batch).loss.backward()
        opt_a.step()

    def ours_step(n, cap=None):
        def step():
            opt_b.zero_grad()
            n_instance_backward(ours, batch, n_instances=n, max_instances_per_forward=cap)
            opt_b.step()
        return step

    def looped_step(n):
        def step():
            opt_b.zero_grad()
            looped_n_instance_loss(ours, batch, n_instances=n).loss.backward()
            opt_b.step()
        return step

    one = lambda: predict(ours, batch, mode="ensemble", n_instances=1)  # noqa: E731
    eight = lambda: predict(ours, batch, mode="ensemble", n_instances=8)  # noqa: E731

    results = {}
    results["a_n1_over_peft"] = side_by_side(ours_step(1), peft_step, device, args.rounds)
    four_x = lambda: [ours_step(1)() for _ in range(4)]  # noqa: E731
    results["b_n4_over_4x_n1"] = side_by_side(ours_step(4), four_x, device, args.rounds)
    results["c_looped_over_batched_n4"] = side_by_side(looped_step(4), ours_step(4), device, args.rounds)
    eight_x = lambda: [one() for _ in range(8)]  # noqa: E731
    results["d_ensemble8_over_8x_single"] = side_by_side(eight, eight_x, device, args.rounds)
    m4 = peak_activation_bytes(ours, lambda: n_instance_backward(ours, batch, n_instances=4))
    m1 = peak_activation_bytes(ours, lambda: n_instance_backward(ours, batch, n_instances=1))
    m4c = peak_activation_bytes(
        ours, lambda: n_instance_backward(ours, batch, n_instances=4, max_instances_per_forward=1)
    )
    results["e_activation_memory_n4_over_n1"] = (m4 / m1, m4, m1)
    results["e_chunked_n4_cap1_over_n1"] = (m4c / m1, m4c, m1)
    if device.type == "cuda":
        peaks = {}
        for n in (1, 4):
            torch.cuda.reset_peak_memory_stats()
            ours_step(n)()
            peaks[n] = torch.cuda.max_memory_allocated()
        results["e_cuda_peak_n4_over_n1"] = (peaks[4] / peaks[1], peaks[4], peaks[1])
    handle.remove()

    machine = f"{platform.machine()} {torch.get_num_threads()} threads, torch {torch.__version__}"
    if device.type == "cuda":
        machine = f"{torch.cuda.get_device_name()} ({args.dtype}), torch {torch.__version__}"
    print(f"# step_time on {date.today()} | {machine} | batch {args.batch_size} x {args.max_length} tokens, "
          f"p = {args.dropout_rate}")
    print("| measurement | ratio | numerator | denominator |")
    print("|---|---|---|---|")
    for key, (ratio, num, den) in results.items():
        unit = "B" if key.startswith("e_") else "s"
        print(f"| {key} | {ratio:.3f} | {num:.4g} {unit} | {den:.4g} {unit} |")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"date": str(date.today()), "machine": machine, "args": vars(args),
                       "results": {k: {"ratio": r, "numerator": a, "denominator": b}
                                   for k, (r, a, b) in results.items()}}, fh, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
