"""Sequence classification: tokenised splits, their batches, and the classification `Task`.

Texts are tokenised once (truncated, unpadded); each batch is padded to its longest sequence. A
batch is a dict of tensors with the model inputs plus ``labels`` and ``sample_id`` (the stable
example key that masks and per-sample tables are keyed by). The task (`CLASSIFICATION`) trains a
classification head with the cross-entropy of its logits and scores a split by the class logits of
each predictor.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from ..method.config import EvalMode
from ..method.ensemble import predict
from ..method.losses import classification_loss
from .assets import MINILM, asset_file
from .base import SplitScores, TaskSplits
from .splits import TextSplits


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


class ClassificationTask:
    """Sequence classification (`lora_dropout.tasks.base.Task`): a freshly initialised head on a
    pretrained encoder, the embedded all-MiniLM-L6-v2 by default."""

    name = "classification"
    auto_model = "AutoModelForSequenceClassification"
    peft_task_type = "SEQ_CLS"
    evaluates_files = True

    def default_model(self) -> str:
        return str(asset_file(MINILM, "model"))

    def config_kwargs(self, num_labels: int) -> dict:
        return {"num_labels": num_labels}

    def per_example_loss(self, outputs, labels: torch.Tensor) -> torch.Tensor:
        return classification_loss(outputs, labels)

    def prepare(self, splits: TextSplits, tokenizer, *, max_length: int, eval_train_size: int) -> TaskSplits:
        """`EncodedSplit`s of both splits; the train-risk evaluation takes a prefix of the training split."""
        train = encode_split(splits.train, tokenizer, max_length)
        test = encode_split(splits.test, tokenizer, max_length)
        return TaskSplits(train, test, train.subset(range(eval_train_size)))

    def score_split(self, model: torch.nn.Module, data: EncodedSplit, *, n_members: int, deterministic: EvalMode,
                    unmasked: bool, batch_size: int, device: torch.device | str, tokenizer=None) -> SplitScores:
        """Class logits of each predictor (`predict`), batch by batch; the tokenizer is not needed."""
        members, fixed, full = [], [], []
        for batch in data.batches(batch_size, device=device):
            members.append(predict(model, batch, mode="ensemble", n_instances=n_members).member_logits.float().cpu())
            fixed.append(predict(model, batch, mode=deterministic).member_logits[0].float().cpu())
            if unmasked:
                full.append(predict(model, batch, mode=EvalMode.FULL).member_logits[0].float().cpu())
        return SplitScores(torch.cat(members, dim=1), torch.cat(fixed, dim=0),
                           torch.cat(full, dim=0) if unmasked else None)

    def encode_frame(self, frame: pd.DataFrame, tokenizer, max_length: int) -> EncodedSplit:
        return encode_split(frame, tokenizer, max_length)


CLASSIFICATION = ClassificationTask()
"""The classification task (``TrainConfig.task = "classification"``)."""
