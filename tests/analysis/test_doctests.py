"""The examples in the docstrings of `analysis` are tests (the modules are found by their ``>>>``)."""

from __future__ import annotations

import doctest
import importlib
from pathlib import Path

import pytest

import analysis

ANALYSIS_DIR = Path(analysis.__file__).parent
WITH_EXAMPLES = sorted(
    ".".join(p.relative_to(ANALYSIS_DIR).with_suffix("").parts) for p in ANALYSIS_DIR.rglob("*.py")
    if ">>>" in p.read_text(encoding="utf-8")
)


def test_the_summary_and_the_claims_have_examples():
    assert {"summary", "claims"} <= set(WITH_EXAMPLES)


@pytest.mark.parametrize("name", WITH_EXAMPLES)
def test_examples(name):
    module = importlib.import_module(f"analysis.{name}")
    result = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted and not result.failed, result
