"""Writes one run directory in the schema of `bounds.runlog` (the only writer of a run).

- ``meta.json`` is replaced atomically (temporary file and rename) at every change of state: it says
  ``running`` until the end, then ``success``, or ``failed`` with the error (``interrupted`` for
  Ctrl-C), so a reader never sees a half-written file and always knows whether a run finished.
- ``steps.jsonl`` lines are appended and flushed as each evaluation ends.
- Other files (``prior/``: tensors as safetensors, JSON) are written atomically by `save_tensors` and
  `save_json`, at paths relative to the run directory.
- Parquet tables accumulate in memory and are rewritten atomically after each evaluation: an
  interrupted run keeps every table as of its last evaluation. (The per-sample table grows with
  evaluations x examples x members, and is rewritten whole each time; at the sizes of the profiles,
  thousands to a few hundred thousand rows, that costs well under a second.)
"""

from __future__ import annotations

import json
import os
import socket
import time
import traceback
from pathlib import Path
from typing import Any

import pandas as pd

from bounds.runlog import SCHEMA_VERSION, TABLES, jsonable, write_atomic, write_json

from .provenance import git_info, utc_now, versions


def write_table(run_dir: str | os.PathLike, table: str, frame: pd.DataFrame) -> Path:
    """Write (replace) one parquet table of a run atomically, in the schema's column order.

    Also how probes and stability measurements are added to a finished run.
    """
    spec = TABLES[table]
    missing = [c for c in spec.column_names if c not in frame.columns]
    if missing:
        raise ValueError(f"rows for {spec.filename} lack column(s) {missing}")
    return write_atomic(Path(run_dir) / spec.filename, lambda tmp: frame[spec.column_names].to_parquet(tmp, index=False))


class RunWriter:
    """Context manager around a run: marks it failed on any exception (and re-raises it)."""

    def __init__(self, run_dir: str | os.PathLike, *, run_id: str, config: dict, seeds: dict, data: dict,
                 device: str, prior: dict | None = None):
        self.dir = Path(run_dir)
        if (self.dir / "meta.json").exists():
            raise FileExistsError(f"{self.dir} already holds a run; choose another run id or remove it")
        self.dir.mkdir(parents=True, exist_ok=True)
        self._t0 = time.monotonic()
        self._frames: dict[str, list[pd.DataFrame]] = {}
        self.meta: dict[str, Any] = {
            "schema_version": SCHEMA_VERSION, "run_id": run_id, "status": "running", "error": None,
            "config": config, "seeds": seeds, "versions": versions(), "git": git_info(), "device": device,
            "host": socket.gethostname(), "pid": os.getpid(),
            "started_at": utc_now(), "finished_at": None, "wall_s": None, "data": data, "prior": prior,
            "final": {},
        }
        self._write_meta()

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self._t0

    def _write_meta(self) -> None:
        write_json(self.dir / "meta.json", self.meta)

    def append_steps(self, rows: list[dict]) -> None:
        columns = TABLES["steps"].column_names
        with open(self.dir / TABLES["steps"].filename, "a") as fh:
            for row in rows:
                fh.write(json.dumps(jsonable({c: row.get(c) for c in columns})) + "\n")
            fh.flush()
            os.fsync(fh.fileno())

    def add_rows(self, table: str, frame: pd.DataFrame) -> None:
        """Queue rows for a parquet table; written by the next `flush_tables`."""
        spec = TABLES[table]
        missing = [c for c in spec.column_names if c not in frame.columns]
        if missing:
            raise ValueError(f"rows for {spec.filename} lack column(s) {missing}")
        self._frames.setdefault(table, []).append(frame[spec.column_names])

    def flush_tables(self) -> None:
        for table, frames in self._frames.items():
            frame = pd.concat(frames, ignore_index=True)
            self._frames[table] = [frame]
            write_table(self.dir, table, frame)

    def _file(self, relpath: str) -> Path:
        path = self.dir / relpath
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    def save_tensors(self, relpath: str, tensors: dict) -> Path:
        """Write torch tensors (name -> tensor) as a safetensors file ``relpath``, atomically."""
        from safetensors.torch import save_file

        tensors = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
        return write_atomic(self._file(relpath), lambda tmp: save_file(tensors, str(tmp)))

    def save_json(self, relpath: str, data: Any) -> Path:
        """Write strict JSON to ``relpath`` (`bounds.runlog.write_json`: atomic)."""
        return write_json(self._file(relpath), data)

    def set_final(self, final: dict) -> None:
        self.meta["final"] = final
        self._write_meta()

    def _finish(self, status: str, error: str | None) -> None:
        self.meta.update(status=status, error=error, finished_at=utc_now(), wall_s=round(self.elapsed, 3))
        self._write_meta()

    def __enter__(self) -> RunWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc_type is None:
            self.flush_tables()
            self._finish("success", None)
        elif issubclass(exc_type, KeyboardInterrupt):
            try:
                self.flush_tables()
            finally:
                self._finish("failed", f"interrupted ({exc_type.__name__})")
        else:
            try:
                self.flush_tables()
            finally:
                detail = "".join(traceback.format_exception_only(exc_type, exc)).strip()
                self._finish("failed", detail)
        return False  # re-raise
