"""Scales the notebooks run at: ``tiny`` (the test suite), ``quick`` (``make demo``), ``full`` (the figures).

``tiny`` is a smoke-test scale: a 2-layer random BERT (the embedded MiniLM tokenizer, hidden size
16) on a synthetic, learnable sentiment file (a label word among filler words), so the whole
pipeline runs in about a minute. Its numbers mean nothing about the paper; the notebooks assert at
that scale only what holds by construction or by theorem (Jensen, sparsity, the bound's
algebra), and assert the paper's empirical claims at the larger scales.

``quick`` and ``full`` are the profiles of `analysis.reproduce` on the embedded default model and data.
Studies are cached under ``$LORA_DROPOUT_CACHE`` (default ``~/.cache/lora-dropout``), so notebooks that
share a scale share its runs (a study resumes, never repeats finished runs); ``$LORA_DROPOUT_STUDY``
points them at an existing study instead (``studies/full`` after ``make figures``).
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from bounds.runlog import DEFAULT_POSTERIOR_STD_GRID
from lora_dropout.tasks.assets import cache_root

from .collect import Collection, collect
from .presets import Profile, make_profile, profile_with
from .reproduce import drop_test
from .study import run_study

SCALES = ("tiny", "quick", "full")
_POSITIVE = ("good", "great", "fine", "lovely", "superb", "moving", "sharp", "warm")
_NEGATIVE = ("bad", "awful", "poor", "dull", "weak", "flat", "tired", "messy")
_FILLER = ("the", "movie", "was", "plot", "actors", "really", "quite", "story", "film", "scenes", "and", "its")


def scale_from_env(default: str = "tiny") -> str:
    scale = os.environ.get("LORA_DROPOUT_SCALE", default)
    if scale not in SCALES:
        raise ValueError(f"LORA_DROPOUT_SCALE={scale!r} is not one of {SCALES}")
    return scale


def figures_dir_from_env(default: str | Path) -> Path:
    return Path(os.environ.get("LORA_DROPOUT_FIGURES", default))


def _tiny_assets(root: Path) -> dict:
    """A tiny random classifier and a learnable synthetic text file, created once under ``root``."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    from lora_dropout.runs.models import load_tokenizer

    model_dir, data_file = root / "tiny-bert", root / "tiny-sentiment.csv"
    if not (model_dir / "config.json").exists():
        tokenizer = load_tokenizer(None)
        torch.manual_seed(0)
        config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=16, num_hidden_layers=2,
                            num_attention_heads=2, intermediate_size=32, max_position_embeddings=64,
                            num_labels=2)
        BertForSequenceClassification(config).save_pretrained(model_dir)
        tokenizer.save_pretrained(model_dir)
    if not data_file.exists():
        rng = np.random.default_rng(0)
        rows = []
        for i in range(160):
            label = i % 2
            words = [*rng.choice(_FILLER, size=5), rng.choice(_POSITIVE if label else _NEGATIVE), f"x{i}"]
            rng.shuffle(words)
            rows.append({"text": " ".join(words), "label": ["negative", "positive"][label], "group": f"g{i // 8}"})
        pd.DataFrame(rows).to_csv(data_file, index=False)
    return {"model": str(model_dir), "data": str(data_file), "group_column": "group"}


def profile_for(scale: str) -> Profile:
    """The study a notebook runs at ``scale`` (the quick profile's design at every scale)."""
    if scale == "tiny":
        assets = _tiny_assets(cache_root() / "tiny-assets")
        profile = profile_with(make_profile("quick"), **assets, n_train=64, n_test=None, epochs=4, batch_size=8,
                               eval_every=0, eval_train_size=64, eval_batch_size=64, lr=1e-2)
        # the certificate's draws cost nothing on the tiny model: certify over the whole default grid (k = 2)
        post = dataclasses.replace(profile.spec.post, posterior_std_grid=DEFAULT_POSTERIOR_STD_GRID)
        return dataclasses.replace(profile, spec=dataclasses.replace(profile.spec, post=post))
    return make_profile(scale)


def study_dir(scale: str) -> Path:
    """Where a scale's study lives: ``$LORA_DROPOUT_STUDY`` if set (e.g. ``studies/full``, written by
    ``make figures``, or ``demo-out`` from ``make demo``), else the cache."""
    override = os.environ.get("LORA_DROPOUT_STUDY")
    return Path(override) if override else cache_root() / "studies" / scale


@dataclass(frozen=True)
class Study:
    """A collected study of one scale, as the notebooks use it."""

    scale: str
    profile: Profile
    directory: Path
    collection: Collection
    drop_test: pd.DataFrame

    @property
    def focus(self):
        return self.profile.focus


def load_study(scale: str, *, progress: bool = False) -> Study:
    """Run (or resume: finished runs are kept) the study of ``scale`` and collect it."""
    profile = profile_for(scale)
    directory = study_dir(scale)
    run_study(profile.spec, directory / "runs", progress=progress)
    arm = drop_test(directory / "runs", profile.spec, profile.focus, directory / "drop_test.parquet")
    return Study(scale, profile, directory, collect(directory / "runs"), arm)
