"""Commands on studies: ``sweep`` (a grid of runs), ``collect`` (tidy tables) and ``reproduce`` (a named
profile's study, figures and report).

Each ``add_<command>(sub)`` adds the command's parser; its ``cmd_<command>(args)`` runs it and imports its
heavy dependencies only then.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..presets import PROFILES
from .common import friendly, guarded, positive_int, quiet_libraries, run_config_flags, run_config_from_args


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
    from ..spec import PostTraining, StudySpec
    from ..study import run_study

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
    result = guarded(lambda: run_study(spec, args.out, executor=args.executor, address=args.address))
    if isinstance(result, int):
        return result
    print(f"study: {result.study_dir}: {len(result.done)} run(s) done, {len(result.skipped)} already done, "
          f"{len(result.failed)} failed")
    for run_id, error in result.failed.items():
        print(f"  failed {run_id}: {error}")
    return 1 if result.failed else 0


def cmd_collect(args: argparse.Namespace) -> int:
    from ..collect import collect

    coll = collect(args.study_dir, delta=args.delta, lam=args.lam, loss_range=args.loss_range)
    out = coll.save(args.out or args.study_dir / "collected")
    print(f"collected {len(coll.runs)} run(s) into {out}; skipped {len(coll.skipped)}")
    for run, reason in coll.skipped:
        print(f"  skipped {run}: {reason}")
    return 0


def cmd_reproduce(args: argparse.Namespace) -> int:
    from ..reproduce import reproduce

    quiet_libraries()
    result = guarded(lambda: reproduce(args.profile, args.out, executor=args.executor, address=args.address,
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


def add_sweep(sub) -> None:
    """The ``sweep`` parser."""
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
    run_config_flags(sweep)
    sweep.set_defaults(func=friendly(cmd_sweep))


def add_collect(sub) -> None:
    """The ``collect`` parser."""
    coll = sub.add_parser("collect", help="collect a study's runs and bounds into tidy parquet tables")
    coll.add_argument("study_dir", type=Path)
    coll.add_argument("--out", type=Path, help="output directory (default: STUDY_DIR/collected)")
    coll.add_argument("--delta", type=float, default=0.05,
                      help="failure probability of the paper's bounds evaluated on each run (default: 0.05)")
    coll.add_argument("--lam", type=float, default=1.0,
                      help="regularisation strength lambda of the bounds (docs/bounds.md; default: 1.0)")
    coll.add_argument("--loss-range", type=float, default=None,
                      help="loss range C: clip the loss at C (rigorous); default: the observed range of per-sample "
                           "losses (heuristic, labelled so)")
    coll.set_defaults(func=friendly(cmd_collect))


def add_reproduce(sub) -> None:
    """The ``reproduce`` parser."""
    rep = sub.add_parser("reproduce", help="the study over p and N, probes, bounds, figures and report.md",
                         description="Run (or resume) a profile's study and write figures and report.md.")
    rep.add_argument("--profile", choices=PROFILES, default="quick")
    rep.add_argument("--out", type=Path, required=True)
    rep.add_argument("--executor", choices=["local", "ray"], default="local")
    rep.add_argument("--address", help="Ray cluster address")
    rep.add_argument("--model", help="model name or path (paper profile: e.g. microsoft/deberta-v3-base)")
    rep.add_argument("--data", help="data (paper profile: e.g. hf:<GLUE task saved with save_to_disk>)")
    rep.add_argument("--n-seeds", type=positive_int, dest="seeds", metavar="N",
                     help="run seeds 0 .. N-1 (default: the profile's; sweep's --seeds lists the seeds themselves)")
    rep.add_argument("--figures-dir", type=Path, help="where figures go (default: OUT/figures)")
    rep.set_defaults(func=friendly(cmd_reproduce))
