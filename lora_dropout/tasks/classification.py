"""Tokenised splits and the batches the training loop and the evaluation draw from them.

Texts are tokenised once (truncated, unpadded); each batch is padded to its longest sequence. A
batch is a dict of tensors with the model inputs plus ``labels`` and ``sample_id`` (the stable
example key that masks and per-sample tables are keyed by).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch


@dataclass(frozen=True)
class EncodedSplit:
    """One split, tokenised: ``features[i]`` are the token lists of example ``i``."""

    features: tuple[dict[str, list[int]], ...]
    labels: np.ndarray  # (n,) int64
    sample_ids: np.ndarray  # (n,) int64
    pad_token_id: int

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, positions: Sequence[int]) -> EncodedSplit:
        positions = list(positions)
        return EncodedSplit(
            tuple(self.features[i] for i in positions), self.labels[positions], self.sample_ids[positions],
            self.pad_token_id,
        )

    def collate(self, positions: Sequence[int], device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
        """Pad the examples at ``positions`` into one batch (right padding, attention mask 0 on pads)."""
        rows = [self.features[i] for i in positions]
        length = max(len(r["input_ids"]) for r in rows)
        batch: dict[str, torch.Tensor] = {}
        for key in rows[0]:
            fill = self.pad_token_id if key == "input_ids" else 0
            batch[key] = torch.tensor([r[key] + [fill] * (length - len(r[key])) for r in rows], device=device)
        batch["attention_mask"] = torch.tensor(
            [[1] * len(r["input_ids"]) + [0] * (length - len(r["input_ids"])) for r in rows], device=device
        )
        batch["labels"] = torch.as_tensor(self.labels[list(positions)], device=device)
        batch["sample_id"] = torch.as_tensor(self.sample_ids[list(positions)], device=device)
        return batch

    def batches(
        self, batch_size: int, order: Sequence[int] | None = None, device: torch.device | str = "cpu"
    ) -> Iterator[dict[str, torch.Tensor]]:
        """Consecutive batches in ``order`` (default: stored order); the last one may be smaller."""
        order = list(range(len(self))) if order is None else list(order)
        for start in range(0, len(order), batch_size):
            yield self.collate(order[start : start + batch_size], device)


def encode_split(frame: pd.DataFrame, tokenizer, max_length: int) -> EncodedSplit:
    """Tokenise the ``text`` column of a `TextSplits` frame (truncation at ``max_length`` tokens)."""
    enc = tokenizer(list(frame["text"]), truncation=True, max_length=max_length)
    keys = [k for k in ("input_ids", "token_type_ids") if k in enc]
    features = tuple({k: list(enc[k][i]) for k in keys} for i in range(len(frame)))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    return EncodedSplit(
        features, frame["label"].to_numpy(dtype=np.int64), frame["sample_id"].to_numpy(dtype=np.int64), pad
    )
