"""Evaluate a finished run on another labelled file, beside (never inside) its training record.

``lora-dropout evaluate RUN_DIR --data FILE`` reloads theta(S) (the saved adapter with the run's LoRA
Dropout config, so the ensemble members are the run's own), scores every row of ``FILE`` with the
predictors of the run's final evaluation, and writes ``RUN_DIR/evaluations/<name>/``:

=======================  ====================================================================
``steps.jsonl``          one line per predictor (deterministic, member_mean, ensemble), with the
                         columns of the run's ``steps.jsonl``
``samples.parquet``      the per-sample loss matrix: members, deterministic, ensemble and full
                         rows, with the columns of the run's ``samples.parquet``
``calibration.parquet``  reliability bins per predictor, columns of the run's table
``evaluation.json``      provenance: the file, its sha256, columns, n, label mapping, the run id,
                         the step of the adapter, the toolkit's commit, the date
=======================  ====================================================================

In these tables ``split`` is the evaluation's name, ``step`` the step the adapter was saved at, and
``sample_id`` the row position in the file (as the data loaders define it); every row is scored (no
deduplication, no split). Labels are matched by name: the file's label values are looked up in the
run's ``label_names`` (an integer label ``1`` is the name ``"1"``), whatever order or encoding the file
uses. The run's ``meta.json``, tables and adapter are only read; the evaluation is written into a
temporary folder and renamed into place, so an interrupted evaluation leaves nothing half-written.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from bounds.runlog import (
    SCHEMA_VERSION,
    TABLES,
    RunMeta,
    jsonable,
    read_run_meta,
    read_steps,
    run_state,
    write_json,
)

from ..tasks.base import task_for
from ..tasks.tables import COMPRESSION_SUFFIXES, read_table, require_columns
from .provenance import git_info, utc_now, versions

EVALUATIONS = "evaluations"
META_NAME = "evaluation.json"


@dataclass(frozen=True)
class EvaluationResult:
    """Where an evaluation was written, and its summary rows (one per predictor)."""

    out_dir: Path
    meta: dict
    summary: list[dict]


def sha256_of(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _label_key(value) -> str:
    """The name a label value stands for: its text; integral numbers without a decimal point (``1.0`` -> ``"1"``)."""
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        return str(int(value))
    return str(value)


def map_labels(values: pd.Series, label_names: tuple[str, ...], *, column: str, source: str) -> np.ndarray:
    """Label ids of ``values`` by name: ``label_names.index(name)`` for each value.

    Raises
    ------
    ValueError
        One line naming the unknown label(s), the file and the run's labels; or the first missing label.
    """
    if values.isna().any():
        row = int(np.flatnonzero(values.isna().to_numpy())[0])
        raise ValueError(f"{source}: column {column!r} has {int(values.isna().sum())} missing label(s) "
                         f"(first at row {row})")
    keys = values.map(_label_key)
    lookup = {name: i for i, name in enumerate(label_names)}
    unknown = sorted(set(keys) - set(lookup))
    if unknown:
        raise ValueError(f"{source}: label(s) {unknown} in column {column!r} are not labels of the run; "
                         f"the run knows {list(label_names)}")
    return keys.map(lookup).to_numpy(np.int64)


def read_labelled_file(path: str | os.PathLike, *, text_column: str, label_column: str,
                       label_names: tuple[str, ...]) -> pd.DataFrame:
    """The file's rows as ``sample_id`` (row position), ``text``, ``label`` (run's label id); the file's
    own column names are in ``.attrs["columns"]``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"--data: no such file {str(path)!r}")
    raw = read_table(path).reset_index(drop=True)
    require_columns(list(raw.columns), str(path), text_column=text_column, label_column=label_column)
    if raw.empty:
        raise ValueError(f"{path} has no rows")
    texts = raw[text_column]
    if texts.isna().any():
        row = int(np.flatnonzero(texts.isna().to_numpy())[0])
        raise ValueError(f"{path}: column {text_column!r} has {int(texts.isna().sum())} missing text(s) "
                         f"(first at row {row})")
    labels = map_labels(raw[label_column], label_names, column=label_column, source=str(path))
    frame = pd.DataFrame({"sample_id": np.arange(len(raw), dtype=np.int64), "text": texts.astype(str).to_numpy(),
                          "label": labels})
    frame.attrs["columns"] = [str(c) for c in raw.columns]
    return frame


def run_label_names(meta: RunMeta, config) -> tuple[str, ...]:
    """The label vocabulary of a run: ``meta.json``'s ``data.label_names`` (label id = position)."""
    names = meta.label_names if "label_names" in meta.data else None
    if names is None:  # written before runs recorded it: derive it from the run's data
        from .train import load_splits

        names = load_splits(config.train).label_names
    return tuple(str(n) for n in names)


def default_name(path: Path) -> str:
    """The file's stem, past a compression suffix: ``reviews.csv.bz2`` -> ``reviews``."""
    path = Path(path)
    if path.suffix.lower() in COMPRESSION_SUFFIXES:
        path = path.with_suffix("")
    return path.stem


def _check_name(name: str) -> str:
    if not name or name in (".", "..") or "/" in name or os.sep in name or name.startswith("."):
        raise ValueError(f"--name {name!r} must be a plain folder name (no path separators, not starting with '.')")
    return name


def _load_model(run_dir: Path, meta: RunMeta, config, num_labels: int):
    """theta(S) of the run: its model rebuilt as training built it, with ``adapter/`` loaded into it.

    Like `lora_dropout.runs.run.load_run`, without preparing the training data (only its size is needed:
    AdaLoRA's schedule spans the run's steps).
    """
    from ..method.persist import read_lora_dropout_config
    from .train import build_model, load_adapter, phases, resolve_device

    adapter = run_dir / "adapter"
    weights_path = adapter / "adapter_model.safetensors"
    if not weights_path.is_file():
        raise FileNotFoundError(f"{run_dir} has no trained adapter ({weights_path} is missing)")
    tc = config.train
    n_train = meta.n_train if "n_train" in meta.data else None
    if n_train is None:
        from .train import load_splits

        n_train = len(load_splits(tc).train)
    n_prior = None if meta.prior is None else meta.prior.get("n_prior")  # the prior phase's examples, as trained
    model, handle = build_model(config, num_labels, phases(tc, int(n_train), n_prior).total_steps)
    saved = read_lora_dropout_config(adapter)
    if saved != handle.config:
        raise ValueError(f"{adapter}: its LoRA Dropout config {saved.to_dict()} differs from the run's "
                         f"{handle.config.to_dict()}")
    load_adapter(model, adapter, device=resolve_device(tc.device))
    return model, handle


def evaluate_file(
    run_dir: str | os.PathLike,
    data: str | os.PathLike,
    *,
    text_column: str | None = None,
    label_column: str | None = None,
    name: str | None = None,
    device: str | None = None,
    overwrite: bool = False,
) -> EvaluationResult:
    """Score a finished run's predictors on a labelled file and write ``run_dir/evaluations/<name>/``.

    Parameters
    ----------
    run_dir : a run directory with a saved adapter (not a run still in progress).
    data : CSV/TSV or JSON-lines file (optionally compressed), read like `lora_dropout.tasks.data.load_text_file`.
    text_column, label_column : default: the run's ``train.text_column`` / ``train.label_column``.
    name : the evaluation's folder; default: the file's stem (``reviews.csv.bz2`` -> ``reviews``).
    device : default: the run's.
    overwrite : replace an existing evaluation of that name (else it is an error).
    """
    from .config import RunConfig
    from .evaluate import calibration_rows, run_split, sample_frame, summary_rows
    from .models import load_tokenizer
    from .train import resolve_device

    t0 = time.monotonic()
    run_dir, data = Path(run_dir), Path(data)
    meta = read_run_meta(run_dir)
    state = run_state(meta)
    if state == "running":
        raise ValueError(f"{run_dir} is still running (its adapter changes at every evaluation); "
                         "evaluate it when it has finished")
    config = RunConfig.from_dict(meta.config_dict())
    task = task_for(config.train.task)
    if not task.evaluates_files:
        raise ValueError(f"{run_dir} is an {config.train.task} run: evaluating on another file is implemented for "
                         "classification runs only (not yet for instruction tuning)")
    if device is not None:
        config = config.replace(train={"device": device})
    tc = config.train
    text_column = text_column or tc.text_column
    label_column = label_column or tc.label_column
    name = _check_name(name if name is not None else default_name(data))
    out = run_dir / EVALUATIONS / name
    if out.exists() and not overwrite:
        raise ValueError(f"{out} already exists; choose another --name or pass --overwrite")
    steps = read_steps(run_dir)
    if steps.empty:
        raise ValueError(f"{run_dir} has no evaluation in steps.jsonl, so no saved adapter to evaluate")
    last = steps.loc[steps["step"].astype(int).idxmax()]
    step, epoch = int(last["step"]), float(last["epoch"])

    label_names = run_label_names(meta, config)
    frame = read_labelled_file(data, text_column=text_column, label_column=label_column, label_names=label_names)
    model, handle = _load_model(run_dir, meta, config, len(label_names))
    encoded = task.encode_frame(frame, load_tokenizer(tc.model, task), tc.max_length)
    logits = run_split(model, handle, encoded, name, batch_size=tc.eval_batch_size, device=resolve_device(tc.device),
                       full=True, task=task)  # as the run's final evaluation: the unmasked model's rows too
    wall_s = time.monotonic() - t0
    summary = [{**row, "step": step, "epoch": epoch, "objective": None, "wall_s": wall_s}
               for row in summary_rows(logits)]
    counts = np.bincount(frame["label"].to_numpy(), minlength=len(label_names))
    eval_meta = {
        "schema_version": SCHEMA_VERSION,
        "name": name,
        "run_id": meta.run_id,
        "run_status": state,
        "run_git": dict(meta.git) or None,  # null, as before RunMeta, for a run that recorded none
        "step": step,
        "epoch": epoch,
        "source": {"path": str(data.resolve()), "sha256": sha256_of(data), "bytes": data.stat().st_size,
                   "text_column": text_column, "label_column": label_column,
                   "columns": frame.attrs["columns"], "n": len(frame)},
        "label_names": list(label_names),
        "label_counts": {label: int(n) for label, n in zip(label_names, counts, strict=True)},
        "device": str(resolve_device(tc.device)),
        "git": git_info(),
        "versions": versions(),
        "evaluated_at": utc_now(),
        "wall_s": round(wall_s, 3),
        "final": {row["predictor"]: {k: row[k] for k in ("risk", "accuracy", "ece", "nll", "brier")}
                  for row in summary},
    }
    _write(out, summary, sample_frame(logits).assign(step=step),
           pd.DataFrame(calibration_rows(logits)).assign(step=step), eval_meta)
    return EvaluationResult(out, eval_meta, summary)


def _write(out: Path, summary: list[dict], samples: pd.DataFrame, calibration: pd.DataFrame, meta: dict) -> None:
    """Fill a temporary folder beside ``out`` and rename it into place (replacing an old evaluation)."""
    from .writer import write_table

    out.parent.mkdir(parents=True, exist_ok=True)
    fresh, stale = out.with_name(f".{out.name}.new"), out.with_name(f".{out.name}.old")
    for leftover in (fresh, stale):
        shutil.rmtree(leftover, ignore_errors=True)
    fresh.mkdir()
    try:
        columns = TABLES["steps"].column_names
        lines = [json.dumps(jsonable({c: row.get(c) for c in columns})) for row in summary]
        (fresh / TABLES["steps"].filename).write_text("\n".join(lines) + "\n")
        write_table(fresh, "samples", samples)
        write_table(fresh, "calibration", calibration)
        write_json(fresh / META_NAME, meta)
        if out.exists():
            os.replace(out, stale)
        os.replace(fresh, out)
    finally:
        shutil.rmtree(fresh, ignore_errors=True)
        shutil.rmtree(stale, ignore_errors=True)
