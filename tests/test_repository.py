"""The repository as a fresh clone sees it: no source folder ignored by git, every package a regular package,
and documentation references that resolve inside the repository."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCE_ROOTS = ("lora_dropout", "bounds", "analysis", "tests", "benchmarks", "notebooks", "docs")


def _git(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True, check=False)


@pytest.mark.skipif(shutil.which("git") is None or _git("rev-parse").returncode != 0,
                    reason="needs a git checkout")
def test_no_source_folder_is_ignored_by_git():
    folders = sorted({p.parent for root in SOURCE_ROOTS for p in (ROOT / root).rglob("*")
                      if p.suffix in (".py", ".md") and "__pycache__" not in p.parts and ".venv" not in p.parts})
    probes = [str((folder / "probe_file.py").relative_to(ROOT)) for folder in folders]
    ignored = _git("check-ignore", "--no-index", *probes).stdout.split()
    assert not ignored, f"git would ignore new files in {ignored}: anchor the .gitignore rule"
    # and the rule the check relies on still catches the outputs it is meant for
    assert _git("check-ignore", "--no-index", "runs/x.py", "demo-out/x.py").stdout.split() == ["runs/x.py",
                                                                                            "demo-out/x.py"]


def test_every_package_folder_is_a_regular_package():
    for package in ("lora_dropout", "bounds", "analysis"):
        for folder in [ROOT / package, *(p for p in (ROOT / package).rglob("*") if p.is_dir())]:
            if folder.name == "__pycache__" or not any(folder.glob("*.py")):
                continue
            assert (folder / "__init__.py").is_file(), f"{folder} has modules but no __init__.py"


def test_documentation_references_resolve_inside_the_repository():
    """Code, --help texts, notebooks and the README cite docs/ (or the paper), never a file a user lacks."""
    outside = re.compile(r"\b(theory|design)\.md\b")
    cited = re.compile(r"docs/([\w./-]+\.md)")
    offenders, missing = [], []
    files = [ROOT / "README.md", *(p for root in SOURCE_ROOTS for p in (ROOT / root).rglob("*")
                                   if p.suffix in (".py", ".md") and "__pycache__" not in p.parts)]
    for path in files:
        if path == Path(__file__):
            continue
        text = path.read_text(encoding="utf-8")
        offenders += [f"{path.relative_to(ROOT)}" for _ in outside.findall(text)][:1]
        missing += [f"{path.relative_to(ROOT)} -> docs/{m}" for m in cited.findall(text)
                    if not (ROOT / "docs" / m).is_file()]
    assert not missing, missing
    assert not offenders, f"{len(offenders)} files cite a file outside the repository: {offenders[:10]}"
