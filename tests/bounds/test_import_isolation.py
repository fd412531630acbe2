"""`bounds` never imports torch, `lora_dropout` or `analysis`, and `import bounds` alone stays light."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import bounds

BOUNDS_DIR = Path(bounds.__file__).parent
#: Every module of the package, sub-packages included (``runlog``, ``runlog.io``, ...).
MODULES = sorted(
    ".".join(p.relative_to(BOUNDS_DIR).with_suffix("").parts[:-1] if p.stem == "__init__" else
             p.relative_to(BOUNDS_DIR).with_suffix("").parts)
    for p in BOUNDS_DIR.rglob("*.py") if p.parent != BOUNDS_DIR or p.stem != "__init__"
)
ALLOWED_THIRD_PARTY = {"numpy", "scipy", "pandas", "pyarrow"}


def _fresh(code: str) -> dict:
    """Run ``code`` in a fresh interpreter; it prints a JSON object."""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=BOUNDS_DIR.parent)
    return json.loads(out.stdout)


def test_every_module_and_export_imports_without_torch():
    code = (
        "import importlib, json, sys, bounds\n"
        f"for m in {MODULES!r}: importlib.import_module('bounds.' + m)\n"
        "for name in bounds.__all__: getattr(bounds, name)\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in "
        "('torch', 'transformers', 'peft', 'lora_dropout', 'analysis', 'matplotlib'))))\n"
    )
    assert _fresh(code) == []
    assert {"estimators", "report", "compression", "curves", "cli", "formulas", "runlog"} <= set(MODULES)


def test_import_bounds_alone_loads_nothing_heavy():
    code = "import json, sys, bounds; print(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))"
    loaded = set(_fresh(code))
    assert not loaded & {"pandas", "scipy", "numpy", "torch"}


def test_exports_resolve_and_unknown_names_raise():
    assert bounds.evaluate_run.__module__.startswith("bounds.report")
    assert bounds.sparsity(0.5) == 0.75
    assert "evaluate_run" in dir(bounds)
    try:
        bounds.no_such_name  # noqa: B018
    except AttributeError as exc:
        assert "no_such_name" in str(exc)
    else:
        raise AssertionError("unknown attribute did not raise")


def test_source_imports_only_the_allowed_packages():
    allowed = ALLOWED_THIRD_PARTY | set(sys.stdlib_module_names) | {"bounds"}
    for path in BOUNDS_DIR.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module]
            else:
                continue
            for name in names:
                assert name.split(".")[0] in allowed, f"{path.name} imports {name}"
