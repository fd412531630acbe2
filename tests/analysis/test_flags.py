"""Flags generated from the config dataclasses, and the exit codes of the command-line wrapper."""

import argparse

import pytest

from analysis.commands.common import (
    EXIT_BAD_INPUT,
    EXIT_FAILED,
    friendly,
    run_config_flags,
    run_config_from_args,
)


def _parse(*argv):
    parser = argparse.ArgumentParser()
    run_config_flags(parser)
    return parser.parse_args(list(argv))


def test_literal_words_beside_numbers_and_none_are_accepted():
    assert run_config_from_args(_parse("--n-train", "auto")).train.n_train == "auto"
    assert run_config_from_args(_parse("--n-train", "none")).train.n_train is None
    assert run_config_from_args(_parse("--n-train", "64")).train.n_train == 64
    with pytest.raises(SystemExit):
        _parse("--n-train", "lots")


@pytest.mark.parametrize(("flag", "good", "bad"), [("--task", "instruction", "regression"),
                                                   ("--method", "adalora", "lorax"),
                                                   ("--dtype", "bfloat16", "float8"),
                                                   ("--mask-scope", "token", "sequence")])
def test_fixed_vocabularies_are_choices(flag, good, bad, capsys):
    assert vars(_parse(flag, good))  # accepted
    with pytest.raises(SystemExit):
        _parse(flag, bad)
    assert "invalid choice" in capsys.readouterr().err


@pytest.mark.parametrize(("error", "code"), [(ValueError("bad value"), EXIT_BAD_INPUT),
                                             (FileNotFoundError("no such run"), EXIT_BAD_INPUT),
                                             (RuntimeError("CUDA out of memory"), EXIT_FAILED),
                                             (ModuleNotFoundError("ray"), EXIT_FAILED)])
def test_errors_end_with_one_line_and_their_exit_code(error, code, capsys):
    def command(args):
        raise error

    assert friendly(command)(argparse.Namespace(command="train")) == code
    err = capsys.readouterr().err
    assert err.startswith("lora-dropout train: ") and err.count("\n") == 1 and str(error) in err
    assert (EXIT_BAD_INPUT, EXIT_FAILED) == (2, 1)


@pytest.mark.parametrize(("interrupt", "code"), [(KeyboardInterrupt(), 130), ("sigterm", 143)])
def test_an_interrupted_certify_says_what_was_kept_and_exits_with_the_signal(interrupt, code, monkeypatch, capsys,
                                                                             tmp_path):
    import lora_dropout.certify.measure as certify_mod
    from analysis.cli import main
    from analysis.commands.common import Terminated

    def stopped(*args, **kwargs):
        raise Terminated("SIGTERM") if interrupt == "sigterm" else interrupt

    monkeypatch.setattr(certify_mod, "certify_run", stopped)
    assert main(["certify", str(tmp_path), "--quiet"]) == code
    err = capsys.readouterr().err
    assert "interrupted: every table finished before it was kept" in err and "the rest was not written" in err
