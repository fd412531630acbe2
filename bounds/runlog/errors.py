"""The errors of reading a run directory."""

from __future__ import annotations

from pathlib import Path

from .schema import TABLES


class RunLogError(ValueError):
    """A run directory that does not satisfy the schema; the message lists every problem found."""


class MissingTableError(RunLogError):
    """A table a computation needs is absent; the message says which command produces it."""

    def __init__(self, name: str, run_dir: Path):
        spec = TABLES[name]
        self.table = name
        super().__init__(
            f"run {run_dir} has no {spec.filename} ({spec.description}); produce it with: "
            f"{spec.producer.replace('RUN_DIR', str(run_dir))}"
        )
