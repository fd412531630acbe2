"""Alpaca-format instruction records: the prompt, reading records, and encoding them for training.

The paper's third experiment tunes a causal LM on Alpaca-clean (docs/experiments.md). This module
holds the format; `lora_dropout.tasks.instruction` builds the instruction-tuning task from it:

- **Records.** `load_alpaca` reads Alpaca records (``instruction``, optional ``input``, ``output``)
  from a local JSON list or JSON-lines file into `Instruction`s.
- **Training examples.** `encode_instruction` renders `PROMPT_WITH_INPUT` / `PROMPT_NO_INPUT` and
  labels only the response tokens and EOS (prompt tokens are ``-100``), so
  `lora_dropout.method.losses.causal_lm_loss` (picked automatically by `n_instance_loss` for ``(rows, T, V)``
  logits) is the mean next-token cross-entropy of the response. `collate_instructions` pads a list
  of them into a batch for `n_instance_loss` / `n_instance_backward` / `LoraDropoutTrainer`.
- **Tokenising a prompt and its continuation.** `prompt_ids` keeps the tokenizer's special tokens
  (they belong to the prompt), `text_ids` adds none (a response, or a multiple-choice option, follows
  the prompt directly); training and multiple-choice scoring (`lora_dropout.tasks.choices`) split a
  sequence at the same boundary.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..method.losses import IGNORE_INDEX
from ..method.objective import KEY_FIELD
from ..method.validation import check_count

# The Stanford Alpaca prompt (Taori et al. 2023, ``PROMPT_DICT`` in stanford_alpaca/train.py), with a
# newline after "### Response:" as alpaca-lora writes it: the response then starts on a line of its
# own, so tokenising prompt and response separately splits at a natural token boundary.
PROMPT_WITH_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
)
"""Alpaca prompt for records with a non-empty ``input``."""

PROMPT_NO_INPUT = (
    "Below is an instruction that describes a task. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Response:\n"
)
"""Alpaca prompt for records whose ``input`` is empty."""


@dataclass(frozen=True)
class Instruction:
    """One Alpaca record.

    Attributes
    ----------
    instruction : str
    input : str
        Context for the instruction; ``""`` when the record has none.
    output : str
        The response the model is trained to produce.
    sample_id : int or None
        Stable example key (masks are keyed by it); `load_alpaca` uses the record's position.
    """

    instruction: str
    input: str
    output: str
    sample_id: int | None = None


# -- data ---------------------------------------------------------------------------------------------


def _read_records(path: Path) -> list:
    text = path.read_text(encoding="utf-8")
    if text.lstrip().startswith("["):
        try:
            records = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}: not valid JSON ({exc})") from None
        return records
    records = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}: line {number} is not a JSON object ({exc})") from None
    return records


def load_alpaca(path: str | os.PathLike, *, n: int | None = None) -> list[Instruction]:
    """Read Alpaca-format records from a local JSON or JSON-lines file.

    Parameters
    ----------
    path : path
        A JSON list of objects (``alpaca_data.json``, ``alpaca_data_cleaned.json``) or one JSON
        object per line; detected from the content, not the suffix.
    n : int, optional
        Keep the first ``n`` records.

    Returns
    -------
    list of Instruction
        ``sample_id`` is the record's position in the file; a missing or null ``input`` is ``""``.

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    ValueError
        If the file is not JSON, a record is not an object, or a record lacks ``instruction`` or
        ``output`` or holds a non-string in one of the three fields (the message names the record
        and the field).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"path: no such file {str(path)!r}")
    check_count("n", n, optional=True)
    records = _read_records(path)
    if not isinstance(records, list):
        raise ValueError(f"{path}: expected a JSON list of records, got {type(records).__name__}")
    examples = []
    for i, record in enumerate(records[:n]):
        if not isinstance(record, dict):
            raise ValueError(f"{path}: record {i} is a {type(record).__name__}, not an object")
        for field in ("instruction", "output"):
            if field not in record:
                raise ValueError(f"{path}: record {i} has no {field!r} field; its fields: {sorted(record)}")
        value = {"instruction": record["instruction"], "output": record["output"],
                 "input": record.get("input") or ""}
        for field, text in value.items():
            if not isinstance(text, str):
                raise ValueError(f"{path}: record {i} field {field!r} must be a string, got {text!r}")
        examples.append(Instruction(**value, sample_id=i))
    if not examples:
        raise ValueError(f"{path}: no records")
    return examples


# -- encoding -----------------------------------------------------------------------------------------


def _as_instruction(example: Instruction | Mapping[str, Any]) -> Instruction:
    if isinstance(example, Instruction):
        return example
    for field in ("instruction", "output"):
        if field not in example:
            raise ValueError(f"example has no {field!r} field; its fields: {sorted(example)}")
    return Instruction(instruction=example["instruction"], input=example.get("input") or "",
                       output=example["output"], sample_id=example.get(KEY_FIELD))


def format_prompt(example: Instruction | Mapping[str, Any]) -> str:
    """The Alpaca prompt of ``example`` (`PROMPT_WITH_INPUT`, or `PROMPT_NO_INPUT` when input is empty)."""
    ex = _as_instruction(example)
    template = PROMPT_WITH_INPUT if ex.input.strip() else PROMPT_NO_INPUT
    return template.format(instruction=ex.instruction, input=ex.input)


def prompt_ids(tokenizer, prompt: str) -> list[int]:
    """Token ids of a prompt, with the tokenizer's special tokens."""
    # The tokenizer's own special tokens (a BOS for Llama-2 style tokenizers) belong to the prompt.
    return list(tokenizer(prompt)["input_ids"])


def text_ids(tokenizer, text: str) -> list[int]:
    """Token ids of a text that continues a prompt (a response, an option): no special tokens."""
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def encode_instruction(tokenizer, example: Instruction | Mapping[str, Any], max_length: int = 512
                       ) -> dict[str, Any]:
    """Tokenise one record for causal-LM training with the loss on the response only.

    The prompt and the response are tokenised separately and concatenated (the prompt ends with a
    newline, a natural token boundary), and the tokenizer's EOS closes the response so the model
    learns to stop.

    Parameters
    ----------
    tokenizer : transformers tokenizer with an ``eos_token_id``
    example : Instruction or mapping with ``instruction``, ``output`` and optional ``input``,
        ``sample_id``
    max_length : int
        Longest sequence. A longer example keeps its whole prompt and loses the end of its response
        (EOS first); at least one response token always remains.

    Returns
    -------
    dict
        ``input_ids``, ``attention_mask`` and ``labels`` (lists of int of equal length; labels are
        ``-100`` on every prompt token and the token id on every response token and the EOS), plus
        ``sample_id`` when the example has one.

    Raises
    ------
    ValueError
        If the tokenizer has no EOS token, or the prompt alone fills ``max_length`` so that no
        response token would remain.
    """
    ex = _as_instruction(example)
    if tokenizer.eos_token_id is None:
        raise ValueError("the tokenizer has no eos_token_id: set tokenizer.eos_token before encoding")
    prompt = prompt_ids(tokenizer, format_prompt(ex))
    response = text_ids(tokenizer, ex.output) + [tokenizer.eos_token_id]
    room = max_length - len(prompt)
    if room < 1:
        raise ValueError(
            f"example {ex.sample_id}: its prompt has {len(prompt)} tokens and max_length={max_length} leaves "
            "no room for a response token; raise max_length or shorten the input"
        )
    response = response[:room]
    encoded: dict[str, Any] = {
        "input_ids": prompt + response,
        "attention_mask": [1] * (len(prompt) + len(response)),
        "labels": [IGNORE_INDEX] * len(prompt) + response,
    }
    if ex.sample_id is not None:
        encoded[KEY_FIELD] = int(ex.sample_id)
    return encoded


def collate_instructions(features: Sequence[Mapping[str, Any]], *, pad_token_id: int = 0
                         ) -> dict[str, torch.Tensor]:
    """Right-pad encoded examples (`encode_instruction`) into a batch.

    Padding gets ``attention_mask = 0`` and ``labels = -100``, so it changes neither the loss nor,
    under causal attention, the logits of real tokens; ``pad_token_id`` is therefore arbitrary (use
    ``functools.partial(collate_instructions, pad_token_id=tok.pad_token_id)`` as a data collator).

    Returns
    -------
    dict of Tensor
        ``input_ids``, ``attention_mask``, ``labels`` of shape ``(B, T)`` (int64) and ``sample_id``
        ``(B,)`` when every example has one.
    """
    if not features:
        raise ValueError("collate_instructions got no examples")
    width = max(len(f["input_ids"]) for f in features)
    fill = {"input_ids": pad_token_id, "attention_mask": 0, "labels": IGNORE_INDEX}
    batch = {}
    for name, value in fill.items():
        rows = [list(torch.as_tensor(f[name]).tolist()) for f in features]
        batch[name] = torch.tensor([row + [value] * (width - len(row)) for row in rows], dtype=torch.int64)
    keyed = [KEY_FIELD in f for f in features]
    if any(keyed) and not all(keyed):
        raise ValueError(f"some examples have a {KEY_FIELD!r} and some do not; give every example one")
    if all(keyed):
        batch[KEY_FIELD] = torch.tensor([int(f[KEY_FIELD]) for f in features], dtype=torch.int64)
    return batch
