"""``lora-dropout bounds RUN_DIR``: evaluate the paper's bounds on a run and write ``bounds.json``.

`register` adds the subcommand to the toolkit's command line (``analysis.cli``); `main` runs it
alone (``main(["RUN_DIR", "--delta", "0.1"])``), for tests and scripts.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from .estimators import LIPSCHITZ_QUANTITIES, SPACES
from .formulas import Lemma43Form
from .report import BoundReport, evaluate_run
from .runlog import BOUND_PREDICTORS, HYPOTHESES, SCHEMA_VERSION, RunLogError, write_json

__all__ = ["add_arguments", "bounds_document", "main", "register"]

HELP = "evaluate the paper's bounds on a run, print them, and write RUN_DIR/bounds.json"


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The arguments of ``lora-dropout bounds``."""
    parser.add_argument("run_dir", type=Path, metavar="RUN_DIR", help="run directory")
    parser.add_argument("--delta", type=float, default=0.05, help="failure probability (default: 0.05)")
    parser.add_argument("--lam", type=float, default=1.0,
                        help="regularisation strength lambda (default: 1.0)")
    parser.add_argument("--loss-range", type=_positive_float, default=None, metavar="C",
                        help="clip every loss at C (rigorous); default: the observed maximum loss "
                             "(heuristic)")
    parser.add_argument("--lipschitz", choices=tuple(LIPSCHITZ_QUANTITIES), default="max",
                        help="Lipschitz estimate: max or 99%% quantile of per-sample gradient norms "
                             "(default: max)")
    parser.add_argument("--space", choices=SPACES, default="delta_w",
                        help="parameter space of the probes (default: delta_w)")
    parser.add_argument("--predictor", choices=BOUND_PREDICTORS, default=None,
                        help="predictor whose risks the bounds use (default: the hypothesis's own: full, the "
                             "unmasked model the probes measure, or deterministic at --hypothesis expected)")
    parser.add_argument("--hypothesis", choices=HYPOTHESES, nargs="+", default=["unmasked"],
                        help="the predictor whose probes and risks the bounds use: unmasked (every report) and/or "
                             "expected (every dW times its training mean; prop42[expected] and "
                             "theorem44[expected], from `lora-dropout probe RUN_DIR --curvature --hypothesis "
                             "expected`); several: each one's reports (default: unmasked)")
    parser.add_argument("--form", choices=[f.value for f in Lemma43Form], default="printed",
                        help="constant of Lemma 4.3 (default: printed)")
    parser.add_argument("--stability-method", default=None,
                        help="leave-one-out method for Lemma 4.3 and B&E Thm 12 (default: retrain, else "
                             "warm_start, else influence)")
    parser.add_argument("--posterior-std-grid", type=_positive_float, nargs="+", default=None, metavar="SIGMA",
                        help="the posterior_std grid `lora-dropout certify` was given, checked against "
                             "certificates.parquet (default: the default grid)")


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the ``bounds`` subcommand to a parser's subcommands; it runs via ``args.func(args)``."""
    parser = subparsers.add_parser("bounds", help=HELP, description=__doc__.splitlines()[0])
    add_arguments(parser)
    parser.set_defaults(func=run)
    return parser


def bounds_document(reports: list[BoundReport], settings: dict[str, Any]) -> dict[str, Any]:
    """The content of ``bounds.json``: schema version, run id, the settings, every report's dict."""
    return {
        "schema_version": SCHEMA_VERSION,
        "run_id": reports[0].run_id,
        "settings": settings,
        "reports": [r.to_dict() for r in reports],
    }


def run(args: argparse.Namespace) -> int:
    """Evaluate, print, write ``bounds.json``; 2 with a message when the run cannot be read."""
    settings = {"delta": args.delta, "lam": args.lam, "loss_range": args.loss_range,
                "lipschitz": args.lipschitz, "space": args.space, "predictor": args.predictor,
                "form": args.form, "stability_method": args.stability_method,
                "hypothesis": list(getattr(args, "hypothesis", ["unmasked"]))}
    if getattr(args, "posterior_std_grid", None) is not None:
        settings["posterior_std_grid"] = args.posterior_std_grid
    try:
        reports = evaluate_run(args.run_dir, **settings)
    except (RunLogError, ValueError) as exc:
        print(f"lora-dropout bounds: {exc}", file=sys.stderr)
        return 2
    print("\n\n".join(str(r) for r in reports))
    target = args.run_dir / "bounds.json"
    write_json(target, bounds_document(reports, settings))
    print(f"\nwrote {target}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """``lora-dropout bounds`` on its own: parse ``argv`` and run."""
    parser = argparse.ArgumentParser(prog="lora-dropout bounds", description=__doc__.splitlines()[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
