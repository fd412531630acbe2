"""The worked examples in the docstrings of `bounds` are tests: every module that has one runs here.

The modules are discovered from the sources (any ``>>>``, sub-packages included), so a new module's
examples cannot be left out; the modules of `bounds.formulas` carry the golden values of docs/bounds.md and
must be among them.
"""

from __future__ import annotations

import doctest
import importlib
from pathlib import Path

import pytest

import bounds

BOUNDS_DIR = Path(bounds.__file__).parent
WITH_EXAMPLES = sorted(
    ".".join(p.relative_to(BOUNDS_DIR).with_suffix("").parts) for p in BOUNDS_DIR.rglob("*.py")
    if ">>>" in p.read_text(encoding="utf-8")
)


def test_the_formulas_are_among_the_modules_with_examples():
    assert {"formulas.stability", "formulas.risk", "formulas.ensemble", "formulas.estimates", "formulas.kl",
            "formulas.pacbayes"} <= set(WITH_EXAMPLES)


@pytest.mark.parametrize("name", WITH_EXAMPLES)
def test_docstring_examples_pass(name):
    module = importlib.import_module(f"bounds.{name}")
    result = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE, verbose=False, report=False)
    assert result.attempted > 0, f"bounds.{name} has '>>>' but doctest found no example"
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples in bounds.{name} failed"
