"""``lora-dropout``: the command line of the toolkit.

Subcommands import their heavy dependencies only when they run, so ``--help`` is instant.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from .flags import add_dataclass_flags, dataclass_kwargs

# Offline by default: the embedded model and data need no network; a user who names a hub model
# can set HF_HUB_OFFLINE=0.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def _run_config_flags(parser: argparse.ArgumentParser) -> None:
    from lora_dropout.config import LoraDropoutConfig
    from lora_dropout.runconfig import AdapterConfig, TrainConfig

    add_dataclass_flags(parser, TrainConfig, "train")
    add_dataclass_flags(parser, AdapterConfig, "adapter")
    # the mask seed is derived from --seed (lora_dropout.runconfig.derive_seed), so it has no flag of its own
    add_dataclass_flags(parser, LoraDropoutConfig, "lora_dropout", skip=("seed",))


def run_config_from_args(args: argparse.Namespace):
    from lora_dropout.runconfig import RunConfig

    return RunConfig.from_dict({section: dataclass_kwargs(args, section)
                                for section in ("train", "adapter", "lora_dropout")})


def _format_final(final: dict) -> str:
    lines = [f"  {'split/predictor':<24} {'risk':>8} {'accuracy':>9} {'ece':>7}"]
    for key in sorted(final):
        m = final[key]
        lines.append(f"  {key:<24} {m['risk']:>8.4f} {m['accuracy']:>9.4f} {m['ece']:>7.4f}")
    return "\n".join(lines)


def quiet_libraries() -> None:
    """Keep the terminal for our progress bars: transformers' load reports (the new classification head
    is reported as missing, as expected) and its weight-loading bars, and a peft deprecation warning."""
    import warnings

    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)


def cmd_train(args: argparse.Namespace) -> int:
    from lora_dropout.run import train_run

    quiet_libraries()
    try:
        config = run_config_from_args(args)
    except (ValueError, TypeError) as exc:
        print(f"lora-dropout train: invalid configuration: {exc}", file=sys.stderr)
        return 2
    result = _guarded(lambda: train_run(config, args.out, run_id=args.run_id, progress=not args.quiet))
    if isinstance(result, int):
        return result
    print(f"run: {result.run_dir}")
    print(_format_final(result.final))
    return 0


def _guarded(fn):
    """Run ``fn``; on Ctrl-C say where the (failed, readable) run is and exit 130."""
    try:
        return fn()
    except KeyboardInterrupt:
        print("\ninterrupted: the run is marked failed (interrupted); everything written so far is readable",
              file=sys.stderr)
        return 130


def cmd_summary(args: argparse.Namespace) -> int:
    from bounds.runlog import RunLogError, read_run, run_state

    header = f"{'run':<40} {'status':<8} {'p':>5} {'N':>3} {'test acc (ens / det)':>21} {'test risk':>9} {'gap':>7}"
    print(header)
    code = 0
    for run_dir in args.runs:
        try:
            run = read_run(run_dir)
        except RunLogError as exc:
            print(f"{str(run_dir):<40} unreadable: {exc}")
            code = 1
            continue
        ld = run.config["lora_dropout"]
        final = run.meta.get("final") or {}
        ens, det = final.get("test/ensemble", {}), final.get("test/deterministic", {})
        train = final.get("train/ensemble", {})
        gap = ens.get("risk", float("nan")) - train.get("risk", float("nan"))
        print(f"{run.run_id:<40} {run_state(run.meta):<8} {ld['dropout_rate']:>5.2f} {ld['n_instances']:>3} "
              f"{ens.get('accuracy', float('nan')):>10.4f} / {det.get('accuracy', float('nan')):<8.4f} "
              f"{ens.get('risk', float('nan')):>9.4f} {gap:>7.4f}")
    return code


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lora-dropout", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser("train", help="fine-tune one model with LoRA Dropout and write a run directory",
                           description="Fine-tune with LoRA Dropout (dropout-rate 0 and n-instances 1 is plain "
                                       "LoRA) and write a run directory under --out.")
    train.add_argument("--out", type=Path, default=Path("runs"), help="directory that receives the run")
    train.add_argument("--run-id", help="name of the run directory (default: <UTC time>-<config digest>)")
    train.add_argument("--quiet", action="store_true", help="no progress bar")
    _run_config_flags(train)
    train.set_defaults(func=cmd_train)

    summary = sub.add_parser("summary", help="final test metrics of runs, side by side")
    summary.add_argument("runs", nargs="+", type=Path, help="run directories")
    summary.set_defaults(func=cmd_summary)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
