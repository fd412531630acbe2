"""What every subcommand of ``lora-dropout`` shares: the run-configuration flags, argument types, quiet
libraries, and the wrappers that turn bad input and interrupts into one line and an exit code."""

from __future__ import annotations

import argparse
import os
import signal
import sys

from lora_dropout.method.validation import check_count

from ..flags import add_dataclass_flags, dataclass_kwargs


def run_config_flags(parser: argparse.ArgumentParser) -> None:
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


def format_final(final: dict) -> str:
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


def positive_int(text: str) -> int:
    """An argparse type: an integer >= 1 (`check_count`'s rule and message)."""
    value = int(text)
    try:
        check_count("value", value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return value


#: Exit codes: a value the command cannot accept (a bad option, a path that is not there) is a usage error, as
#: argparse's own (2); a failure while running (a missing package, a runtime error) is 1.
EXIT_BAD_INPUT, EXIT_FAILED = 2, 1


def friendly(command):
    """Bad input or a failure ends with one line naming what was wrong, not a traceback: exit 2 for a value the
    command cannot accept (ValueError, FileNotFoundError), 1 for a failure while running; set
    LORA_DROPOUT_DEBUG=1 to see the traceback."""

    def run(args: argparse.Namespace) -> int:
        try:
            return command(args)
        except (ValueError, FileNotFoundError, ModuleNotFoundError, RuntimeError) as exc:
            if os.environ.get("LORA_DROPOUT_DEBUG"):
                raise
            print(f"lora-dropout {args.command}: {type(exc).__name__}: {exc}", file=sys.stderr)
            return EXIT_BAD_INPUT if isinstance(exc, (ValueError, FileNotFoundError)) else EXIT_FAILED

    return run


class Terminated(KeyboardInterrupt):
    """SIGTERM (a scheduler's pre-emption, ``kill``) raised as an interrupt, so runs end as after Ctrl-C."""


def _terminate(signum, frame):
    raise Terminated(signal.Signals(signum).name)


INTERRUPTED_RUN = "the run is marked failed (interrupted); everything written so far is readable"


def guarded(fn, interrupted: str = INTERRUPTED_RUN):
    """Run ``fn``; on Ctrl-C or SIGTERM print ``interrupted`` (what was kept) and return 128 + the signal (130,
    143), the one interrupt handler of every command."""
    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        return fn()
    except KeyboardInterrupt as exc:
        print(f"\ninterrupted: {interrupted}", file=sys.stderr)
        return 128 + (signal.SIGTERM if isinstance(exc, Terminated) else signal.SIGINT)
    finally:
        signal.signal(signal.SIGTERM, previous)
