"""Reading, checking and writing a run directory against its schema (`bounds.runlog.schema`).

`read_run` reads a directory (meta and steps now, parquet tables on demand), `validate_run` checks it
and lists every problem found, `write_atomic` / `write_json` write files so a reader never sees a
half-written one. Needs only the standard library, numpy, pandas and pyarrow.
"""

from __future__ import annotations

import json
import math
import os
import socket
import tempfile
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .enums import Predictor, Split, Status
from .errors import MissingTableError, RunLogError
from .meta import RunMeta, meta_problems, read_json_object, read_meta
from .schema import CERTIFY_LOG, LEARNED_DIR, PRIOR_DIR, TABLES, Table


@dataclass
class RunLog:
    """A run directory read through the schema. Tables are read on first access."""

    path: Path
    meta: RunMeta
    steps: pd.DataFrame
    _tables: dict[str, pd.DataFrame] = field(default_factory=dict, repr=False)

    @property
    def run_id(self) -> str:
        return self.meta.run_id

    def has(self, name: str) -> bool:
        return (self.path / TABLES[name].filename).is_file()

    def table(self, name: str) -> pd.DataFrame:
        """A parquet table; a missing one raises `MissingTableError` naming its producer command."""
        if name == "steps":
            return self.steps
        if name not in self._tables:
            self._tables[name] = _read_table(self.path, name)
        return self._tables[name]


def _read_table(run_dir: Path, name: str) -> pd.DataFrame:
    spec = TABLES[name]
    path = run_dir / spec.filename
    if not path.is_file():
        raise MissingTableError(name, run_dir)
    frame = pd.read_parquet(path)
    for col in spec.columns:
        if col.default is not None and col.name not in frame.columns:
            frame[col.name] = col.default  # written before the column existed
    return frame


def run_state(meta: RunMeta | Mapping[str, Any]) -> str:
    """``success``, ``failed``, ``running``, or ``stale``: marked running, but its writer process on this
    host is gone (killed without a chance to mark the run failed, e.g. SIGKILL or a power loss).

    Takes the `RunMeta` of a read run or the plain ``meta.json`` dict (`read_meta`, the writer's form).
    """
    if isinstance(meta, RunMeta):
        status, host, pid = meta.status.value, meta.host, meta.pid
    else:
        status, host, pid = meta.get("status"), meta.get("host"), meta.get("pid")
    if status != Status.RUNNING:
        return status
    if host == socket.gethostname() and isinstance(pid, int):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return "stale"
        except PermissionError:
            pass  # alive, owned by someone else
    return "running"


def read_steps(run_dir: str | Path) -> pd.DataFrame:
    """``steps.jsonl`` as a DataFrame; a torn last line (a crash mid-write) is dropped, others must parse."""
    path = Path(run_dir) / TABLES["steps"].filename
    columns = TABLES["steps"].column_names
    if not path.is_file():
        return pd.DataFrame(columns=columns)
    rows = []
    lines = path.read_text().splitlines()
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            if number == len(lines):
                break  # the writer was killed while appending this line
            raise RunLogError(f"{path} line {number} is not valid JSON") from None
    return pd.DataFrame(rows, columns=columns) if rows else pd.DataFrame(columns=columns)


def read_run(run_dir: str | Path) -> RunLog:
    """Read a run directory (meta and steps now, parquet tables on demand).

    Checks only ``meta.json`` (`RunMeta.from_dict`); `validate_run` checks the tables too.
    """
    run_dir = Path(run_dir)
    meta = RunMeta.from_dict(read_meta(run_dir), source=run_dir / "meta.json")
    return RunLog(run_dir, meta, read_steps(run_dir))


def check_table(spec: Table, frame: pd.DataFrame) -> list[str]:
    """Problems of a table against its spec: columns, missing and non-finite values, types, duplicate keys."""
    problems = []
    missing = [c for c in spec.column_names if c not in frame.columns]
    if missing:
        return [f"{spec.filename}: missing column(s) {missing}"]
    for col in spec.columns:
        values = frame[col.name]
        if not col.nullable and values.isna().any():
            problems.append(f"{spec.filename}: column {col.name} has {int(values.isna().sum())} missing values")
        if col.finite:
            numeric = pd.to_numeric(values, errors="coerce").to_numpy(dtype=float)
            bad = ~np.isfinite(numeric)
            if bad.any():
                problems.append(f"{spec.filename}: column {col.name} has {int(bad.sum())} non-finite values")
        if col.kind == "bool" and not pd.api.types.is_bool_dtype(values):
            present = values.dropna()
            flags = present.map(lambda v: isinstance(v, (bool, np.bool_)))
            if not flags.all():
                problems.append(f"{spec.filename}: column {col.name} must be boolean, got "
                                f"{present[~flags].head(3).tolist()}")
    if len(frame) and frame.duplicated(list(spec.key)).any():
        dup = frame[frame.duplicated(list(spec.key), keep=False)].head(1)[list(spec.key)].to_dict("records")[0]
        problems.append(f"{spec.filename}: duplicate key {spec.key} = {dup}")
    return problems


def _check_grid_table(table: str, frame: pd.DataFrame, grid_column: str, constant: tuple[str, ...]) -> list[str]:
    """Ranges of a certificate table (one row per grid point): risks and p in [0, 1], grid values and counts > 0,
    ``constant`` columns one value for the whole grid, ``grid_size`` rows."""
    name = TABLES[table].filename
    problems = []
    for col in ("train_gibbs_error", "train_gibbs_linear", "test_gibbs_error", "test_gibbs_linear", "p"):
        bad = ~frame[col].between(0.0, 1.0)
        if bad.any():
            problems.append(f"{name}: column {col} must lie in [0, 1], got {frame.loc[bad, col].iloc[0]!r}")
    for col in (grid_column, "n_bound", "draws", "grid_size"):
        if not (frame[col] > 0).all():
            problems.append(f"{name}: column {col} must be > 0")
    for col in ("prior", "grid_size", "delta", "delta_mc", "draws", "seed", "p", "n_bound", *constant):
        if frame[col].nunique() > 1:
            problems.append(f"{name}: column {col} must be one value for the whole grid, got "
                            f"{sorted(frame[col].unique().tolist())}")
    if len(frame) and int(frame["grid_size"].iloc[0]) != len(frame):
        problems.append(f"{name}: grid_size {int(frame['grid_size'].iloc[0])} but {len(frame)} rows")
    unknown = sorted(set(frame["prior"]) - {"init", "trained"})
    if unknown:
        problems.append(f"{name}: unknown prior value(s) {unknown}")
    return problems


def check_certificates(frame: pd.DataFrame, table: str = "certificates") -> list[str]:
    """Ranges of certificates.parquet (or ``table``, certificates_iid_rows): risks in [0, 1], positive sigma and
    counts, one grid, one level and one data fingerprint per table."""
    problems = _check_grid_table(table, frame, "posterior_std", ("level", "n_bound_rows", "data_fingerprint",
                                                                  "holdout_gibbs_error"))
    for col in ("holdout_gibbs_error", "holdout_test_gibbs_error"):
        if not frame[col].between(0.0, 1.0).all():
            problems.append(f"{TABLES[table].filename}: column {col} must lie in [0, 1]")
    unknown = sorted(set(frame["level"]) - {"group", "row"})
    if unknown:
        problems.append(f"{TABLES[table].filename}: unknown level value(s) {unknown}")
    return problems


def read_learned_record(run_dir: str | Path) -> dict[str, Any] | None:
    """``RUN_DIR/posterior/learned.json`` (`LEARNED_FILES`) checked, or None when the run has none.

    Raises
    ------
    RunLogError
        When the file is not valid JSON, lacks a field, or a tensor's entry is out of range.
    """
    path = Path(run_dir) / LEARNED_DIR / "learned.json"
    if not path.is_file():
        return None
    record = read_json_object(path)
    missing = [k for k in ("prior", "prior_std_grid", "tensors", "first_draw", "draws_used", "n_bound")
               if k not in record]
    if missing:
        raise RunLogError(f"{path} lacks field(s) {missing}")
    tensors = record["tensors"]
    if not isinstance(tensors, dict) or not tensors:
        raise RunLogError(f"{path}: tensors must be a non-empty object")
    for name, t in tensors.items():
        ok = (isinstance(t, dict) and all(isinstance(t.get(k), (int, float)) and not isinstance(t.get(k), bool)
                                          for k in ("posterior_std", "count", "weight", "sq_dist"))
              and t["posterior_std"] > 0 and t["count"] >= 1 and 0 <= t["weight"] <= 1 and t["sq_dist"] >= 0)
        if not ok:
            raise RunLogError(f"{path}: tensors[{name!r}] must hold posterior_std > 0, count >= 1, weight in [0, 1] "
                              f"and sq_dist >= 0, got {t!r}")
    return record


def check_learned_certificates(frame: pd.DataFrame) -> list[str]:
    """Ranges of learned_certificates.parquet: as `check_certificates`, and one measured risk for the whole grid
    (the posterior is the same at every prior_std)."""
    return _check_grid_table("learned_certificates", frame, "prior_std", ("train_gibbs_error", "test_gibbs_error"))


def read_prior_record(run_dir: str | Path) -> dict[str, Any] | None:
    """``RUN_DIR/prior/prior.json`` (`PRIOR_FILES`) checked, or None when the run has none.

    Returns ``{"prior_fraction": float, "prior_ids": list[int], "certifiable_ids": list[int], "level": str,
    "prior_groups": list[str] | None, "certifiable_groups": list[str] | None, "prior_fingerprint": str | None,
    "certifiable_fingerprint": str | None}``. Runs trained before the group-level split have no ``level``
    (their prior took rows: ``"row"``), no groups and no fingerprints (None).

    Raises
    ------
    RunLogError
        When the file is not valid JSON or lacks a field or has one of the wrong type.
    """
    path = Path(run_dir) / PRIOR_DIR / "prior.json"
    if not path.is_file():
        return None
    record = read_json_object(path)
    missing = [k for k in ("prior_fraction", "prior_ids", "certifiable_ids") if k not in record]
    if missing:
        raise RunLogError(f"{path} lacks field(s) {missing}")
    fraction = record["prior_fraction"]
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0.0 <= fraction < 1.0:
        raise RunLogError(f"{path}: prior_fraction must be a number in [0, 1), got {fraction!r}")
    for key in ("prior_ids", "certifiable_ids"):
        ids = record[key]
        if not isinstance(ids, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
            raise RunLogError(f"{path}: {key} must be a list of integer sample ids")
    level = record.get("level", "row")
    if level not in ("group", "row"):
        raise RunLogError(f"{path}: level must be 'group' or 'row', got {level!r}")
    extra = {}
    for key in ("prior_groups", "certifiable_groups"):
        groups = record.get(key)
        if groups is not None and (not isinstance(groups, list) or not all(isinstance(g, str) for g in groups)):
            raise RunLogError(f"{path}: {key} must be a list of group names")
        extra[key] = None if groups is None else list(groups)
    if level == "group" and (extra["prior_groups"] is None or extra["certifiable_groups"] is None):
        raise RunLogError(f"{path}: a group-level prior split lists prior_groups and certifiable_groups")
    for key in ("prior_fingerprint", "certifiable_fingerprint"):
        value = record.get(key)
        if value is not None and not isinstance(value, str):
            raise RunLogError(f"{path}: {key} must be a sha256 hex digest, got {value!r}")
        extra[key] = value
    return {"prior_fraction": float(fraction), "prior_ids": list(record["prior_ids"]),
            "certifiable_ids": list(record["certifiable_ids"]), "level": level, **extra}


def append_certify_log(run_dir: str | Path, entry: Mapping[str, Any]) -> int:
    """Append one measurement to ``RUN_DIR/certify_log.jsonl`` (`CERTIFY_LOG`), stamped with the UTC time; returns
    the number of entries the log then holds. Flushed and fsynced, so an entry once written survives a crash."""
    import datetime

    path = Path(run_dir) / CERTIFY_LOG
    line = json.dumps({"time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                       **entry}, sort_keys=True)
    with path.open("a", encoding="utf-8") as handle:
        handle.write(line + "\n")
        handle.flush()
        os.fsync(handle.fileno())
    return len(read_certify_log(run_dir))


def read_certify_log(run_dir: str | Path) -> list[dict[str, Any]]:
    """The entries of ``RUN_DIR/certify_log.jsonl`` in order ([] when the run has none).

    Raises RunLogError for a line that is not a JSON object with a ``kind`` of ``grid`` or ``learned``.
    """
    path = Path(run_dir) / CERTIFY_LOG
    if not path.is_file():
        return []
    entries = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        try:
            entry = json.loads(line)
        except json.JSONDecodeError as exc:
            raise RunLogError(f"{path} line {number} is not JSON: {exc}") from None
        if not isinstance(entry, dict) or entry.get("kind") not in ("grid", "learned"):
            raise RunLogError(f"{path} line {number}: expected an object with kind 'grid' or 'learned'")
        entries.append(entry)
    return entries


def validate_run(run_dir: str | Path, require: Iterable[str] = ()) -> RunLog:
    """Check a run directory against the schema and return it read.

    Checks meta.json (parses, schema version, required fields, status, field types: `RunMeta`),
    steps.jsonl and every parquet table present (columns, duplicate keys, non-finite losses), and that
    the tables named in ``require`` exist.

    Raises
    ------
    RunLogError
        Listing every problem found.
    """
    run_dir = Path(run_dir)
    meta = read_meta(run_dir)  # raises on a missing/corrupted meta.json or a wrong schema version
    steps = read_steps(run_dir)
    problems = meta_problems(meta)
    problems += check_table(TABLES["steps"], steps)
    for value, allowed, column in ((steps["split"], Split, "split"), (steps["predictor"], Predictor, "predictor")):
        unknown = sorted(set(value.dropna()) - {m.value for m in allowed})
        if unknown:
            problems.append(f"steps.jsonl: unknown {column} value(s) {unknown}")
    tables = {}
    for name, spec in TABLES.items():
        if name == "steps":
            continue
        if not (run_dir / spec.filename).is_file():
            if name in require:
                problems.append(str(MissingTableError(name, run_dir)))
            continue
        try:
            frame = tables[name] = _read_table(run_dir, name)
        except Exception as exc:  # a torn or foreign parquet file
            problems.append(f"{spec.filename}: unreadable ({exc})")
            continue
        problems += check_table(spec, frame)
        if name in ("certificates", "certificates_iid_rows") and not any(
                p.startswith(spec.filename) for p in problems):
            problems += check_certificates(frame, name)
        if name == "learned_certificates" and not any(p.startswith(spec.filename) for p in problems):
            problems += check_learned_certificates(frame)
    if problems:
        raise RunLogError(f"run {run_dir} is invalid:\n  - " + "\n  - ".join(problems))
    return RunLog(run_dir, RunMeta.from_dict(meta, source=run_dir / "meta.json"), steps, tables)


def write_atomic(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Create or replace ``path`` atomically: ``write`` fills a temporary file beside it, which is then
    renamed over ``path``, so a reader never sees a half-written file. Permissions follow the umask,
    as for a file opened for writing (the temporary file itself starts private)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(Path(tmp))
        with open(tmp, "rb+") as fh:  # on disk before the rename makes it visible
            os.fsync(fh.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_json(path: str | Path, data: Any) -> Path:
    """Strict JSON (no NaN/Infinity: `jsonable` turns them into null), written with `write_atomic`."""
    text = json.dumps(jsonable(data), indent=2, sort_keys=True, allow_nan=False) + "\n"
    return write_atomic(path, lambda tmp: tmp.write_text(text))


def jsonable(value: Any) -> Any:
    """Plain JSON value: numpy scalars and arrays to Python, non-finite floats to None (strict JSON)."""
    if isinstance(value, np.ndarray):
        value = value.tolist()
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
