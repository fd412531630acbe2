"""``lora-dropout bounds RUN_DIR``: evaluate the paper's bounds on a run and write ``bounds.json``.

The argparse front end only: the arguments become a `bounds.settings.BoundSettings`, the reports come from
`bounds.report.evaluate_run` and the file from `bounds.report.write_bounds`. `register` adds the
subcommand to the toolkit's command line (``analysis.cli``); `main` runs it alone
(``main(["RUN_DIR", "--delta", "0.1"])``), for tests and scripts.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .estimators import LIPSCHITZ_QUANTITIES
from .formulas import Lemma43Form
from .report import evaluate_run, write_bounds
from .runlog import BoundPredictor, Hypothesis, RunLogError, Space
from .settings import BoundSettings, CertificateSettings

__all__ = ["add_arguments", "main", "register", "settings_of"]

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
    parser.add_argument("--space", choices=[s.value for s in Space], default="delta_w",
                        help="parameter space of the probes (default: delta_w)")
    parser.add_argument("--predictor", choices=[p.value for p in BoundPredictor], default=None,
                        help="predictor whose risks the bounds use (default: the hypothesis's own: full, the "
                             "unmasked model the probes measure, or deterministic at --hypothesis expected)")
    parser.add_argument("--hypothesis", choices=[h.value for h in Hypothesis], nargs="+", default=["unmasked"],
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


def settings_of(args: argparse.Namespace) -> BoundSettings:
    """The `BoundSettings` the parsed arguments give (ValueError naming a bad one)."""
    grid = getattr(args, "posterior_std_grid", None)
    return BoundSettings(
        delta=args.delta, lam=args.lam, loss_range=args.loss_range, lipschitz=args.lipschitz, space=args.space,
        predictor=args.predictor, form=args.form, stability_method=args.stability_method,
        hypothesis=tuple(getattr(args, "hypothesis", ["unmasked"])),
        certificate=None if grid is None else CertificateSettings(posterior_std_grid=tuple(grid)),
    )


def run(args: argparse.Namespace) -> int:
    """Evaluate, print, write ``bounds.json``; 2 with a message when the run cannot be read."""
    try:
        settings = settings_of(args)
        reports = evaluate_run(args.run_dir, settings)
    except (RunLogError, ValueError) as exc:
        print(f"lora-dropout bounds: {exc}", file=sys.stderr)
        return 2
    print("\n\n".join(str(r) for r in reports))
    target = write_bounds(args.run_dir, settings, reports)
    print(f"\nwrote {target}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """``lora-dropout bounds`` on its own: parse ``argv`` and run."""
    parser = argparse.ArgumentParser(prog="lora-dropout bounds", description=__doc__.splitlines()[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
