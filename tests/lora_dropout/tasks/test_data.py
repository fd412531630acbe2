"""Tests of lora_dropout.tasks.data: the embedded Rotten Tomatoes split, file and HF loaders, bad inputs."""

import bz2
import gzip
import json

import numpy as np
import pandas as pd
import pytest

from lora_dropout.tasks.data import (
    load_hf_dataset,
    load_rotten_tomatoes,
    load_text_file,
    rotten_tomatoes_path,
)
from lora_dropout.tasks.splits import COLUMNS, TextSplits

# The full file has 13,905 rows: 1,097 plot summaries, 7,403 fresh and 5,405 rotten reviews. The 12,808
# reviews hold 56 exact duplicate texts (none with conflicting labels), leaving 12,752 examples. At
# seed 0 and test_fraction 0.2 the split measured 10,196 train (4,311 rotten / 5,885 fresh, 403 movies)
# and 2,556 test (1,073 rotten / 1,483 fresh, 104 movies).
N_REVIEWS = 12_808
N_AFTER_DEDUP = 12_752


@pytest.fixture(scope="module")
def raw_rt():
    return pd.read_csv(rotten_tomatoes_path())


@pytest.fixture(scope="module")
def rt():
    return load_rotten_tomatoes(seed=0)


@pytest.fixture(scope="module")
def rt_seed1():
    return load_rotten_tomatoes(seed=1)


def both(splits: TextSplits) -> pd.DataFrame:
    return pd.concat([splits.train, splits.test], ignore_index=True)


# --- the embedded default --------------------------------------------------------------------------


def test_default_schema(rt):
    for frame in (rt.train, rt.test):
        assert tuple(frame.columns) == COLUMNS
        assert frame["sample_id"].dtype == np.int64
        assert frame["label"].dtype == np.int64
        assert pd.api.types.is_string_dtype(frame["text"])
        assert frame["group"].dtype == object
    assert rt.label_names == ("rotten", "fresh")
    assert rt.source.endswith("rotten_tomatoes_corpus_full.csv.bz2")


def test_default_sizes(raw_rt, rt):
    assert len(raw_rt) == 13_905
    assert (raw_rt["category"] == "plot").sum() == 1_097
    assert len(rt.train) + len(rt.test) == N_AFTER_DEDUP
    assert 0.19 < len(rt.test) / N_AFTER_DEDUP < 0.22


def test_default_no_movie_on_both_sides(rt):
    assert rt.train["group"].notna().all() and rt.test["group"].notna().all()
    assert not set(rt.train["group"]) & set(rt.test["group"])


def test_default_no_duplicate_text(rt):
    assert not both(rt)["text"].duplicated().any()


def test_default_rows_are_reviews_with_their_labels(raw_rt, rt):
    # sample_id is the row of the file, so the file says what each example is.
    rows = both(rt)
    source = raw_rt.loc[rows["sample_id"]]
    assert (source["category"] != "plot").all()
    assert list(source["category"]) == [rt.label_names[label] for label in rows["label"]]
    assert list(source["text"]) == list(rows["text"])
    assert list(source["movie_name"]) == list(rows["group"])


def test_default_both_labels_in_each_split(rt):
    assert set(rt.train["label"]) == {0, 1}
    assert set(rt.test["label"]) == {0, 1}


def test_default_sample_ids_unique_and_stable_across_seeds(rt, rt_seed1):
    first, second = both(rt), both(rt_seed1)
    assert first["sample_id"].is_unique
    assert dict(zip(first["text"], first["sample_id"], strict=True)) == dict(
        zip(second["text"], second["sample_id"], strict=True)
    )


def test_default_seeds_give_different_splits(rt, rt_seed1):
    assert set(rt.test["sample_id"]) != set(rt_seed1.test["sample_id"])
    assert set(rt.test["group"]) != set(rt_seed1.test["group"])


def test_default_nested_subsamples(rt):
    small = load_rotten_tomatoes(seed=0, n_train=500)
    large = load_rotten_tomatoes(seed=0, n_train=1000, n_test=300)
    assert len(small.train) == 500 and len(large.train) == 1000
    pd.testing.assert_frame_equal(small.train, large.train.iloc[:500])
    pd.testing.assert_frame_equal(large.train, rt.train.iloc[:1000])
    # The split itself does not depend on the subsample sizes.
    pd.testing.assert_frame_equal(small.test, rt.test)
    pd.testing.assert_frame_equal(large.test, rt.test.iloc[:300])


def test_default_subsample_changes_with_seed(rt, rt_seed1):
    assert set(rt.train["sample_id"].iloc[:500]) != set(rt_seed1.train["sample_id"].iloc[:500])


def test_describe(rt):
    info = rt.describe()
    json.dumps(info)  # run metadata is written as JSON
    assert info["n_train"] == len(rt.train) and info["n_test"] == len(rt.test)
    assert info["label_counts"]["train"]["fresh"] == int((rt.train["label"] == 1).sum())
    assert sum(info["label_counts"]["test"].values()) == len(rt.test)
    assert sum(info["label_fractions"]["train"].values()) == pytest.approx(1.0)
    assert info["n_groups"] == {"train": rt.train["group"].nunique(), "test": rt.test["group"].nunique()}


def test_smaller_corpus_path():
    path = rotten_tomatoes_path(full=False)
    assert path.name == "rotten_tomatoes_corpus.csv.bz2" and path.is_file()


# --- local files -----------------------------------------------------------------------------------


def toy_frame(n_groups=12, per_group=5) -> pd.DataFrame:
    rows = [
        {"text": f"text {g}-{i}", "label": "pos" if (g + i) % 2 else "neg", "author": f"a{g}"}
        for g in range(n_groups)
        for i in range(per_group)
    ]
    return pd.DataFrame(rows)


def test_csv_random_split_labels_and_ids(tmp_path):
    frame = toy_frame()
    frame.loc[3, "text"] = "NA"  # a pandas NA string must stay a text
    path = tmp_path / "toy.csv"
    frame.to_csv(path, index=False)
    splits = load_text_file(path, seed=3, test_fraction=0.25)
    assert splits.label_names == ("neg", "pos")  # sorted unique strings
    rows = both(splits).set_index("sample_id").sort_index()
    assert list(rows.index) == list(range(len(frame)))  # sample_id = row position in the file
    assert list(rows["text"]) == list(frame["text"])
    assert [splits.label_names[label] for label in rows["label"]] == list(frame["label"])
    assert rows["group"].isna().all()
    assert len(splits.test) == 15  # units are rows: 0.25 * 60 exactly
    assert splits.source == str(path)


def test_group_column_honoured(tmp_path):
    path = tmp_path / "toy.csv"
    toy_frame().to_csv(path, index=False)
    test_sets = set()
    for seed in range(5):
        splits = load_text_file(path, group_column="author", seed=seed)
        assert not set(splits.train["group"]) & set(splits.test["group"])
        test_sets.add(frozenset(splits.test["group"]))
    assert len(test_sets) > 1  # the seed moves whole groups


def test_groups_sharing_a_text_are_split_together(tmp_path):
    # a1 is an alias of a0: it shares one text and owns others. Merged, both land on the same side.
    frame = toy_frame()
    frame.loc[len(frame)] = {"text": "text 0-0", "label": "neg", "author": "a1"}
    path = tmp_path / "alias.csv"
    frame.to_csv(path, index=False)
    for seed in range(10):
        splits = load_text_file(path, group_column="author", seed=seed)
        assert ("a0" in set(splits.test["group"])) == ("a1" in set(splits.test["group"]))


def test_dedup_before_split(tmp_path):
    frame = toy_frame()
    frame.loc[len(frame)] = {"text": "text 1-1", "label": "neg", "author": "a9"}  # same label: keep one
    frame.loc[len(frame)] = {"text": "text 2-1", "label": "neg", "author": "a2"}  # conflict: drop all
    path = tmp_path / "dups.csv"
    frame.to_csv(path, index=False)
    rows = both(load_text_file(path, group_column="author"))
    assert rows["text"].is_unique
    assert "text 2-1" not in set(rows["text"])
    assert rows.loc[rows["text"] == "text 1-1", "sample_id"].tolist() == [6]  # the first copy survives
    assert len(rows) == len(frame) - 3


def test_split_column_honoured(tmp_path):
    frame = toy_frame()
    frame["part"] = np.where(np.arange(len(frame)) % 4 == 0, "test", "train")
    path = tmp_path / "given.csv"
    frame.to_csv(path, index=False)
    for seed in (0, 1):
        splits = load_text_file(path, split_column="part", seed=seed, test_fraction=0.9)
        assert set(splits.test["sample_id"]) == set(np.flatnonzero(frame["part"] == "test"))
        assert set(splits.train["sample_id"]) == set(np.flatnonzero(frame["part"] == "train"))


def test_jsonl_int_labels_with_names_and_nesting(tmp_path):
    frame = toy_frame()
    frame["label"] = (frame["label"] == "pos").astype(int)
    path = tmp_path / "toy.jsonl.gz"
    with gzip.open(path, "wt") as handle:
        handle.write(frame.to_json(orient="records", lines=True))
    splits = load_text_file(path, label_names=["negative", "positive"], n_train=20, n_test=6, seed=4)
    full = load_text_file(path, label_names=["negative", "positive"], seed=4)
    assert splits.label_names == ("negative", "positive")
    assert len(splits.train) == 20 and len(splits.test) == 6
    pd.testing.assert_frame_equal(splits.train, full.train.iloc[:20])
    pd.testing.assert_frame_equal(splits.test, full.test.iloc[:6])
    rows = both(full).set_index("sample_id").sort_index()
    assert list(rows["label"]) == list(frame["label"])  # integer labels index label_names


def test_int_labels_without_names_map_sorted(tmp_path):
    frame = toy_frame()
    frame["label"] = np.where(frame["label"] == "pos", 7, 2)
    path = tmp_path / "ints.csv"
    frame.to_csv(path, index=False)
    splits = load_text_file(path)
    assert splits.label_names == ("2", "7")
    rows = both(splits).set_index("sample_id").sort_index()
    assert list(rows["label"]) == list((frame["label"] == 7).astype(int))


# --- bad inputs ------------------------------------------------------------------------------------


@pytest.fixture
def toy_csv(tmp_path):
    frame = toy_frame()
    frame["part"] = "train"
    path = tmp_path / "toy.csv"
    frame.to_csv(path, index=False)
    return path


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such file.*nope.csv"):
        load_text_file(tmp_path / "nope.csv")


def test_missing_column(toy_csv):
    with pytest.raises(ValueError, match=r"text_column='body'.*available columns: \['text', 'label'"):
        load_text_file(toy_csv, text_column="body")
    with pytest.raises(ValueError, match="group_column='movie'"):
        load_text_file(toy_csv, group_column="movie")


def test_one_class(tmp_path):
    path = tmp_path / "one.csv"
    toy_frame().assign(label="pos").to_csv(path, index=False)
    with pytest.raises(ValueError, match="label: only one class .'pos'."):
        load_text_file(path)


def test_empty_split_from_fraction(toy_csv):
    with pytest.raises(ValueError, match="empty test split: test_fraction=0.0"):
        load_text_file(toy_csv, test_fraction=0.0)
    with pytest.raises(ValueError, match="empty train split: test_fraction=1.0"):
        load_text_file(toy_csv, test_fraction=1.0, group_column="author")


def test_empty_split_from_split_column(toy_csv):
    with pytest.raises(ValueError, match="empty test split: split_column='part'"):
        load_text_file(toy_csv, split_column="part")


def test_bad_split_value(tmp_path):
    path = tmp_path / "bad_split.csv"
    toy_frame().assign(part="validation").to_csv(path, index=False)
    with pytest.raises(ValueError, match="part: split value 'validation'"):
        load_text_file(path, split_column="part")


def test_unknown_label(toy_csv):
    with pytest.raises(ValueError, match="label: unknown label 'neg'"):
        load_text_file(toy_csv, label_names=["negative", "pos"])


def test_n_train_too_large(toy_csv):
    with pytest.raises(ValueError, match=r"n_train=1000 exceeds the 48 available train"):
        load_text_file(toy_csv, n_train=1000)
    with pytest.raises(ValueError, match=r"n_test=0 must be None or an integer >= 1"):
        load_text_file(toy_csv, n_test=0)


def test_run_sizes_resolve_against_the_file(toy_csv, monkeypatch):
    # TrainConfig's sizes: "auto" = all available up to a cap, None = all, a number = exactly that
    from lora_dropout.runs import config as runconfig
    from lora_dropout.runs.train import load_splits

    full = load_text_file(toy_csv)
    assert (len(full.train), len(full.test)) == (48, 12)
    monkeypatch.setitem(runconfig.SIZE_CAPS, "n_train", 20)  # caps below what the file has ...
    monkeypatch.setitem(runconfig.SIZE_CAPS, "n_test", 100)  # ... and above it
    for sizes, (n_train, n_test) in (({}, (20, 12)), ({"n_train": 30, "n_test": None}, (30, 12)),
                                     ({"n_train": None, "n_test": 5}, (48, 5))):
        got = load_splits(runconfig.TrainConfig(data=str(toy_csv), **sizes))
        # the same nested prefixes of the seeded order as the loader's own sizes
        want = load_text_file(toy_csv, n_train=n_train, n_test=n_test)
        pd.testing.assert_frame_equal(got.train, want.train)
        pd.testing.assert_frame_equal(got.test, want.test)
    with pytest.raises(ValueError, match="n_test=13 exceeds the 12 available test examples"):
        load_splits(runconfig.TrainConfig(data=str(toy_csv), n_test=13))


def test_default_n_train_too_large():
    with pytest.raises(ValueError, match="n_train=20000 exceeds the 10196 available"):
        load_rotten_tomatoes(n_train=20_000)


def test_unsupported_suffix(tmp_path):
    path = tmp_path / "data.parquet"
    path.write_text("")
    with pytest.raises(ValueError, match="path: unsupported file type 'data.parquet'"):
        load_text_file(path)


@pytest.mark.parametrize("name, content, problem", [
    ("zero.csv", b"", "is empty: no header and no rows"),
    ("header.csv", b"text,label\n", r"has a header \(text, label\) but no rows"),
    ("zero.jsonl", b"", "has no rows"),
    ("binary.csv", b"\x89PNG\r\n\x1a\n\x00\xff", "is not UTF-8 text"),
    ("quote.csv", b'text,label\n"never closed,pos\n', "cannot be read as CSV: ParserError"),
    ("broken.jsonl", b'{"text": "a", "label"\n', "cannot be read as JSONL"),
    ("cut.csv.bz2", bz2.compress(b"text,label\n" + b"a,pos\n" * 50)[:30], "cannot be read as CSV"),
], ids=["zero-bytes", "header-only", "empty-jsonl", "binary", "unclosed-quote", "broken-json", "cut-bz2"])
def test_an_empty_or_unreadable_file_is_one_line_naming_it(tmp_path, name, content, problem):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(ValueError, match=problem) as info:
        load_text_file(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def valid_frame(ids, labels):
    return pd.DataFrame(
        {
            "sample_id": np.asarray(ids, dtype=np.int64),
            "text": [f"t{i}" for i in ids],
            "label": np.asarray(labels, dtype=np.int64),
            "group": pd.Series([None] * len(ids), dtype=object),
        }
    )


def test_text_splits_validation():
    train, test = valid_frame([0, 1], [0, 1]), valid_frame([2], [1])
    TextSplits(train=train, test=test, label_names=("a", "b"), source="x")  # the valid reference
    with pytest.raises(ValueError, match="sample_id must be unique.*1 repeats"):
        TextSplits(train=train, test=valid_frame([1], [0]), label_names=("a", "b"), source="x")
    with pytest.raises(ValueError, match=r"test.label 2 is outside 0..1"):
        TextSplits(train=train, test=valid_frame([2], [2]), label_names=("a", "b"), source="x")
    with pytest.raises(ValueError, match="train.label needs at least two classes, got only 'b'"):
        TextSplits(train=valid_frame([0, 1], [1, 1]), test=test, label_names=("a", "b"), source="x")
    with pytest.raises(ValueError, match="test split is empty"):
        TextSplits(train=train, test=test.iloc[:0], label_names=("a", "b"), source="x")
    with pytest.raises(ValueError, match="train columns must be"):
        TextSplits(train=train.drop(columns="group"), test=test, label_names=("a", "b"), source="x")


# --- Hugging Face datasets, offline ----------------------------------------------------------------


@pytest.fixture
def saved_dataset(tmp_path):
    datasets = pytest.importorskip("datasets")
    features = datasets.Features(
        {
            "sentence": datasets.Value("string"),
            "label": datasets.ClassLabel(names=["neg", "pos"]),
        }
    )
    train = {"sentence": [f"train {i}" for i in range(30)], "label": [i % 2 for i in range(30)]}
    # The last test sentence repeats a train sentence: dedup before the split removes it from test.
    test = {
        "sentence": [f"test {i}" for i in range(9)] + ["train 0"],
        "label": [i % 2 for i in range(9)] + [0],
    }
    path = tmp_path / "saved"
    datasets.DatasetDict(
        {
            "train": datasets.Dataset.from_dict(train, features=features),
            "test": datasets.Dataset.from_dict(test, features=features),
        }
    ).save_to_disk(str(path))
    return path


def test_hf_saved_dataset_offline(saved_dataset, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    splits = load_hf_dataset(saved_dataset, text_column="sentence", seed=2)
    assert splits.label_names == ("neg", "pos")
    assert set(splits.train["sample_id"]) == set(range(30))
    assert set(splits.test["sample_id"]) == set(range(30, 39))  # test ids follow train; 39 was a dup
    rows = both(splits).set_index("sample_id").sort_index()
    assert rows.loc[31, "text"] == "test 1" and rows.loc[31, "label"] == 1
    nested = load_hf_dataset(saved_dataset, text_column="sentence", seed=2, n_train=10, n_test=4)
    pd.testing.assert_frame_equal(nested.train, splits.train.iloc[:10])
    pd.testing.assert_frame_equal(nested.test, splits.test.iloc[:4])


def test_hf_missing_split_and_column(saved_dataset):
    with pytest.raises(ValueError, match=r"test_split='validation'.*available splits: \['test', 'train'\]"):
        load_hf_dataset(saved_dataset, text_column="sentence", test_split="validation")
    with pytest.raises(ValueError, match="text_column='text'.*available columns"):
        load_hf_dataset(saved_dataset)
