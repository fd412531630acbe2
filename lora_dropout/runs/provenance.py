"""Where a result came from: git commit and dirty flag of the toolkit, package versions, time."""

from __future__ import annotations

import platform
import subprocess
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

#: Packages whose versions are recorded with every run and figure.
PACKAGES = ("torch", "transformers", "peft", "numpy", "scipy", "pandas", "pyarrow", "lora-dropout-toolkit")

ROOT = Path(__file__).resolve().parents[1]


def git_info(path: Path = ROOT) -> dict:
    """``{"commit": sha or None, "dirty": bool or None}`` for the checkout holding ``path``.

    Dirty means tracked files differ from the commit (untracked outputs such as run directories do
    not count). Outside a git checkout (an installed wheel) both are None.
    """
    try:
        commit = subprocess.run(["git", "-C", str(path), "rev-parse", "HEAD"], capture_output=True, text=True,
                                check=True, timeout=10).stdout.strip()
        status = subprocess.run(["git", "-C", str(path), "status", "--porcelain", "--untracked-files=no"],
                                capture_output=True, text=True, check=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}
    return {"commit": commit, "dirty": bool(status.strip())}


def versions() -> dict:
    out = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
