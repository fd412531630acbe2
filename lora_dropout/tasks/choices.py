"""Multiple-choice scoring with the test-time ensemble: the 0-shot MMLU evaluation of the paper.

`score_choices` scores each option of a multiple-choice question by its log-likelihood given the
prompt, under each of ``N`` evaluation-stream dropout instances, and averages the per-instance option
probabilities (Eq. 8 applied to the choice distribution). `ChoiceItem` is one question,
`ChoiceSplit` a split of them as the run's evaluation scores it (`lora_dropout.tasks.instruction`).

The ``K`` options of an example are scored under the example's masks for each instance (keyed by its
``sample_id``, never by option): ``K`` rows that share the key, or, when every option is a single
token, one row whose last-position logits score all ``K``. Instance ``r`` is thus one model, and the
option distribution it yields is that model's.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ..method.apply import get_lora_dropout
from ..method.config import EnsembleAverage, EvalMode
from ..method.ensemble import aggregate
from ..method.losses import logits_of
from ..method.objective import forward_instances, instance_chunks, unwrap
from ..method.validation import check_count
from .alpaca import prompt_ids, text_ids


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
    heads = [prompt_ids(tokenizer, p) for p in prompts]
    tails = [[text_ids(tokenizer, o) for o in opts] for opts in options]
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
        Prompts, e.g. `ChoiceItem.prompt` or `lora_dropout.tasks.alpaca.format_prompt`; an option follows
        the prompt directly.
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
    check_count("batch_size", batch_size)
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
