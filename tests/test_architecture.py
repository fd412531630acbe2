"""The import rules of docs/architecture.md (README "Architecture"), checked on the source.

Every ``import``/``from ... import`` in the three packages is read with ``ast`` (including imports inside
functions: a lazy import is still a dependency), resolved to a project module where it names one, and
checked against the layering:

- ``lora_dropout.method`` imports no other part of the project;
- ``bounds`` never imports torch, transformers, peft or matplotlib, nor ``lora_dropout``/``analysis``;
- ``lora_dropout`` never imports ``analysis`` or matplotlib, and from ``bounds`` only the run-log schema
  (``bounds.runlog``);
- the sub-packages of ``lora_dropout`` follow method <- tasks <- runs <- (probes | certify), probes and certify
  importing neither other;
- no import cycle between project modules.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("lora_dropout", "bounds", "analysis")
# lora_dropout's layers, lowest first: a layer may import only layers below it and itself; probes (the paper's
# quantities) and certify (the toolkit's own certificate) stand side by side above runs and import neither other.
LAYERS = ("method", "tasks", "runs", "probes", "certify")
LEVEL = {"method": 0, "tasks": 1, "runs": 2, "probes": 3, "certify": 3}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))}


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imported_names(path: Path, module: str) -> set[str]:
    """Dotted names imported by ``path`` (relative imports resolved; ``from a import b`` gives ``a.b`` when
    that is a module of the project, else ``a``); imports under ``if TYPE_CHECKING:`` are left out."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    names: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base_parts = package.split(".")
                base_parts = base_parts[: len(base_parts) - (node.level - 1)]
                base = ".".join(base_parts + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            for alias in node.names:
                full = f"{base}.{alias.name}"
                names.add(full if full in MODULES else base)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return names


IMPORTS = {name: _imported_names(path, name) for name, path in MODULES.items()}


def _project_target(name: str) -> str | None:
    """The project module an imported dotted name refers to (the longest known prefix), or None."""
    parts = name.split(".")
    for k in range(len(parts), 0, -1):
        candidate = ".".join(parts[:k])
        if candidate in MODULES:
            return candidate
    return None


def _violations(source_prefix: str, forbidden) -> list[str]:
    return sorted(f"{mod} imports {name}" for mod, names in IMPORTS.items()
                  if mod == source_prefix or mod.startswith(source_prefix + ".")
                  for name in names if forbidden(name))


def _top(name: str) -> str:
    return name.split(".")[0]


def test_the_source_was_read():
    # guards the checks below against passing vacuously on an empty or mis-rooted scan
    assert {"lora_dropout.method.apply", "bounds.runlog", "analysis.cli"} <= set(MODULES)
    assert "torch" in IMPORTS["lora_dropout.method.apply"]
    assert any(name.startswith("lora_dropout.") for name in IMPORTS["analysis.pipeline"])


def test_method_imports_no_other_part_of_the_project():
    assert _violations("lora_dropout.method", lambda n: _top(n) in PACKAGES and not (
        n == "lora_dropout.method" or n.startswith("lora_dropout.method."))) == []


@pytest.mark.parametrize("heavy", ["torch", "transformers", "peft", "matplotlib", "lora_dropout", "analysis"])
def test_bounds_never_imports(heavy):
    assert _violations("bounds", lambda n: _top(n) == heavy) == []


def test_lora_dropout_imports_no_analysis_nor_matplotlib_and_only_the_bounds_schema():
    def forbidden(n: str) -> bool:
        if _top(n) in ("analysis", "matplotlib"):
            return True
        return _top(n) == "bounds" and not (n == "bounds.runlog" or n.startswith("bounds.runlog."))

    assert _violations("lora_dropout", forbidden) == []


def test_lora_dropout_layers_import_only_downwards():
    bad = []
    for mod, names in IMPORTS.items():
        parts = mod.split(".")
        if parts[0] != "lora_dropout" or len(parts) < 3 or parts[1] not in LAYERS:
            continue
        level = LEVEL[parts[1]]
        for name in names:
            target = _project_target(name)
            if target and target.startswith("lora_dropout.") and target.split(".")[1] in LAYERS:
                layer = target.split(".")[1]
                if LEVEL[layer] > level or (LEVEL[layer] == level and layer != parts[1]):
                    bad.append(f"{mod} imports {target}")
    assert bad == []


def _cycles() -> list[list[str]]:
    graph = {mod: sorted({t for n in names if (t := _project_target(n)) and t != mod})
             for mod, names in IMPORTS.items()}
    # Tarjan's strongly connected components: a component with more than one module is a cycle.
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in graph:
        if v not in index:
            connect(v)
    return found


def test_no_import_cycles():
    # A package __init__ that re-exports its own sub-modules is not a cycle with them: the edge
    # sub-module -> package happens only through relative imports of siblings, which resolve to the
    # sibling module itself above, never to the package.
    assert _cycles() == []


def test_the_checks_can_fail(monkeypatch):
    # the cycle finder and the layer checks see a planted violation (so the tests above are not vacuous)
    monkeypatch.setitem(IMPORTS, "lora_dropout.method.apply", IMPORTS["lora_dropout.method.apply"] | {
        "lora_dropout.certify.measure", "bounds.formulas"})
    monkeypatch.setitem(IMPORTS, "lora_dropout.certify.measure", IMPORTS["lora_dropout.certify.measure"] | {
        "lora_dropout.method.apply"})
    assert any("lora_dropout.method.apply" in c for c in _cycles())
    with pytest.raises(AssertionError):
        test_method_imports_no_other_part_of_the_project()
    with pytest.raises(AssertionError):
        test_lora_dropout_layers_import_only_downwards()
    with pytest.raises(AssertionError):
        test_lora_dropout_imports_no_analysis_nor_matplotlib_and_only_the_bounds_schema()
