"""``lora-dropout``: the command line of the toolkit.

Subcommands import their heavy dependencies only when they run, so ``--help`` is instant.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path

from .flags import add_dataclass_flags, dataclass_kwargs

# Offline by default: the embedded model and data need no network; a user who names a hub model
# can set HF_HUB_OFFLINE=0.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def _run_config_flags(parser: argparse.ArgumentParser) -> None:
    from lora_dropout.method.config import LoraDropoutConfig
    from lora_dropout.runs.config import AdapterConfig, TrainConfig

    add_dataclass_flags(parser, TrainConfig, "train")
    add_dataclass_flags(parser, AdapterConfig, "adapter")
    # the mask seed is derived from --seed (lora_dropout.runs.config.derive_seed), so it has no flag of its own
    add_dataclass_flags(parser, LoraDropoutConfig, "lora_dropout", skip=("seed",))


def run_config_from_args(args: argparse.Namespace):
    from lora_dropout.runs.config import RunConfig

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
    from lora_dropout.runs.run import train_run

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


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {text}")
    return value


def _friendly(command):
    """Bad input ends with one line naming what was wrong (exit 2), not a traceback; set
    LORA_DROPOUT_DEBUG=1 to see the traceback."""

    def run(args: argparse.Namespace) -> int:
        try:
            return command(args)
        except (ValueError, FileNotFoundError, ModuleNotFoundError, RuntimeError) as exc:
            if os.environ.get("LORA_DROPOUT_DEBUG"):
                raise
            print(f"lora-dropout {args.command}: {type(exc).__name__}: {exc}", file=sys.stderr)
            return 2

    return run


class Terminated(KeyboardInterrupt):
    """SIGTERM (a scheduler's pre-emption, ``kill``) raised as an interrupt, so runs end as after Ctrl-C."""


def _terminate(signum, frame):
    raise Terminated(signal.Signals(signum).name)


def _guarded(fn):
    """Run ``fn``; on Ctrl-C or SIGTERM say where the (failed, readable) run is and exit 128 + signal."""
    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        return fn()
    except KeyboardInterrupt as exc:
        print("\ninterrupted: the run is marked failed (interrupted); everything written so far is readable",
              file=sys.stderr)
        return 128 + (signal.SIGTERM if isinstance(exc, Terminated) else signal.SIGINT)
    finally:
        signal.signal(signal.SIGTERM, previous)


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


def cmd_probe(args: argparse.Namespace) -> int:
    from lora_dropout.probes.on_run import probe_run

    quiet_libraries()
    if not (args.curvature or args.stability_k):
        print("lora-dropout probe: nothing to do: pass --curvature and/or --stability-k K", file=sys.stderr)
        return 2
    result = _guarded(lambda: probe_run(
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
    try:
        result = evaluate_file(args.run_dir, args.data, text_column=args.text_column, label_column=args.label_column,
                               name=args.name, device=args.device, overwrite=args.overwrite)
    except KeyboardInterrupt:
        print("\ninterrupted: nothing was written (the run is unchanged)", file=sys.stderr)
        return 130
    print(f"evaluation: {result.out_dir} ({result.meta['source']['n']} examples, step {result.meta['step']})")
    print(_format_final({f"{result.meta['name']}/{p}": m for p, m in result.meta["final"].items()}))
    return 0


def _grid_value(text: str):
    low = text.lower()
    if low in ("none", "null"):
        return None
    if low in ("true", "false"):
        return low == "true"
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def parse_grid(items: list[str]) -> dict[str, list]:
    """``["dropout_rate=0,0.1", "n_instances=1,4"]`` -> ``{"dropout_rate": [0, 0.1], "n_instances": [1, 4]}``."""
    grid = {}
    for item in items:
        key, sep, values = item.partition("=")
        if not sep or not values:
            raise ValueError(f"--grid {item!r} must look like field=v1,v2,...")
        grid[key.strip()] = [_grid_value(v.strip()) for v in values.split(",")]
    return grid


def cmd_sweep(args: argparse.Namespace) -> int:
    from .study import PostTraining, StudySpec, run_study

    quiet_libraries()
    try:
        base = run_config_from_args(args)
        grid = parse_grid(args.grid)
        if args.seeds:
            grid["seed"] = args.seeds
        spec = StudySpec(name=args.out.name, base=base, grid=grid,
                         post=PostTraining(curvature=args.curvature, stability_k=args.stability_k))
        spec.expand()  # validates the grid keys before any work
    except (ValueError, TypeError) as exc:
        print(f"lora-dropout sweep: {exc}", file=sys.stderr)
        return 2
    result = _guarded(lambda: run_study(spec, args.out, executor=args.executor, address=args.address))
    if isinstance(result, int):
        return result
    print(f"study: {result.study_dir}: {len(result.done)} run(s) done, {len(result.skipped)} already done, "
          f"{len(result.failed)} failed")
    for run_id, error in result.failed.items():
        print(f"  failed {run_id}: {error}")
    return 1 if result.failed else 0


def cmd_collect(args: argparse.Namespace) -> int:
    from .collect import collect

    coll = collect(args.study_dir, delta=args.delta, lam=args.lam, loss_range=args.loss_range)
    out = coll.save(args.out or args.study_dir / "collected")
    print(f"collected {len(coll.runs)} run(s) into {out}; skipped {len(coll.skipped)}")
    for run, reason in coll.skipped:
        print(f"  skipped {run}: {reason}")
    return 0


def cmd_reproduce(args: argparse.Namespace) -> int:
    from .reproduce import reproduce

    quiet_libraries()
    result = _guarded(lambda: reproduce(args.profile, args.out, executor=args.executor, address=args.address,
                                        model=args.model, data=args.data, seeds=args.seeds,
                                        figures_dir=args.figures_dir))
    if isinstance(result, int):
        return result
    print(f"report: {result.report}")
    print(f"figures: {len(result.figures)} in {result.figures[0].parent if result.figures else '-'}")
    for claim in result.claims:
        print(f"  [{claim.verdict.value:>13}] {claim.statement}")
    for run_id, error in result.failed.items():
        print(f"  failed run {run_id}: {error}")
    print(f"wall time: {result.wall_s / 60:.1f} minutes")
    return 1 if result.failed else 0


def _format_certificates(table, reports) -> str:
    """One line per posterior_std (KL, empirical Gibbs error, its Monte Carlo upper value, certificate,
    measured test Gibbs error, ensemble bound), then the best of each report."""
    lines = [f"  {'posterior_std':>13} {'KL':>11} {'gibbs_err':>9} {'MC upper':>9} {'certificate':>11} "
             f"{'test_err':>8} {'lin_cert':>8} {'ens_0-1':>7}"]
    for r in table.itertuples():
        lines.append(f"  {r.posterior_std:>13.6g} {r.kl:>11.5g} {r.train_gibbs_error:>9.4f} {r.gibbs_upper:>9.4f} "
                     f"{r.certificate:>11.4f}{'*' if r.vacuous else ' '}{r.test_gibbs_error:>8.4f} "
                     f"{r.linear_certificate:>8.4f} {r.ensemble_zero_one:>7.4f}")
    lines.append("  (* vacuous: certificate >= 1)")
    for report in reports:
        sigma = {q.name: q.value for q in report.inputs}.get("posterior_std", float("nan"))
        lines.append(f"best {report.name} [{report.status}]: {report.value:.4f} at posterior_std={sigma:g}; "
                     f"measured {report.measured_name} = {report.measured:.4f}")
        failing = [a.name for a in report.assumptions if a.holds is False]
        if failing:
            lines.append(f"  audit FAILS: {', '.join(failing)} (see bounds.json)")
    return "\n".join(lines)


def cmd_certify(args: argparse.Namespace) -> int:
    from bounds.certificate_report import certificate_reports, certificate_table, write_certificate_entries
    from bounds.runlog import DEFAULT_POSTERIOR_STD_GRID
    from lora_dropout.probes.certify import certify_run

    quiet_libraries()
    grid = tuple(args.posterior_std_grid or DEFAULT_POSTERIOR_STD_GRID)
    try:
        result = certify_run(args.run_dir, posterior_std_grid=grid, posterior_draws=args.posterior_draws,
                             delta=args.delta, delta_mc=args.delta_mc, prior=args.prior, batch_size=args.batch_size,
                             seed=args.seed, device=args.device, progress=not args.quiet)
    except KeyboardInterrupt:
        print("\ninterrupted: nothing was written (the run is unchanged)", file=sys.stderr)
        return 130
    reports = certificate_reports(args.run_dir, posterior_std_grid=grid)
    row = result.table.iloc[0]
    print(f"certify {reports[0].run_id}: prior={result.prior}, n_b={int(row.n_bound)}, k={int(row.draws)}, "
          f"n_test={int(row.n_test)}, delta={row.delta:g} + delta_mc={row.delta_mc:g} over {len(grid)} "
          f"posterior_std, {result.passes} passes (grid x k) over the certified and test splits")
    print(_format_certificates(certificate_table(result.table), reports))
    settings = {"posterior_std_grid": list(grid), "posterior_draws": args.posterior_draws, "delta": args.delta,
                "delta_mc": args.delta_mc, "prior": result.prior, "seed": int(row.seed)}
    target = write_certificate_entries(args.run_dir, reports, settings)
    print(f"wrote {result.path}\nwrote {target}")
    return 0


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
    train.set_defaults(func=_friendly(cmd_train))

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
    probe.add_argument("--probe-examples", type=_positive_int, default=128,
                       help="training examples the Hessian probes (Lanczos) and the influence Hessian use "
                            "(default: 128)")
    probe.add_argument("--lipschitz-examples", type=_positive_int, default=None, metavar="K",
                       help="training examples the Lipschitz (eta) and stationarity probes use (default: all, "
                            "so eta is the max over every training example; a subset is labelled in the "
                            "bound reports)")
    probe.add_argument("--tol", type=float, default=1e-3, help="Lanczos tolerance (default: 1e-3)")
    probe.add_argument("--warm-epochs", type=int, default=1, help="epochs of a warm start (default: 1)")
    probe.add_argument("--seed", type=int, default=0, help="seed of the leave-one-out indices (default: 0)")
    probe.add_argument("--device", default=None, help="device (default: the run's)")
    probe.add_argument("--quiet", action="store_true", help="no progress bar")
    probe.set_defaults(func=_friendly(cmd_probe))

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
    ev.set_defaults(func=_friendly(cmd_evaluate))

    sweep = sub.add_parser("sweep", help="a grid of runs over config fields (resumable)",
                           description="Run a grid of configurations into a study directory; re-running skips "
                                       "finished runs and redoes failed or interrupted ones.")
    sweep.add_argument("--grid", action="append", default=[], metavar="FIELD=V1,V2",
                       help="a config field and its values, e.g. dropout_rate=0,0.1,0.3 (repeatable)")
    sweep.add_argument("--seeds", nargs="+", type=int, help="seeds (adds a seed axis)")
    sweep.add_argument("--out", type=Path, required=True, help="study directory")
    sweep.add_argument("--executor", choices=["local", "ray"], default="local")
    sweep.add_argument("--address", help="Ray cluster address (default: start a local Ray instance)")
    sweep.add_argument("--curvature", action="store_true", help="curvature probes after each run")
    sweep.add_argument("--stability-k", type=int, default=0, help="leave-one-out indices per run")
    _run_config_flags(sweep)
    sweep.set_defaults(func=_friendly(cmd_sweep))

    coll = sub.add_parser("collect", help="collect a study's runs and bounds into tidy parquet tables")
    coll.add_argument("study_dir", type=Path)
    coll.add_argument("--out", type=Path, help="output directory (default: STUDY_DIR/collected)")
    coll.add_argument("--delta", type=float, default=0.05)
    coll.add_argument("--lam", type=float, default=1.0)
    coll.add_argument("--loss-range", type=float, default=None)
    coll.set_defaults(func=_friendly(cmd_collect))

    rep = sub.add_parser("reproduce", help="the study over p and N, probes, bounds, figures and report.md",
                         description="Run (or resume) a profile's study and write figures and report.md.")
    rep.add_argument("--profile", choices=["quick", "full", "paper", "lm", "certify"], default="quick")
    rep.add_argument("--out", type=Path, required=True)
    rep.add_argument("--executor", choices=["local", "ray"], default="local")
    rep.add_argument("--address", help="Ray cluster address")
    rep.add_argument("--model", help="model name or path (paper profile: e.g. microsoft/deberta-v3-base)")
    rep.add_argument("--data", help="data (paper profile: e.g. hf:<GLUE task saved with save_to_disk>)")
    rep.add_argument("--seeds", type=int, help="number of seeds (default: the profile's)")
    rep.add_argument("--figures-dir", type=Path, help="where figures go (default: OUT/figures)")
    rep.set_defaults(func=_friendly(cmd_reproduce))

    cert = sub.add_parser("certify", help="PAC-Bayes dropout certificate of a finished run (toolkit's own)",
                          description="Measure the PAC-Bayes dropout certificate (theory.md section 6) of a finished "
                                      "run against its prior (RUN_DIR/prior/): KL and empirical Gibbs errors per "
                                      "posterior_std, written to certificates.parquet; the certificates go into "
                                      "bounds.json.")
    cert.add_argument("run_dir", type=Path, metavar="RUN_DIR")
    cert.add_argument("--posterior-std-grid", type=float, nargs="+", default=None, metavar="SIGMA",
                      help="posterior_std values, fixed before looking at the data (default: 0.001 0.003 0.01 "
                           "0.03 0.1)")
    cert.add_argument("--posterior-draws", type=_positive_int, default=4, metavar="K",
                      help="posterior draws per example (default: 4)")
    cert.add_argument("--delta", type=float, default=0.05, help="PAC-Bayes failure probability (default: 0.05)")
    cert.add_argument("--delta-mc", type=float, default=0.01,
                      help="Monte Carlo failure probability (default: 0.01)")
    cert.add_argument("--prior", choices=["init", "trained"], default=None,
                      help="prior mean: the seeded initialisation or the prior trained on the first prior_fraction "
                           "of the data (default: trained if present, else init)")
    cert.add_argument("--batch-size", type=_positive_int, default=None,
                      help="examples per forward pass before tiling by K (default: the run's eval batch size)")
    cert.add_argument("--seed", type=int, default=None,
                      help="root of the posterior noise (default: the run's mask seed)")
    cert.add_argument("--device", default=None, help="device (default: the run's)")
    cert.add_argument("--quiet", action="store_true", help="no progress bar")
    cert.set_defaults(func=_friendly(cmd_certify))

    from bounds.cli import register as register_bounds

    register_bounds(sub)

    summary = sub.add_parser("summary", help="final test metrics of runs, side by side")
    summary.add_argument("runs", nargs="+", type=Path, help="run directories")
    summary.set_defaults(func=_friendly(cmd_summary))
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
