"""Reading labelled tables: CSV/TSV or JSON-lines files (optionally compressed) and their column checks.

Shared by the data loaders (`lora_dropout.tasks.data`) and the evaluation of a finished run on another
file (`lora_dropout.runs.evaluate_file`), so both read a file and name a missing column the same way.
Needs pandas only.
"""

from __future__ import annotations

import pathlib
from collections.abc import Sequence

import pandas as pd

__all__ = ["COMPRESSION_SUFFIXES", "read_table", "require_columns"]

COMPRESSION_SUFFIXES = (".bz2", ".gz", ".xz", ".zip", ".zst")
"""Compression suffixes pandas reads transparently (the suffix before one of them is the file type)."""


def read_table(path: pathlib.Path) -> pd.DataFrame:
    """Read a CSV/TSV or JSON-lines file, possibly compressed, into a frame with a RangeIndex.

    A file that cannot be read (empty, header without rows, no permission, not UTF-8, corrupt
    compression, malformed rows) raises a one-line ``ValueError`` naming the file and what is wrong,
    instead of the reader's own message, which does not name the file.
    """
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] in COMPRESSION_SUFFIXES:
        suffixes = suffixes[:-1]
    kind = suffixes[-1] if suffixes else ""
    if kind not in (".csv", ".tsv", ".jsonl", ".json"):
        raise ValueError(f"path: unsupported file type {path.name!r}; use .csv, .tsv, .jsonl or .json")
    where = f"data file {str(path)!r}"
    try:
        if kind in (".csv", ".tsv"):
            # Only empty fields are missing: pandas' default NA strings ("NA", "None", "null", ...) are
            # legitimate texts.
            frame = pd.read_csv(path, sep="\t" if kind == ".tsv" else ",", keep_default_na=False,
                                na_values=[""])
        else:
            # dtype=False: keep JSON types as written instead of coercing strings to numbers or dates.
            frame = pd.read_json(path, lines=True, dtype=False)
    except pd.errors.EmptyDataError as exc:
        raise ValueError(f"{where} is empty: no header and no rows") from exc
    except PermissionError as exc:
        raise ValueError(f"{where} cannot be read: permission denied") from exc
    except UnicodeDecodeError as exc:
        raise ValueError(f"{where} is not UTF-8 text ({exc.reason} at byte {exc.start})") from exc
    except (OSError, ValueError, EOFError) as exc:  # corrupt compression, malformed rows or JSON
        lines = str(exc).strip().splitlines()
        reason = lines[0] if lines else "no detail"
        raise ValueError(
            f"{where} cannot be read as {kind[1:].upper()}: {type(exc).__name__}: {reason}") from exc
    if frame.empty:
        columns = ", ".join(map(str, frame.columns))
        what = f"a header ({columns}) but no rows" if len(frame.columns) else "no rows"
        raise ValueError(f"{where} has {what}")
    return frame


def require_columns(available: Sequence[str], source: str, **columns: str | None) -> None:
    """Raise naming the argument and listing ``available`` if a requested column is absent."""
    for field, column in columns.items():
        if column is not None and column not in available:
            raise ValueError(
                f"{field}={column!r} is not a column of {source!r}; available columns: {list(available)}"
            )
