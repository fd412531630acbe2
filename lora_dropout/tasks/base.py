"""The `Task` protocol: what a run needs from what it learns, and the registry of its implementations.

The run machinery (`lora_dropout.runs`) never asks which task it runs; it asks the task object of
``TrainConfig.task`` (`task_for`):

=======  =========================================================================================
model    the transformers auto class, peft's task type, the embedded default model and the config
         arguments of the head (`Task.auto_model`, `Task.peft_task_type`, `Task.default_model`,
         `Task.config_kwargs`)
data     `Task.prepare`: the training split, the test split and the training examples of the
         train-risk evaluation, from a `TextSplits` and the model's tokenizer
loss     `Task.per_example_loss`: ``loss(x; theta)`` of Eq. 7, one value per row of a batch
scoring  `Task.score_split`: each member's, the deterministic predictor's and (when asked) the
         unmasked model's scores of every example of an evaluation split, ``(n, C)`` per predictor:
         class logits, or log option probabilities for multiple choice. `lora_dropout.runs.evaluate`
         derives every table from them, so the tables are the same for every task.
=======  =========================================================================================

Two implementations: `lora_dropout.tasks.classification.CLASSIFICATION` (sequence classification) and
`lora_dropout.tasks.instruction.INSTRUCTION` (instruction tuning of a causal LM, scored as multiple
choice). This module imports neither torch nor an implementation, so a configuration validates its task
name cheaply (`check_task`); `task_for` imports the implementation on first use.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

if TYPE_CHECKING:
    import pandas as pd
    import torch

    from ..method.config import EvalMode
    from .splits import TextSplits

__all__ = ["TASKS", "EvalSplit", "SplitScores", "Task", "TaskSplits", "TrainSplit", "check_task", "task_for"]


class TrainSplit(Protocol):
    """Training examples as the training loop draws them (`EncodedSplit`, `InstructionSplit`)."""

    @property
    def sample_ids(self) -> np.ndarray:
        """``(n,)`` int64: the stable key of each example (masks and per-sample tables are keyed by it)."""
        ...

    def __len__(self) -> int: ...

    def subset(self, positions: Sequence[int]) -> TrainSplit: ...

    def batches(self, batch_size: int, order: Sequence[int] | None = None, device: torch.device | str = "cpu"
                ) -> Iterator[dict[str, torch.Tensor]]:
        """Consecutive batches in ``order`` (default: stored order): model inputs, ``labels``, ``sample_id``."""
        ...


class EvalSplit(Protocol):
    """Examples an evaluation scores (`EncodedSplit`, `ChoiceSplit`): keys and the index of the right class."""

    @property
    def sample_ids(self) -> np.ndarray: ...

    @property
    def labels(self) -> np.ndarray:
        """``(n,)`` int64: the class (or the option) each example's scores should rank first."""
        ...

    def __len__(self) -> int: ...

    def subset(self, positions: Sequence[int]) -> EvalSplit: ...


@dataclass(frozen=True)
class TaskSplits:
    """The data of a run as its task prepares it."""

    train: TrainSplit
    test: EvalSplit
    eval_train: EvalSplit  # the first ``eval_train_size`` training examples, as evaluation examples


@dataclass(frozen=True)
class SplitScores:
    """Scores of every example of one evaluation split (float32, on the CPU), ``C`` classes or options.

    ``members`` is ``(N, n, C)``, one slice per member of the test-time ensemble; ``deterministic`` is
    ``(n, C)``; ``full`` is the unmasked model's ``(n, C)`` when it was asked for, else None.
    """

    members: torch.Tensor
    deterministic: torch.Tensor
    full: torch.Tensor | None


class Task(Protocol):
    """What a run needs from the task it learns (module docstring)."""

    name: str
    """The registry key (`TASKS`), as ``TrainConfig.task`` names it."""
    auto_model: str
    """Name of the transformers auto class the pretrained model is loaded with."""
    peft_task_type: str
    """peft's ``task_type`` of the adapter (which head is trained and saved with it)."""
    evaluates_files: bool
    """Whether a finished run can be scored on another labelled file (`lora_dropout.runs.evaluate_file`)."""

    def default_model(self) -> str:
        """Local folder of the embedded default model (``TrainConfig.model = None``)."""
        ...

    def config_kwargs(self, num_labels: int) -> dict[str, Any]:
        """Arguments of the model's ``AutoConfig.from_pretrained`` (the head's size)."""
        ...

    def per_example_loss(self, outputs: Any, labels: torch.Tensor) -> torch.Tensor:
        """``loss(x; theta)`` of each row of a batch, ``(rows,)`` (`lora_dropout.method.losses`)."""
        ...

    def prepare(self, splits: TextSplits, tokenizer, *, max_length: int, eval_train_size: int) -> TaskSplits:
        """Tokenise a run's data: ``max_length`` tokens at most per example; ``eval_train`` holds the
        first ``eval_train_size`` training examples."""
        ...

    def score_split(self, model: torch.nn.Module, data: EvalSplit, *, n_members: int, deterministic: EvalMode,
                    unmasked: bool, batch_size: int, device: torch.device | str, tokenizer) -> SplitScores:
        """Score every example of ``data``: ``n_members`` members of the test-time ensemble (evaluation
        stream), one pass in the ``deterministic`` mode, and one unmasked pass when ``unmasked``."""
        ...

    def encode_frame(self, frame: pd.DataFrame, tokenizer, max_length: int) -> EvalSplit:
        """Evaluation examples of a labelled table (columns ``sample_id``, ``text``, ``label``)."""
        ...


TASKS = {
    "classification": "classification:CLASSIFICATION",
    "instruction": "instruction:INSTRUCTION",
}
"""The tasks a run can learn: ``TrainConfig.task`` -> ``"module:object"`` of its implementation in
`lora_dropout.tasks` (imported by `task_for` on first use)."""


def check_task(name: str) -> None:
    """Raise ``ValueError`` naming ``name`` and the registered tasks unless ``name`` is one of `TASKS`."""
    if name not in TASKS:
        raise ValueError(f"task={name!r} must be one of {', '.join(map(repr, TASKS))}")


def task_for(task: Task | str) -> Task:
    """The task registered under ``task`` (a `Task` is returned as it is)."""
    if not isinstance(task, str):
        return task
    check_task(task)
    module, _, name = TASKS[task].partition(":")
    return getattr(importlib.import_module(f".{module}", __package__), name)
