"""The test-time ensemble (Eq. 8) and the single-pass eval modes.

    o(x) = (1/N) * sum_{r=1..N} softmax(z(x; theta_0 + dtheta(m_r)))       (average="probs")
    o(x) = softmax((1/N) * sum_{r=1..N} z(x; theta_0 + dtheta(m_r)))       (average="logits")

Members are drawn from the evaluation mask stream, keyed by (seed, example key, instance): the same
example gets the same N members in every evaluation, whatever batch it sits in, so an evaluation is
reproducible from the config alone.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from .apply import get_lora_dropout
from .config import EnsembleAverage, EvalMode
from .losses import causal_lm_loss, logits_of
from .objective import KEY_FIELD, forward_instances, instance_chunks, unwrap


@dataclass(frozen=True)
class Prediction:
    """Per-instance outputs and their aggregate.

    Attributes
    ----------
    member_logits : Tensor, shape ``(N, B, C)``
        Logits of every member (``N = 1`` for the single-pass modes).
    probs : Tensor, shape ``(B, C)``
        The aggregate predictive distribution ``o(x)``.
    mode, average : str
    """

    member_logits: torch.Tensor
    probs: torch.Tensor
    mode: str
    average: str

    @property
    def member_probs(self) -> torch.Tensor:
        """``softmax`` of each member, ``(N, B, C)``."""
        return self.member_logits.float().softmax(dim=-1)

    def loss(self, labels: torch.Tensor) -> torch.Tensor:
        """Cross-entropy of the aggregate, ``-log o(x)_y``, per example ``(B,)``.

        For a causal LM (``probs`` of shape ``(B, T, V)``, labels ``(B, T)``): `causal_lm_loss` of the
        ensemble's next-token distributions (log-probabilities are valid logits).
        """
        log_probs = self.probs.clamp_min(torch.finfo(self.probs.dtype).tiny).log()
        if log_probs.dim() == 3:
            return causal_lm_loss(log_probs, labels)
        return F.nll_loss(log_probs, labels, reduction="none")

    def member_losses(self, labels: torch.Tensor) -> torch.Tensor:
        """Cross-entropy of each member, ``(N, B)`` (classification; score a causal LM with
        `lora_dropout.tasks.choices.score_choices`, whose members are option distributions)."""
        if self.member_logits.dim() != 3:
            raise ValueError(f"member losses need (N, B, C) class logits, got shape {tuple(self.member_logits.shape)}")
        n, b, c = self.member_logits.shape
        flat = F.cross_entropy(self.member_logits.float().reshape(n * b, c), labels.repeat(n), reduction="none")
        return flat.view(n, b)

    def jensen_gap(self, labels: torch.Tensor) -> torch.Tensor:
        """``mean_r CE(o_r) - CE(o)`` per example (Thm 4.5: >= 0 for ``average="probs"``)."""
        return self.member_losses(labels).mean(dim=0) - self.loss(labels)


def aggregate(member_logits: torch.Tensor, average: EnsembleAverage | str) -> torch.Tensor:
    """``(N, B, C)`` member logits -> ``(B, C)`` ensemble probabilities (Eq. 8)."""
    if EnsembleAverage(average) == EnsembleAverage.PROBS:
        return member_logits.float().softmax(dim=-1).mean(dim=0)
    return member_logits.float().mean(dim=0).softmax(dim=-1)


def aggregate_log_probs(member_logits: torch.Tensor, average: EnsembleAverage | str) -> torch.Tensor:
    """``log o(x)`` of Eq. 8 computed in log space (``logsumexp`` of the members' log-probabilities for
    ``average="probs"``), ``(N, B, C)`` -> ``(B, C)``: the ensemble's cross-entropy without underflow."""
    if EnsembleAverage(average) == EnsembleAverage.PROBS:
        return torch.logsumexp(member_logits.log_softmax(-1), dim=0) - math.log(member_logits.shape[0])
    return member_logits.mean(dim=0).log_softmax(-1)


@torch.no_grad()
def predict(
    model: torch.nn.Module,
    batch: Mapping[str, Any],
    *,
    mode: EvalMode | str | None = None,
    n_instances: int | None = None,
    average: EnsembleAverage | str | None = None,
    max_instances_per_forward: int | None = None,
    labels_key: str = "labels",
) -> Prediction:
    """Predict with the test-time ensemble (Eq. 8) or a single-pass eval mode.

    Parameters
    ----------
    model : peft model with LoRA Dropout applied
        Put in ``eval()`` mode for the duration of the call (the caller's mode is restored).
    batch : mapping
        Model inputs; ``labels`` is ignored, ``sample_id`` (optional) keys the members per example.
    mode : ``"ensemble"``, ``"expected"`` or ``"full"``; default ``config.eval_mode``.
    n_instances : int, optional
        Ensemble members; default ``config.eval_instances``.
    average : ``"probs"`` or ``"logits"``; default ``config.ensemble_average``.
    """
    inner = unwrap(model)
    handle = get_lora_dropout(inner)
    cfg = handle.config
    mode = EvalMode(mode or cfg.eval_mode)
    average = EnsembleAverage(average or cfg.ensemble_average)
    inputs = {k: v for k, v in batch.items() if k not in (labels_key, KEY_FIELD)}
    keys = batch.get(KEY_FIELD)
    was_training = inner.training
    inner.eval()
    try:
        if mode == EvalMode.ENSEMBLE:
            n = n_instances or cfg.eval_instances
            cap = max_instances_per_forward or cfg.max_instances_per_forward
            b = _batch_size(inputs)
            chunks = []
            for first, count in instance_chunks(n, cap):
                out = forward_instances(
                    model, handle, inputs, b, first=first, count=count, keys=keys, step=0, epoch=0, train=False
                )
                logits = logits_of(out)
                chunks.append(logits.reshape(count, b, *logits.shape[1:]))
            member_logits = torch.cat(chunks, dim=0)  # (N, B, C), or (N, B, T, V) for a causal LM
        else:
            with handle.use_scale(handle.scale_for(mode)):
                member_logits = logits_of(model(**inputs)).unsqueeze(0)  # (1, B, C)
    finally:
        inner.train(was_training)
    return Prediction(member_logits, aggregate(member_logits, average), mode.value, average.value)


def _batch_size(inputs: Mapping[str, Any]) -> int:
    for value in inputs.values():
        if torch.is_tensor(value) and value.dim() > 0:
            return value.shape[0]
    raise ValueError("batch has no tensor inputs to infer the batch size from")
