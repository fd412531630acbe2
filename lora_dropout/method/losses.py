"""Per-example losses: the ``loss(x; theta)`` of Eq. 7, one value per row of a (tiled) batch.

A per-example loss function takes the model output and the labels of the same rows and returns a
``(rows,)`` tensor. Everything downstream (the N-instance objective, the per-sample loss matrix,
the bounds) averages these values, so "the loss of an example" means the same thing everywhere.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

PerExampleLoss = Callable[[Any, torch.Tensor], torch.Tensor]

IGNORE_INDEX = -100


def logits_of(outputs: Any) -> torch.Tensor:
    """The logits of a transformers output object, dict or tuple."""
    if hasattr(outputs, "logits"):
        return outputs.logits
    if isinstance(outputs, dict):
        return outputs["logits"]
    if isinstance(outputs, (tuple, list)):
        return outputs[0]
    return outputs


def classification_loss(outputs: Any, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy per example: ``-log softmax(z)_y``; logits ``(rows, C)``, labels ``(rows,)``."""
    logits = logits_of(outputs)
    return F.cross_entropy(logits.float(), labels, reduction="none")


def causal_lm_loss(outputs: Any, labels: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy over each example's supervised tokens.

    Logits ``(rows, T, V)``, labels ``(rows, T)`` with ``-100`` on tokens that carry no loss (the
    prompt, padding). Position ``t`` predicts token ``t + 1``. Each example is weighted equally, so
    the value is a per-example loss as the stability theory uses it (transformers' own causal-LM
    loss averages over all tokens of a batch instead).
    """
    logits = logits_of(outputs)[:, :-1, :].float()
    target = labels[:, 1:]
    token = F.cross_entropy(logits.transpose(1, 2), target, ignore_index=IGNORE_INDEX, reduction="none")
    counts = (target != IGNORE_INDEX).sum(dim=1)
    if bool((counts == 0).any()):
        raise ValueError("an example has no supervised tokens (all labels are -100): its loss is undefined")
    return token.sum(dim=1) / counts


def default_loss_for(outputs: Any) -> PerExampleLoss:
    """`classification_loss` for ``(rows, C)`` logits, `causal_lm_loss` for ``(rows, T, V)``."""
    return causal_lm_loss if logits_of(outputs).dim() == 3 else classification_loss
