"""Instruction tuning with LoRA Dropout: Alpaca-format data, response-only loss, multiple-choice scoring.

The paper's third experiment tunes a causal LM on Alpaca-clean and evaluates it 0-shot on MMLU
(theory.md section 5). This module supplies the pieces that differ from classification:

- **Data.** `load_alpaca` reads Alpaca records (``instruction``, optional ``input``, ``output``)
  from a local JSON list or JSON-lines file; `sentiment_instructions` turns the embedded Rotten
  Tomatoes split into such records plus multiple-choice test items, so LoRA against LoRA Dropout is
  measurable offline.
- **Training examples.** `encode_instruction` renders `PROMPT_WITH_INPUT` / `PROMPT_NO_INPUT` and
  labels only the response tokens and EOS (prompt tokens are ``-100``), so
  `lora_dropout.method.losses.causal_lm_loss` (picked automatically by `n_instance_loss` for ``(rows, T, V)``
  logits) is the mean next-token cross-entropy of the response. `collate_instructions` pads a list
  of them into a batch for `n_instance_loss` / `n_instance_backward` / `LoraDropoutTrainer`.
- **Evaluation.** `score_choices` scores each option of a multiple-choice question by its
  log-likelihood given the prompt, under each of ``N`` evaluation-stream dropout instances, and
  averages the per-instance option probabilities (Eq. 8 applied to the choice distribution).

Mask seeding under data parallelism
-----------------------------------
Masks are counter-based and keyed by ``(seed, epoch, sample_id, instance)`` (`lora_dropout.method.masks`):
an example's masks are a function of its global ``sample_id``, never of its batch, its position in
the batch or the process that runs it. Per-(seed, rank, step, instance) seeding is subsumed: a
global sample id already identifies the example on every rank, so DistributedDataParallel needs no
per-rank seed, and two ranks that each take half of a global batch compute exactly the per-example
losses of one process running the whole batch (the averaged gradient and the mean loss are equal;
``tests/lora_dropout/method/test_ddp.py``). Give every example a ``sample_id`` that is unique across the
whole dataset (the loaders here use its position in the source).

For multiple choice, the ``K`` options of an example are scored under the example's masks for each
instance (keyed by its ``sample_id``, never by option): ``K`` rows that share the key, or, when every
option is a single token, one row whose last-position logits score all ``K``. Instance ``r`` is
thus one model, and the option distribution it yields is that model's.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..method.apply import get_lora_dropout
from ..method.config import EnsembleAverage, EvalMode
from ..method.ensemble import aggregate
from ..method.losses import IGNORE_INDEX, logits_of
from ..method.objective import KEY_FIELD, forward_instances, instance_chunks, unwrap
from .data import TextSplits

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

SENTIMENT_INSTRUCTION = "Is this movie review positive or negative?"
"""Instruction of the sentiment demo (`sentiment_instructions`)."""

SENTIMENT_WORDS = {"rotten": "negative", "fresh": "positive"}
"""Response word of each Rotten Tomatoes label."""


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


@dataclass(frozen=True)
class ChoiceItem:
    """A multiple-choice question: ``prompt`` followed by one of ``choices``; ``answer`` indexes it."""

    prompt: str
    choices: tuple[str, ...]
    answer: int
    sample_id: int


@dataclass(frozen=True)
class ChoiceScores:
    """Multiple-choice scores of `score_choices` for ``B`` questions with ``K`` options each.

    Attributes
    ----------
    member_loglik : Tensor, shape ``(N, B, K)``
        ``sum_t log p(option token t | prompt, earlier option tokens)`` under instance ``r``
        (``N = 1`` for the single-pass modes).
    member_probs : Tensor, shape ``(N, B, K)``
        ``softmax`` of ``member_loglik`` over the ``K`` options: each instance's choice distribution.
    probs : Tensor, shape ``(B, K)``
        The aggregate choice distribution: with ``average="probs"`` the mean of ``member_probs``
        over instances (Eq. 8).
    prediction : Tensor of int64, shape ``(B,)``
        ``argmax`` of ``probs``.
    loss : Tensor, shape ``(B,)``, or None
        ``-log probs[b, labels[b]]`` when labels were given.
    labels : Tensor of int64, shape ``(B,)``, or None
    mode, average : str
    """

    member_loglik: torch.Tensor
    member_probs: torch.Tensor
    probs: torch.Tensor
    prediction: torch.Tensor
    loss: torch.Tensor | None
    labels: torch.Tensor | None
    mode: str
    average: str

    @property
    def accuracy(self) -> float:
        """Fraction of questions whose predicted option is the labelled one."""
        if self.labels is None:
            raise ValueError("accuracy needs labels: pass labels= to score_choices")
        return float((self.prediction == self.labels).float().mean())


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
    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
        raise ValueError(f"n={n!r} must be None or an integer >= 1")
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


def _prompt_ids(tokenizer, prompt: str) -> list[int]:
    # The tokenizer's own special tokens (a BOS for Llama-2 style tokenizers) belong to the prompt.
    return list(tokenizer(prompt)["input_ids"])


def _text_ids(tokenizer, text: str) -> list[int]:
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
    prompt = _prompt_ids(tokenizer, format_prompt(ex))
    response = _text_ids(tokenizer, ex.output) + [tokenizer.eos_token_id]
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


# -- multiple-choice scoring --------------------------------------------------------------------------


def _option_table(choices, n_prompts: int) -> list[tuple[str, ...]]:
    if not choices:
        raise ValueError("choices is empty")
    if all(isinstance(c, str) for c in choices):
        table = [tuple(choices)] * n_prompts
    else:
        table = [tuple(c) for c in choices]
        if len(table) != n_prompts:
            raise ValueError(f"choices has {len(table)} option lists for {n_prompts} prompts")
    widths = {len(t) for t in table}
    if len(widths) != 1 or 0 in widths:
        raise ValueError(f"every prompt needs the same, non-zero number of choices; got {sorted(widths)}")
    return table


@dataclass(frozen=True)
class _OptionBatch:
    """Model inputs for a chunk of ``B`` prompts and where to read each option's token log-probabilities.

    When every option is a single token (``one_token``), the rows are the prompts themselves and option
    ``k`` is read at the prompt's last position: ``positions``/``targets`` are ``(B, K)``. Otherwise row
    ``b * K + k`` is prompt ``b`` followed by option ``k`` and ``positions``/``targets``/``valid`` are
    ``(B * K, L)``, ``L`` the longest option.
    """

    inputs: dict[str, torch.Tensor]
    positions: torch.Tensor
    targets: torch.Tensor
    valid: torch.Tensor
    one_token: bool
    n_options: int

    @property
    def per_prompt(self) -> int:
        """Rows of the batch per prompt."""
        return 1 if self.one_token else self.n_options


def _option_batch(tokenizer, prompts: Sequence[str], options: Sequence[tuple[str, ...]], device
                  ) -> _OptionBatch:
    heads = [_prompt_ids(tokenizer, p) for p in prompts]
    tails = [[_text_ids(tokenizer, o) for o in opts] for opts in options]
    for opts, ids in zip(options, tails, strict=True):
        for option, tail in zip(opts, ids, strict=True):
            if not tail:
                raise ValueError(f"option {option!r} tokenises to nothing; it has no likelihood to score")
    one_token = all(len(tail) == 1 for ids in tails for tail in ids)
    if one_token:
        # One forward per prompt instead of K: the logits at the last prompt token score every option.
        seqs = heads
        reads = [([len(head) - 1] * len(ids), [tail[0] for tail in ids])
                 for head, ids in zip(heads, tails, strict=True)]
    else:
        seqs = [head + tail for head, ids in zip(heads, tails, strict=True) for tail in ids]
        # The logit at position t predicts token t + 1: option token j sits at len(head) + j.
        reads = [(list(range(len(head) - 1, len(head) - 1 + len(tail))), tail)
                 for head, ids in zip(heads, tails, strict=True) for tail in ids]
    width = max(len(seq) for seq in seqs)
    longest = max(len(pos) for pos, _ in reads)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    input_ids = torch.full((len(seqs), width), pad, dtype=torch.int64)
    attention = torch.zeros((len(seqs), width), dtype=torch.int64)
    positions = torch.zeros((len(reads), longest), dtype=torch.int64)
    targets = torch.zeros((len(reads), longest), dtype=torch.int64)
    valid = torch.zeros((len(reads), longest), dtype=torch.bool)
    for i, seq in enumerate(seqs):
        input_ids[i, : len(seq)] = torch.tensor(seq)
        attention[i, : len(seq)] = 1
    for i, (pos, tgt) in enumerate(reads):
        positions[i, : len(pos)] = torch.tensor(pos)
        targets[i, : len(tgt)] = torch.tensor(tgt)
        valid[i, : len(pos)] = True
    inputs = {"input_ids": input_ids.to(device), "attention_mask": attention.to(device)}
    return _OptionBatch(inputs, positions.to(device), targets.to(device), valid.to(device), one_token,
                        len(options[0]))


def _option_scores(logits: torch.Tensor, batch: _OptionBatch, n_prompts: int) -> torch.Tensor:
    """``(M, rows, T, V)`` logits -> ``(M, B, K)`` option log-likelihoods (summed over option tokens)."""
    m, rows, _, v = logits.shape
    positions, targets = batch.positions, batch.targets
    index = positions.unsqueeze(0).unsqueeze(-1).expand(m, rows, positions.shape[1], v)
    # (M, rows, L, V): the log-softmax runs over the read positions only, not the whole sequence
    picked = torch.gather(logits, 2, index).float().log_softmax(dim=-1)
    token = torch.gather(picked, 3, targets.unsqueeze(0).unsqueeze(-1).expand(m, -1, -1, 1)).squeeze(-1)
    if batch.one_token:
        return token  # (M, B, K): entry k is option k's only token
    return (token * batch.valid).sum(dim=-1).view(m, n_prompts, batch.n_options)


@torch.no_grad()
def score_choices(
    model: torch.nn.Module,
    tokenizer,
    prompts: Sequence[str],
    choices: Sequence[str] | Sequence[Sequence[str]],
    *,
    labels: Sequence[int] | torch.Tensor | None = None,
    n_instances: int | None = None,
    mode: EvalMode | str | None = None,
    average: EnsembleAverage | str | None = None,
    sample_ids: Sequence[int] | torch.Tensor | None = None,
    batch_size: int = 8,
) -> ChoiceScores:
    """Score multiple-choice questions (MMLU style) with the test-time ensemble or a single-pass mode.

    The score of option ``k`` for prompt ``b`` under instance ``r`` is the log-likelihood of the
    option's tokens after the prompt, ``sum_t log p_r(o_t | prompt, o_<t)``; each instance's choice
    distribution is the softmax of its ``K`` scores, and the ensemble averages those distributions
    over instances (``average="probs"``, Eq. 8 on the choice distribution). All ``K`` options of an
    example are scored under that example's masks (keyed by its ``sample_id``), so instance ``r`` is
    one model ranking the options. Masks come from the evaluation stream, as in `predict`.

    Parameters
    ----------
    model : causal LM (peft) with LoRA Dropout applied
        Put in ``eval()`` mode for the call (the caller's mode is restored).
    tokenizer : its tokenizer
    prompts : sequence of str, length ``B``
        Prompts, e.g. `ChoiceItem.prompt` or `format_prompt`; an option follows the prompt directly.
    choices : sequence of str (the same ``K`` options for every prompt) or ``B`` sequences of ``K`` str
    labels : sequence of int, optional
        Index of the correct option per prompt; enables ``loss`` and ``accuracy``.
    n_instances : int, optional
        Ensemble members; default ``config.eval_instances``. Ignored by the single-pass modes.
    mode : ``"ensemble"``, ``"expected"`` or ``"full"``; default ``config.eval_mode``.
        ``expected`` / ``full`` run one pass with ``dW`` scaled by ``(1-p)^2`` / 1.
    average : ``"probs"`` (default from the config) or ``"logits"`` (softmax of the mean scores).
    sample_ids : sequence of int, optional
        Key of each prompt's masks; default the prompt's position ``0 .. B-1``, which does not depend
        on ``batch_size``.
    batch_size : int
        Prompts per forward pass. A pass holds ``N * batch_size * K`` sequences and their
        full-vocabulary logits, or ``N * batch_size`` when every option is a single token (MMLU's
        letters, the sentiment words): then one pass over the prompt scores all ``K`` options from the
        logits at its last token. ``config.max_instances_per_forward`` splits the ``N`` instances.

    Returns
    -------
    ChoiceScores
    """
    inner = unwrap(model)
    handle = get_lora_dropout(inner)
    cfg = handle.config
    mode = EvalMode(mode or cfg.eval_mode)
    average = EnsembleAverage(average or cfg.ensemble_average)
    prompts = list(prompts)
    total = len(prompts)
    if total == 0:
        raise ValueError("prompts is empty")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size={batch_size!r} must be an integer >= 1")
    options = _option_table(choices, total)
    keys = torch.arange(total, dtype=torch.int64) if sample_ids is None else (
        torch.as_tensor(sample_ids, dtype=torch.int64).reshape(-1))
    if keys.shape[0] != total:
        raise ValueError(f"sample_ids has {keys.shape[0]} entries for {total} prompts")
    n = (n_instances or cfg.eval_instances) if mode == EvalMode.ENSEMBLE else 1
    device = next(inner.parameters()).device
    was_training = inner.training
    inner.eval()
    pieces = []
    try:
        for start in range(0, total, batch_size):
            stop = min(start + batch_size, total)
            batch = _option_batch(tokenizer, prompts[start:stop], options[start:stop], device)
            rows = (stop - start) * batch.per_prompt
            if mode == EvalMode.ENSEMBLE:
                # Every row of an example carries the example's key: its K options share its masks.
                row_keys = keys[start:stop].repeat_interleave(batch.per_prompt).to(device)
                chunks = []
                for first, count in instance_chunks(n, cfg.max_instances_per_forward):
                    out = forward_instances(model, handle, batch.inputs, rows, first=first, count=count,
                                            keys=row_keys, step=0, epoch=0, train=False)
                    logits = logits_of(out)
                    logits = logits.view(count, rows, *logits.shape[1:])
                    chunks.append(_option_scores(logits, batch, stop - start))
                scores = torch.cat(chunks, dim=0)  # (N, b, K)
            else:
                with handle.use_scale(handle.scale_for(mode)):
                    logits = logits_of(model(**batch.inputs)).unsqueeze(0)  # (1, rows, T, V)
                scores = _option_scores(logits, batch, stop - start)
            pieces.append(scores.cpu())
    finally:
        inner.train(was_training)
    member_loglik = torch.cat(pieces, dim=1)  # (N, B, K)
    probs = aggregate(member_loglik, average)
    label_tensor = None if labels is None else torch.as_tensor(labels, dtype=torch.int64).reshape(-1)
    loss = None
    if label_tensor is not None:
        if label_tensor.shape[0] != total:
            raise ValueError(f"labels has {label_tensor.shape[0]} entries for {total} prompts")
        chosen = probs.gather(1, label_tensor.unsqueeze(1)).squeeze(1)
        loss = -chosen.clamp_min(torch.finfo(probs.dtype).tiny).log()
    return ChoiceScores(
        member_loglik=member_loglik,
        member_probs=member_loglik.softmax(dim=-1),
        probs=probs,
        prediction=probs.argmax(dim=-1),
        loss=loss,
        labels=label_tensor,
        mode=mode.value,
        average=average.value,
    )


def score_items(model: torch.nn.Module, tokenizer, items: Sequence[ChoiceItem], **kwargs) -> ChoiceScores:
    """`score_choices` on `ChoiceItem`s: their prompts, choices, answers and sample ids."""
    items = list(items)
    return score_choices(model, tokenizer, [it.prompt for it in items], [it.choices for it in items],
                         labels=[it.answer for it in items], sample_ids=[it.sample_id for it in items],
                         **kwargs)


# -- splits for the training loop and the run directory ------------------------------------------------


@dataclass(frozen=True)
class InstructionSplit:
    """Encoded instruction records for `lora_dropout.runs.train.fit` (the interface of `EncodedSplit`)."""

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


@dataclass(frozen=True)
class ChoiceSplit:
    """Multiple-choice items of one split, evaluated by `score_choices` (labels = answer indices)."""

    items: tuple[ChoiceItem, ...]

    def __len__(self) -> int:
        return len(self.items)

    @property
    def sample_ids(self) -> np.ndarray:
        return np.array([item.sample_id for item in self.items], dtype=np.int64)

    @property
    def labels(self) -> np.ndarray:
        return np.array([item.answer for item in self.items], dtype=np.int64)

    def subset(self, positions: Sequence[int]) -> ChoiceSplit:
        return ChoiceSplit(tuple(self.items[i] for i in positions))


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
