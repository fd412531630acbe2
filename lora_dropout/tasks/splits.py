"""Labelled texts split into train and test: `TextSplits`, and the one pipeline every loader builds it with.

Every loader of `lora_dropout.tasks.data` returns a :class:`TextSplits` built by `make_splits`, so the
three sources obey the same rules:

1. **Sample ids.** ``sample_id`` is the row position in the source (file row, or position in the HF
   train split followed by the test split). It depends on neither ``seed`` nor ``n_train``, so the
   same text keeps its id across seeds and subsample sizes; leave-one-out pairs and per-sample losses
   are keyed by it.
2. **Labels.** Integer labels index ``label_names`` when it is given; string labels are looked up in
   it. Without ``label_names`` the sorted unique values become the names (``{1, 2}`` becomes labels
   ``0, 1`` named ``"1", "2"``). A value outside ``label_names`` is an error, never a silent drop.
3. **Deduplication before splitting.** Exact duplicate texts keep only their first occurrence (lowest
   ``sample_id``); a text that occurs with two different labels is dropped in all its copies, since
   neither label can be trusted. Doing this before the split is what keeps a sentence from being on
   both sides.
4. **Split.** An explicit split (``split_column`` or the HF splits) is used as given. Otherwise the
   split is grouped when a group column is given and per row when not, with this algorithm: shuffle
   the split units (groups, or rows) with ``np.random.default_rng(seed)`` and move units to test, in
   shuffled order, until the test example count reaches ``test_fraction`` of all examples; every other
   unit is train. Groups that share a text are first merged into one unit, so an aliased group
   cannot straddle the split: the Rotten Tomatoes file lists one film under both
   ``el_crimen_del_padre_amaro`` and ``the_crime_of_padre_amaro`` (all 35 reviews identical, so
   deduplication alone keeps that film on one side); in other sources aliases may share only some
   texts, and the merge keeps their other texts on the same side.
5. **Nested subsamples.** The same generator then draws one permutation of the train rows and one of
   the test rows; ``n_train`` / ``n_test`` take prefixes of them. With a fixed seed the first 500
   training examples are therefore the whole of ``n_train=500`` when asking for ``n_train=1000``, so a
   learning curve over ``n_train`` adds examples instead of redrawing them.

This module needs pandas and numpy only; it never imports torch, so data can be inspected without a
deep-learning stack.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from ..method.validation import check_count
from .tables import require_columns

__all__ = ["COLUMNS", "TextSplits", "examples_fingerprint", "make_splits"]

COLUMNS = ("sample_id", "text", "label", "group")
"""Columns of ``TextSplits.train`` and ``TextSplits.test``, in this order."""

_SPLIT_VALUES = ("train", "test")


@dataclass(frozen=True, eq=False)
class TextSplits:
    """A train/test split of labelled texts.

    ``eq=False`` keeps identity comparison and hashing: field-wise ``==`` on DataFrames is ambiguous.
    Frozen means the fields cannot be rebound; treat the frames as read-only too.

    Parameters
    ----------
    train, test : pandas.DataFrame
        Columns exactly :data:`COLUMNS`: ``sample_id`` (int64, unique across both splits), ``text``
        (str), ``label`` (int64 index into ``label_names``) and ``group`` (object: str, or None when
        the source has no groups). Rows of ``train`` are in the seeded order whose prefixes are the
        nested ``n_train`` subsamples; the same holds for ``test``.
    label_names : tuple of str
        Name of each label; position = label value.
    source : str
        Human-readable origin: a file path or a dataset name.

    Raises
    ------
    ValueError
        If a split is empty or has the wrong columns or dtypes, a label is out of range, train holds
        fewer than two classes, or a ``sample_id`` repeats; the message names the split and field.
    """

    train: pd.DataFrame
    test: pd.DataFrame
    label_names: tuple[str, ...]
    source: str

    def __post_init__(self) -> None:
        if not isinstance(self.label_names, tuple) or not all(isinstance(n, str) for n in self.label_names):
            raise ValueError(f"label_names must be a tuple of str, got {self.label_names!r}")
        if len(set(self.label_names)) != len(self.label_names):
            raise ValueError(f"label_names must be unique, got {self.label_names!r}")
        for name, frame in (("train", self.train), ("test", self.test)):
            if not isinstance(frame, pd.DataFrame):
                raise ValueError(f"{name} must be a pandas DataFrame, got {type(frame).__name__}")
            if tuple(frame.columns) != COLUMNS:
                raise ValueError(f"{name} columns must be {list(COLUMNS)}, got {list(frame.columns)}")
            if frame.empty:
                raise ValueError(f"{name} split is empty")
            for column in ("sample_id", "label"):
                if frame[column].dtype != np.int64:
                    raise ValueError(f"{name}.{column} must be int64, got {frame[column].dtype}")
            if frame["text"].isna().any():
                raise ValueError(f"{name}.text has {int(frame['text'].isna().sum())} missing values")
            bad = frame["label"][(frame["label"] < 0) | (frame["label"] >= len(self.label_names))]
            if len(bad):
                raise ValueError(
                    f"{name}.label {int(bad.iloc[0])} is outside 0..{len(self.label_names) - 1} "
                    f"(label_names={self.label_names!r})"
                )
        if self.train["label"].nunique() < 2:
            only = self.label_names[int(self.train["label"].iloc[0])]
            raise ValueError(f"train.label needs at least two classes, got only {only!r}")
        ids = pd.concat([self.train["sample_id"], self.test["sample_id"]])
        duplicated = ids[ids.duplicated()]
        if len(duplicated):
            raise ValueError(
                f"sample_id must be unique across train and test; {int(duplicated.iloc[0])} repeats"
            )

    def describe(self) -> dict:
        """Summarise the split for run metadata.

        Returns
        -------
        dict
            JSON-serialisable: ``source``, ``label_names``, ``n_train``, ``n_test``, per split the
            ``label_counts`` and ``label_fractions`` keyed by label name, and ``n_groups`` (distinct
            non-missing groups; 0 when the source has none).
        """
        splits = {"train": self.train, "test": self.test}
        counts = {
            name: {
                label: int(n)
                for label, n in zip(
                    self.label_names,
                    np.bincount(frame["label"].to_numpy(), minlength=len(self.label_names)),
                    strict=True,
                )
            }
            for name, frame in splits.items()
        }
        return {
            "source": self.source,
            "label_names": list(self.label_names),
            "n_train": len(self.train),
            "n_test": len(self.test),
            "label_counts": counts,
            "label_fractions": {
                name: {label: n / len(splits[name]) for label, n in by_label.items()}
                for name, by_label in counts.items()
            },
            "n_groups": {name: int(frame["group"].nunique(dropna=True)) for name, frame in splits.items()},
        }


def examples_fingerprint(frame: pd.DataFrame, sample_ids: Sequence[int]) -> str:
    """sha256 over the ``(sample_id, label, text)`` of ``sample_ids``, in that order (hex digest).

    Recorded beside a PAC-Bayes prior when a run is trained and recomputed when it is certified
    (docs/certificate.md, "Premises"): ids that now point at other texts or labels (an edited or
    reordered data file) give another digest.
    """
    rows = frame.set_index("sample_id").loc[[int(i) for i in sample_ids], ["label", "text"]]
    digest = hashlib.sha256()
    for sample_id, label, text in zip(rows.index, rows["label"], rows["text"], strict=True):
        digest.update(f"{int(sample_id)}\t{int(label)}\t{len(text)}\t".encode())
        digest.update(str(text).encode("utf-8"))
    return digest.hexdigest()


def _encode_labels(
    raw: pd.Series, label_column: str, label_names: Sequence[str] | None
) -> tuple[np.ndarray, tuple[str, ...]]:
    """Map raw labels (strings or integers) to int64 indices and return them with the label names."""
    if raw.isna().any():
        row = raw.index[raw.isna()][0]
        raise ValueError(f"{label_column}: missing label at sample_id {row} ({int(raw.isna().sum())} rows)")
    if pd.api.types.is_float_dtype(raw) and (raw == np.floor(raw)).all():
        raw = raw.astype(np.int64)  # integers written as 1.0 by some exporters
    integer = pd.api.types.is_integer_dtype(raw) and not pd.api.types.is_bool_dtype(raw)
    if label_names is None:
        values = np.sort(raw.unique()) if integer else sorted(raw.astype(str).unique())
        label_names = tuple(str(v) for v in values)
        lookup = {v: i for i, v in enumerate(values)}
    else:
        label_names = tuple(label_names)
        lookup = (
            {i: i for i in range(len(label_names))} if integer else {n: i for i, n in enumerate(label_names)}
        )
    keys = raw if integer else raw.astype(str)
    codes = keys.map(lookup)
    if codes.isna().any():
        bad = keys[codes.isna()].iloc[0]
        raise ValueError(f"{label_column}: unknown label {bad!r}; label_names={label_names!r}")
    if codes.nunique() < 2:
        raise ValueError(
            f"{label_column}: only one class ({label_names[int(codes.iloc[0])]!r}); need at least two"
        )
    return codes.to_numpy(np.int64), label_names


def _split_units(texts: pd.Series, groups: pd.Series) -> pd.Series:
    """Return, per row, the unit of the grouped split: its group merged with groups sharing a text.

    Union-find over group names, linked by every text that occurs under more than one group (the same
    film filed under two names shares its reviews).
    """
    parent = {g: g for g in groups.unique()}

    def root(g):
        while parent[g] != g:
            parent[g] = parent[parent[g]]
            g = parent[g]
        return g

    for linked in groups.groupby(texts, sort=False).unique():
        for other in linked[1:]:
            parent[root(other)] = root(linked[0])
    return groups.map(root)


def _seeded_split(units: pd.Series, test_fraction: float, rng: np.random.Generator) -> np.ndarray:
    """Boolean test mask: move shuffled units to test until ``test_fraction`` of rows are there."""
    sizes = units.value_counts(sort=False)
    # First-appearance order (rows are sorted by sample_id) makes the shuffle reproducible.
    order = pd.unique(units)
    shuffled = order[rng.permutation(len(order))]
    counts = sizes.loc[shuffled].to_numpy()
    before = np.cumsum(counts) - counts
    test_units = set(shuffled[before < test_fraction * len(units)])
    return units.isin(test_units).to_numpy()


def make_splits(
    raw: pd.DataFrame,
    *,
    source: str,
    text_column: str,
    label_column: str,
    group_column: str | None,
    split_column: str | None,
    label_names: Sequence[str] | None,
    seed: int,
    n_train: int | None,
    n_test: int | None,
    test_fraction: float | None,
) -> TextSplits:
    """Shared pipeline of all loaders (module docstring, steps 1-5); ``raw.index`` is the sample_id."""
    require_columns(
        list(raw.columns),
        source,
        text_column=text_column,
        label_column=label_column,
        group_column=group_column,
        split_column=split_column,
    )
    check_count("n_train", n_train, optional=True)
    check_count("n_test", n_test, optional=True)
    if split_column is None and not (test_fraction is not None and 0.0 <= test_fraction <= 1.0):
        raise ValueError(f"test_fraction must be within [0, 1], got {test_fraction!r}")
    raw = raw.sort_index()
    if raw.empty:
        raise ValueError(f"{source!r} has no rows")
    texts = raw[text_column]
    if texts.isna().any():
        row = texts.index[texts.isna()][0]
        raise ValueError(f"{text_column}: missing text at sample_id {row} ({int(texts.isna().sum())} rows)")
    frame = pd.DataFrame(
        {"sample_id": raw.index.to_numpy(np.int64), "text": texts.astype(str).to_numpy()}, index=raw.index
    )
    labels, names = _encode_labels(raw[label_column], label_column, label_names)
    frame["label"] = labels
    # object dtype holding str or None: group ids may be numbers in the source, but they are names here.
    groups = [None] * len(raw) if group_column is None else raw[group_column].tolist()
    frame["group"] = pd.Series(
        [None if pd.isna(g) else str(g) for g in groups], index=raw.index, dtype=object
    )
    if split_column is not None:
        given = raw[split_column].astype(object)
        bad = given[~given.isin(_SPLIT_VALUES)]
        if len(bad):
            raise ValueError(f"{split_column}: split value {bad.iloc[0]!r} is not one of {_SPLIT_VALUES}")
    elif group_column is not None:
        if frame["group"].isna().any():
            row = frame.index[frame["group"].isna()][0]
            raise ValueError(f"{group_column}: missing group at sample_id {row}; the grouped split needs one")
        # Before dedup: the duplicated texts are what links aliased groups.
        units = _split_units(frame["text"], frame["group"])
    else:
        units = frame["sample_id"]

    # Dedup before splitting: keep the first copy of each text, drop every copy of a text whose copies
    # disagree on the label.
    conflicting = frame.groupby("text", sort=False)["label"].transform("nunique") > 1
    keep = ~frame["text"].duplicated() & ~conflicting
    frame = frame[keep]

    rng = np.random.default_rng(seed)
    if split_column is not None:
        is_test = (given[keep] == "test").to_numpy()
        how = f"split_column={split_column!r} marks no remaining row as"
    else:
        is_test = _seeded_split(units[keep], test_fraction, rng)
        how = f"test_fraction={test_fraction!r} of {len(frame)} examples assigns no example to"
    parts = {}
    for name, mask, limit, limit_name in (
        ("train", ~is_test, n_train, "n_train"),
        ("test", is_test, n_test, "n_test"),
    ):
        part = frame[mask]
        if part.empty:
            raise ValueError(f"empty {name} split: {how} {name!r}")
        if limit is not None and limit > len(part):
            raise ValueError(f"{limit_name}={limit} exceeds the {len(part)} available {name} examples")
        ordered = part.iloc[rng.permutation(len(part))]
        parts[name] = ordered.iloc[: len(part) if limit is None else limit].reset_index(drop=True)
    return TextSplits(train=parts["train"], test=parts["test"], label_names=names, source=source)
