#!/usr/bin/env bash
# One prepared check of the toolkit on a CUDA machine; everything it produces goes to one folder.
#
#   benchmarks/gpu_check.sh [OUT_DIR]        (default: $OUT, else ./gpu-check)
#
# Stages, each logged to OUT_DIR/<stage>.log and marked PASS/FAIL with its wall time in summary.txt:
#   nvidia-smi    the device and driver
#   pytest-gpu    the tests marked `gpu` (bf16 on CUDA against float32 on the CPU, batched == looped)
#   train         bf16 LoRA Dropout on the embedded default, 4000 examples x 2 epochs = 250 steps
#   loss-check    the training loss fell and steps.jsonl holds no NaN or infinity
#   step-time     benchmarks/step_time.py in bf16 on CUDA (ratios; also step_time.json)
# The run directory is archived as run.tar.gz, so the folder holds eight files in all.
#
# Without a usable CUDA device it stops at once with exit status 1. Any failed stage makes the final
# exit status 1 after the later stages have still run (one device session should report everything).
# PYTHON selects the interpreter (default: python on PATH).
set -euo pipefail

out="${1:-${OUT:-./gpu-check}}"
mkdir -p "$out"
out="$(cd "$out" && pwd)"
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PY="${PYTHON:-python}"
summary="$out/summary.txt"
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export PYTHONUNBUFFERED=1
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

die() {
    echo "gpu_check: FATAL: $*" | tee -a "$summary" >&2
    exit 1
}

failed=()

# stage NAME COMMAND...: run COMMAND with its output in NAME.log; record PASS/FAIL and seconds.
stage() {
    local name=$1 start=$SECONDS rc=0
    shift
    echo "gpu_check: $name ..." >&2
    "$@" >"$out/$name.log" 2>&1 || rc=$?
    if ((rc == 0)); then
        echo "PASS  $name  $((SECONDS - start)) s" >>"$summary"
    else
        echo "FAIL  $name  $((SECONDS - start)) s  (exit $rc, log $name.log)" >>"$summary"
        echo "gpu_check: $name FAILED (exit $rc); last lines of $out/$name.log:" >&2
        tail -n 30 "$out/$name.log" >&2
        failed+=("$name")
    fi
}

{
    echo "gpu_check $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    commit="$(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
    echo "commit $commit$(git diff --quiet 2>/dev/null || echo ' (dirty)')"
} >"$summary"

command -v nvidia-smi >/dev/null || die "nvidia-smi not found: this check needs a machine with an NVIDIA GPU"
stage nvidia-smi nvidia-smi
[[ ${#failed[@]} -eq 0 ]] || die "nvidia-smi failed: no working NVIDIA driver"
"$PY" - >>"$summary" 2>&1 <<'EOF' || die "torch cannot use CUDA (see summary.txt)"
import sys
import torch
if not torch.cuda.is_available():
    sys.exit(f"torch {torch.__version__} (CUDA build: {torch.version.cuda}) sees no CUDA device")
print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, {torch.cuda.get_device_name(0)}, "
      f"bf16 supported: {torch.cuda.is_bf16_supported()}")
EOF

stage pytest-gpu "$PY" -m pytest -m gpu -q -rs tests

if command -v lora-dropout >/dev/null; then
    cli=(lora-dropout)
else
    cli=("$PY" -m analysis.cli)
fi
stage train "${cli[@]}" train --device cuda --dtype bfloat16 --n-train 4000 --epochs 2 --batch-size 32 \
    --dropout-rate 0.3 --n-instances 4 --out "$work" --run-id bf16 --quiet

stage loss-check "$PY" - "$work/bf16" <<'EOF'
"""Training loss fell, and no NaN or infinity anywhere in steps.jsonl."""
import json
import math
import sys
from pathlib import Path

rows = [json.loads(line) for line in (Path(sys.argv[1]) / "steps.jsonl").read_text().splitlines() if line]
bad = [(r["step"], r["split"], r["predictor"], k) for r in rows for k, v in r.items()
       if isinstance(v, float) and not math.isfinite(v)]
assert not bad, f"non-finite values in steps.jsonl: {bad[:5]}"
objective = [(r["step"], r["objective"]) for r in rows if r["objective"] is not None]
objective = sorted(dict(objective).items())
assert len(objective) >= 2, f"need two evaluations after training steps, got {objective}"
assert objective[-1][1] < objective[0][1], f"the Eq. 7 training loss did not fall: {objective}"
risk = {(r["step"], r["predictor"]): r["risk"] for r in rows if r["split"] == "train"}
first, last = min(s for s, _ in risk), max(s for s, _ in risk)
for predictor in ("deterministic", "ensemble"):
    before, after = risk[first, predictor], risk[last, predictor]
    assert after < before, f"train risk of the {predictor} predictor did not fall: {before} -> {after}"
test = {r["predictor"]: r["accuracy"] for r in rows if r["split"] == "test" and r["step"] == last}
print(f"objective by step {objective}; train risk (ensemble) {risk[first, 'ensemble']:.4f} -> "
      f"{risk[last, 'ensemble']:.4f}; test accuracy at step {last}: {test}")
EOF
if [[ -d "$work/bf16" ]]; then
    tar -czf "$out/run.tar.gz" -C "$work" bf16
fi

stage step-time "$PY" benchmarks/step_time.py --device cuda --dtype bfloat16 --json "$out/step_time.json"

{
    echo
    echo "-- pytest -m gpu"
    tail -n 5 "$out/pytest-gpu.log"
    echo "-- loss check"
    cat "$out/loss-check.log"
    echo "-- step time (ratios, bf16 on CUDA)"
    cat "$out/step-time.log"
} >>"$summary" 2>&1

if ((${#failed[@]})); then
    echo "gpu_check: FAILED stages: ${failed[*]} (summary: $summary)" >&2
    exit 1
fi
echo "gpu_check: all stages passed (summary: $summary)" >&2
