"""Instruction tuning with LoRA Dropout: the task (`INSTRUCTION`), its splits, and the sentiment demo.

The paper's third experiment tunes a causal LM on Alpaca-clean and evaluates it 0-shot on MMLU
(docs/experiments.md). This module supplies the pieces a run needs that differ from classification:

- **Data.** `sentiment_instructions` turns a labelled text split (the embedded Rotten Tomatoes one
  by default) into Alpaca records (`lora_dropout.tasks.alpaca`) plus multiple-choice test items, so
  LoRA against LoRA Dropout is measurable offline; `instruction_splits` makes the run's splits of them.
- **Training.** `InstructionSplit` batches the records encoded with response-only labels, so the
  per-example loss is `lora_dropout.method.losses.causal_lm_loss`.
- **Evaluation.** Train and test items are scored as multiple choice (`lora_dropout.tasks.choices`):
  each predictor's "logits" are its log option probabilities, so every table of the run directory is
  the same as for classification.
- **Model.** By default the embedded SmolLM2-135M-Instruct (`lora_dropout.tasks.gguf`).

Mask seeding under data parallelism
-----------------------------------
Masks are counter-based and keyed by ``(seed, epoch, sample_id, instance)`` (`lora_dropout.method.masks`):
an example's masks are a function of its global ``sample_id``, never of its batch, its position in
the batch or the process that runs it. Per-(seed, rank, step, instance) seeding is subsumed: a
global sample id already identifies the example on every rank, so DistributedDataParallel needs no
per-rank seed, and two ranks that each take half of a global batch compute exactly the per-example
losses of one process running the whole batch (the averaged gradient and the mean loss are equal;
``tests/lora_dropout/method/test_ddp.py``). Give every example a ``sample_id`` that is unique across the
whole dataset (the loaders of `lora_dropout.tasks.data` and `lora_dropout.tasks.alpaca.load_alpaca`
use its position in the source).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch

from ..method.config import EvalMode
from ..method.losses import causal_lm_loss
from .alpaca import Instruction, collate_instructions, encode_instruction, format_prompt
from .base import SplitScores, TaskSplits
from .choices import ChoiceItem, ChoiceSplit, score_choices
from .gguf import default_causal_lm_dir
from .splits import TextSplits

SENTIMENT_INSTRUCTION = "Is this movie review positive or negative?"
"""Instruction of the sentiment demo (`sentiment_instructions`)."""

SENTIMENT_WORDS = {"rotten": "negative", "fresh": "positive"}
"""Response word of each Rotten Tomatoes label."""


def sentiment_instructions(
    splits: TextSplits,
    *,
    instruction: str = SENTIMENT_INSTRUCTION,
    words: Mapping[str, str] = SENTIMENT_WORDS,
) -> tuple[list[Instruction], list[ChoiceItem]]:
    """Instruction-format training records and multiple-choice test items from a text split.

    Parameters
    ----------
    splits : TextSplits
        E.g. ``load_rotten_tomatoes(n_train=500)``.
    instruction : str
        The instruction of every example; the review is its ``input``.
    words : mapping
        Response word of each label name (default: ``rotten`` -> ``negative``, ``fresh`` ->
        ``positive``).

    Returns
    -------
    train_records : list of Instruction
        One per training row, ``output`` = the label's word, ``sample_id`` kept.
    test_items : list of ChoiceItem
        One per test row: the rendered prompt, choices = the words in label order (``("negative",
        "positive")`` by default), answer = the label.
    """
    missing = [name for name in splits.label_names if name not in words]
    if missing:
        raise ValueError(f"words has no response for label(s) {missing}; label_names={splits.label_names!r}")
    choices = tuple(words[name] for name in splits.label_names)
    train = [
        Instruction(instruction=instruction, input=text, output=choices[label], sample_id=int(sid))
        for sid, text, label in zip(splits.train["sample_id"], splits.train["text"], splits.train["label"],
                                    strict=True)
    ]
    test = [
        ChoiceItem(prompt=format_prompt(Instruction(instruction=instruction, input=text, output="")),
                   choices=choices, answer=int(label), sample_id=int(sid))
        for sid, text, label in zip(splits.test["sample_id"], splits.test["text"], splits.test["label"],
                                    strict=True)
    ]
    return train, test


@dataclass(frozen=True)
class InstructionSplit:
    """Encoded instruction records for `lora_dropout.runs.train.fit` (a `TrainSplit` of the task)."""

    features: tuple[dict[str, Any], ...]
    sample_ids: np.ndarray
    pad_token_id: int

    def __len__(self) -> int:
        return len(self.features)

    def batches(self, batch_size: int, order: Sequence[int] | None = None, device: torch.device | str = "cpu"):
        order = list(range(len(self))) if order is None else list(order)
        for start in range(0, len(order), batch_size):
            batch = collate_instructions([self.features[i] for i in order[start:start + batch_size]],
                                         pad_token_id=self.pad_token_id)
            yield {k: v.to(device) for k, v in batch.items()}

    def subset(self, positions: Sequence[int]) -> InstructionSplit:
        positions = list(positions)
        return InstructionSplit(tuple(self.features[i] for i in positions), self.sample_ids[positions],
                                self.pad_token_id)


def instruction_splits(splits: TextSplits, tokenizer, *, max_length: int, words: Mapping[str, str] | None = None
                       ) -> tuple[InstructionSplit, ChoiceSplit, ChoiceSplit]:
    """Training records, training items (for ``R_hat``) and test items from a classification split.

    ``words`` maps label names to response words (default: ``rotten``/``fresh`` to ``negative``/``positive``
    when those are the labels, else the label names themselves).
    """
    sentiment = set(splits.label_names) <= set(SENTIMENT_WORDS)
    if words is None:
        words = SENTIMENT_WORDS if sentiment else {name: name for name in splits.label_names}
    instruction = SENTIMENT_INSTRUCTION if sentiment else (
        f"Which of these labels fits the text: {', '.join(words[n] for n in splits.label_names)}?")
    records, test_items = sentiment_instructions(splits, instruction=instruction, words=words)
    choices = tuple(words[name] for name in splits.label_names)
    train_items = tuple(ChoiceItem(format_prompt(Instruction(r.instruction, r.input, "")), choices,
                                   choices.index(r.output), int(r.sample_id)) for r in records)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    encoded = tuple(encode_instruction(tokenizer, r, max_length) for r in records)
    return (InstructionSplit(encoded, np.array([r.sample_id for r in records], dtype=np.int64), pad),
            ChoiceSplit(train_items), ChoiceSplit(tuple(test_items)))


class InstructionTask:
    """Instruction tuning of a causal LM (`lora_dropout.tasks.base.Task`): the response-only next-token
    loss in training, multiple-choice scoring of the labels' words in evaluation."""

    name = "instruction"
    auto_model = "AutoModelForCausalLM"
    peft_task_type = "CAUSAL_LM"
    evaluates_files = False

    def default_model(self) -> str:
        return str(default_causal_lm_dir())

    def config_kwargs(self, num_labels: int) -> dict:
        return {}  # the pretrained LM head scores the options: no new head, whatever the label count

    def per_example_loss(self, outputs, labels: torch.Tensor) -> torch.Tensor:
        return causal_lm_loss(outputs, labels)

    def prepare(self, splits: TextSplits, tokenizer, *, max_length: int, eval_train_size: int) -> TaskSplits:
        """The training split as instruction records with response-only labels, and the train and test
        splits as multiple-choice items (`instruction_splits`), which the evaluation scores like class labels."""
        train, train_items, test = instruction_splits(splits, tokenizer, max_length=max_length)
        return TaskSplits(train, test, train_items.subset(range(eval_train_size)))

    def score_split(self, model: torch.nn.Module, data: ChoiceSplit, *, n_members: int, deterministic: EvalMode,
                    unmasked: bool, batch_size: int, device: torch.device | str, tokenizer) -> SplitScores:
        """Log option probabilities each member (and each single-pass mode) assigns (`score_choices`, on
        the model's device), ``batch_size`` prompts per pass."""
        prompts = [item.prompt for item in data.items]
        choices = [item.choices for item in data.items]

        def log_probs(mode, n=None):
            scores = score_choices(model, tokenizer, prompts, choices, n_instances=n, mode=mode,
                                   sample_ids=data.sample_ids, batch_size=batch_size)
            return scores.member_probs.float().clamp_min(torch.finfo(torch.float32).tiny).log().cpu()  # (N, B, K)

        members = log_probs(EvalMode.ENSEMBLE, n_members)
        fixed = log_probs(deterministic)[0]
        return SplitScores(members, fixed, log_probs(EvalMode.FULL)[0] if unmasked else None)

    def encode_frame(self, frame: pd.DataFrame, tokenizer, max_length: int) -> ChoiceSplit:
        raise NotImplementedError("scoring an instruction-tuned model on a labelled file is not implemented yet")


INSTRUCTION = InstructionTask()
"""The instruction-tuning task (``TrainConfig.task = "instruction"``)."""
