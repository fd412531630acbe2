"""``lora-dropout``: the command line of the toolkit.

Subcommands import their heavy dependencies only when they run, so ``--help`` is instant. The commands
live by group in `analysis.commands` (runs, studies, certify); ``bounds`` is `bounds.cli`'s.
"""

from __future__ import annotations

import argparse
import os
import sys

from bounds.cli import register as register_bounds

from .commands import certify, runs, studies

# Offline by default: the embedded model and data need no network; a user who names a hub model
# can set HF_HUB_OFFLINE=0.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lora-dropout", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    # in the order --help lists them
    runs.add_train(sub)
    runs.add_probe(sub)
    runs.add_evaluate(sub)
    studies.add_sweep(sub)
    studies.add_collect(sub)
    studies.add_reproduce(sub)
    certify.add_certify(sub)
    register_bounds(sub)  # ``lora-dropout bounds``: the bound reports, bounds.cli's own command
    runs.add_summary(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    import matplotlib

    matplotlib.use("Agg")  # the command line writes figures to files; no screen is needed or opened
    parser = build_parser()
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
