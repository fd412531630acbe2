"""Commands on single runs: ``train``, ``probe``, ``evaluate`` (another labelled file) and ``summary``.

Each ``add_<command>(sub)`` adds the command's parser; its ``cmd_<command>(args)`` runs it and imports its
heavy dependencies only then.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .common import (
    format_final,
    friendly,
    guarded,
    positive_int,
    quiet_libraries,
    run_config_flags,
    run_config_from_args,
)


def cmd_train(args: argparse.Namespace) -> int:
    from lora_dropout.runs.run import train_run

    quiet_libraries()
    try:
        config = run_config_from_args(args)
    except (ValueError, TypeError) as exc:
        print(f"lora-dropout train: invalid configuration: {exc}", file=sys.stderr)
        return 2
    result = guarded(lambda: train_run(config, args.out, run_id=args.run_id, progress=not args.quiet))
    if isinstance(result, int):
        return result
    print(f"run: {result.run_dir}")
    print(format_final(result.final))
    return 0


def cmd_probe(args: argparse.Namespace) -> int:
    from lora_dropout.probes.on_run import probe_run

    quiet_libraries()
    if not (args.curvature or args.stability_k):
        print("lora-dropout probe: nothing to do: pass --curvature and/or --stability-k K", file=sys.stderr)
        return 2
    result = guarded(lambda: probe_run(
        args.run_dir, curvature=args.curvature, spaces=tuple(args.spaces), stability_k=args.stability_k,
        methods=tuple(args.methods), lam=args.lam, probe_examples=args.probe_examples,
        lipschitz_examples=args.lipschitz_examples, tol=args.tol,
        warm_epochs=args.warm_epochs, seed=args.seed, device=args.device, progress=not args.quiet,
        hypothesis=args.hypothesis))
    if isinstance(result, int):
        return result
    for path in (result.probes, result.stability):
        if path is not None:
            print(f"wrote {path}")
    for method, reason in result.skipped.items():
        print(f"{method}: not estimated: {reason}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from lora_dropout.runs.evaluate_file import evaluate_file

    quiet_libraries()
    result = guarded(lambda: evaluate_file(args.run_dir, args.data, text_column=args.text_column,
                                           label_column=args.label_column, name=args.name, device=args.device,
                                           overwrite=args.overwrite),
                     "nothing was written (the run is unchanged)")
    if isinstance(result, int):
        return result
    print(f"evaluation: {result.out_dir} ({result.meta['source']['n']} examples, step {result.meta['step']})")
    print(format_final({f"{result.meta['name']}/{p}": m for p, m in result.meta["final"].items()}))
    return 0


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
        final = run.meta.final
        ens, det = final.get("test/ensemble", {}), final.get("test/deterministic", {})
        train = final.get("train/ensemble", {})
        gap = ens.get("risk", float("nan")) - train.get("risk", float("nan"))
        print(f"{run.run_id:<40} {run_state(run.meta):<8} {run.meta.dropout_rate:>5.2f} {run.meta.n_instances:>3} "
              f"{ens.get('accuracy', float('nan')):>10.4f} / {det.get('accuracy', float('nan')):<8.4f} "
              f"{ens.get('risk', float('nan')):>9.4f} {gap:>7.4f}")
    return code


def add_train(sub) -> None:
    """The ``train`` parser."""
    train = sub.add_parser("train", help="fine-tune one model with LoRA Dropout and write a run directory",
                           description="Fine-tune with LoRA Dropout (dropout-rate 0 and n-instances 1 is plain "
                                       "LoRA) and write a run directory under --out.")
    train.add_argument("--out", type=Path, default=Path("runs"), help="directory that receives the run")
    train.add_argument("--run-id", help="name of the run directory (default: <UTC time>-<config digest>)")
    train.add_argument("--quiet", action="store_true", help="no progress bar")
    run_config_flags(train)
    train.set_defaults(func=friendly(cmd_train))


def add_probe(sub) -> None:
    """The ``probe`` parser."""
    probe = sub.add_parser("probe", help="curvature, Lipschitz and leave-one-out stability of a finished run",
                           description="Measure a finished run's theta(S) and add probes.parquet and/or "
                                       "stability.parquet to its directory.")
    probe.add_argument("run_dir", type=Path, metavar="RUN_DIR")
    probe.add_argument("--curvature", action="store_true",
                       help="Lipschitz constants (vmap per-sample gradients), Hessian extremes (Lanczos) and "
                            "stationarity")
    probe.add_argument("--spaces", nargs="+", default=["delta_w"], choices=["delta_w", "factors"],
                       help="parameter spaces of the curvature probes (default: delta_w)")
    probe.add_argument("--stability-k", type=int, default=0, metavar="K",
                       help="leave-one-out indices to measure (default: 0 = none)")
    probe.add_argument("--methods", nargs="+", default=["retrain", "warm_start", "influence"],
                       choices=["retrain", "warm_start", "influence"], help="stability estimators")
    probe.add_argument("--lam", type=float, default=1.0, help="lambda of the regularised loss (default: 1.0)")
    probe.add_argument("--hypothesis", choices=["unmasked", "expected"], default="unmasked",
                       help="predictor the curvature probes measure: the unmasked model, or the expected "
                            "predictor (every dW times its training mean, (1-p)^2 without rescale), the mean "
                            "predictor of the masked loss training minimised; probes.parquet keeps the other "
                            "hypothesis's rows (default: unmasked)")
    probe.add_argument("--probe-examples", type=positive_int, default=128,
                       help="training examples the Hessian probes (Lanczos) and the influence Hessian use "
                            "(default: 128)")
    probe.add_argument("--lipschitz-examples", type=positive_int, default=None, metavar="K",
                       help="training examples the Lipschitz (eta) and stationarity probes use (default: all, "
                            "so eta is the max over every training example; a subset is labelled in the "
                            "bound reports)")
    probe.add_argument("--tol", type=float, default=1e-3, help="Lanczos tolerance (default: 1e-3)")
    probe.add_argument("--warm-epochs", type=int, default=1, help="epochs of a warm start (default: 1)")
    probe.add_argument("--seed", type=int, default=0, help="seed of the leave-one-out indices (default: 0)")
    probe.add_argument("--device", default=None, help="device (default: the run's)")
    probe.add_argument("--quiet", action="store_true", help="no progress bar")
    probe.set_defaults(func=friendly(cmd_probe))


def add_evaluate(sub) -> None:
    """The ``evaluate`` parser."""
    ev = sub.add_parser("evaluate", help="score a finished run's predictors on another labelled file",
                        description="Evaluate a finished run (its adapter and LoRA Dropout config) on a labelled "
                                    "CSV/TSV/JSONL file: per-sample, summary and calibration tables of every "
                                    "predictor go to RUN_DIR/evaluations/NAME/; the run's own record is not "
                                    "touched. Labels are matched to the run's labels by name.")
    ev.add_argument("run_dir", type=Path, metavar="RUN_DIR")
    ev.add_argument("--data", type=Path, required=True, metavar="FILE", help="labelled .csv/.tsv/.jsonl file")
    ev.add_argument("--text-column", help="text column of FILE (default: the run's)")
    ev.add_argument("--label-column", help="label column of FILE (default: the run's)")
    ev.add_argument("--name", help="name of the evaluation folder (default: FILE's stem)")
    ev.add_argument("--device", default=None, help="device (default: the run's)")
    ev.add_argument("--overwrite", action="store_true", help="replace an earlier evaluation of the same name")
    ev.set_defaults(func=friendly(cmd_evaluate))


def add_summary(sub) -> None:
    """The ``summary`` parser."""
    summary = sub.add_parser("summary", help="final test metrics of runs, side by side")
    summary.add_argument("runs", nargs="+", type=Path, help="run directories")
    summary.set_defaults(func=friendly(cmd_summary))
