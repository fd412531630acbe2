"""Evaluation of the three predictors on a split, and the per-sample loss matrix behind it.

Predictors (docs/measurement.md, "Decisions", "report all three"):

- ``deterministic``: one pass with ``dW`` scaled to its training mean (``expected``; ``full`` when
  ``eval_mode="full"``);
- ``member_mean``: the average over ``N`` ensemble members of each member's own metric (the
  "average random member" of Thm 4.5);
- ``ensemble``: the aggregate predictive of Eq. 8.

One evaluation runs the members and the deterministic pass once per batch; every table row is
derived from those logits.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from ..method.apply import LoraDropout
from ..method.config import EvalMode
from ..method.ensemble import aggregate_log_probs
from ..tasks.base import EvalSplit, Task, task_for
from .metrics import reliability, summarize


@dataclass(frozen=True)
class SplitLogits:
    """Raw outputs of one evaluation of one split."""

    split: str
    sample_ids: np.ndarray  # (n,)
    labels: np.ndarray  # (n,)
    member_logits: torch.Tensor  # (N, n, C), float32 on CPU
    deterministic_logits: torch.Tensor  # (n, C)
    average: str
    full_logits: torch.Tensor | None = None  # (n, C): unmasked dW, when requested

    def member_losses(self) -> torch.Tensor:
        """Cross-entropy of each member on each example, ``(N, n)``."""
        n_members, n, c = self.member_logits.shape
        labels = torch.tensor(self.labels).repeat(n_members)
        return F.cross_entropy(self.member_logits.reshape(-1, c), labels, reduction="none").view(n_members, n)

    def ensemble_log_probs(self) -> torch.Tensor:
        """``log o(x)`` of Eq. 8 in log space, ``(n, C)`` (`lora_dropout.method.ensemble.aggregate_log_probs`)."""
        return aggregate_log_probs(self.member_logits, self.average)


@torch.no_grad()
def run_split(
    model: torch.nn.Module,
    handle: LoraDropout,
    data: EvalSplit,
    split: str,
    *,
    batch_size: int,
    device: torch.device | str,
    full: bool = False,
    tokenizer=None,
    task: Task | str = "classification",
) -> SplitLogits:
    """Members of the test-time ensemble and the deterministic predictor on every example of ``data``.

    With ``dropout_rate = 0`` every member equals the unmasked model, so one member is run. ``full``
    also records the unmasked model (theta(S) of the theory; the same pass as the deterministic
    predictor when that is already unmasked). ``task`` scores the split (`Task.score_split`): class
    logits for classification; for instruction tuning (multiple-choice items of a causal LM, needs
    ``tokenizer``) the "logits" are the log option probabilities each member assigns
    (`lora_dropout.tasks.choices.score_choices`), so every table downstream is the same.
    """
    cfg = handle.config
    n_members = 1 if cfg.dropout_rate == 0 else cfg.eval_instances
    det_mode = EvalMode.FULL if cfg.eval_mode == EvalMode.FULL else EvalMode.EXPECTED
    separate_full = full and det_mode != EvalMode.FULL and cfg.dropout_rate > 0
    scores = task_for(task).score_split(model, data, n_members=n_members, deterministic=det_mode,
                                        unmasked=separate_full, batch_size=batch_size, device=device,
                                        tokenizer=tokenizer)
    full_logits = scores.full if separate_full else (scores.deterministic if full else None)
    return SplitLogits(
        split, data.sample_ids, data.labels, scores.members, scores.deterministic, cfg.ensemble_average.value,
        full_logits,
    )


def _rows_of(split_logits: SplitLogits):
    """``{predictor: [(probs, per-example losses), ...]}`` with one entry per member for member_mean."""
    det_probs, det_loss = _single(split_logits.deterministic_logits, split_logits.labels)
    ens_logp = split_logits.ensemble_log_probs()
    ens_loss = -ens_logp[torch.arange(len(split_logits.labels)), torch.tensor(split_logits.labels)]
    member_loss = split_logits.member_losses()
    member_probs = split_logits.member_logits.softmax(-1)
    return {
        "deterministic": [(det_probs, det_loss)],
        "member_mean": [(member_probs[r].numpy(), member_loss[r].numpy()) for r in range(len(member_probs))],
        "ensemble": [(ens_logp.exp().numpy(), ens_loss.numpy())],
    }


def _single(logits: torch.Tensor, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    loss = F.cross_entropy(logits, torch.tensor(labels), reduction="none")
    return logits.softmax(-1).numpy(), loss.numpy()


def summary_rows(split_logits: SplitLogits) -> list[dict]:
    """One steps.jsonl row per predictor (without step/epoch/objective/wall_s)."""
    rows = []
    labels = split_logits.labels
    for predictor, parts in _rows_of(split_logits).items():
        metrics = [summarize(probs, labels, losses) for probs, losses in parts]
        mean = {k: float(np.mean([m[k] for m in metrics])) for k in metrics[0]}
        rows.append({"split": split_logits.split, "predictor": predictor, "n": int(len(labels)), **mean})
    return rows


def calibration_rows(split_logits: SplitLogits) -> list[dict]:
    """Reliability bins per predictor; member_mean pools the predictions of all members."""
    rows = []
    labels = split_logits.labels
    for predictor, parts in _rows_of(split_logits).items():
        probs = np.concatenate([p for p, _ in parts])
        rel = reliability(probs, np.tile(labels, len(parts)))
        for b in range(len(rel.count)):
            rows.append({
                "split": split_logits.split, "predictor": predictor, "bin": b, "lower": rel.lower[b],
                "upper": rel.upper[b], "confidence": rel.confidence[b], "accuracy": rel.accuracy[b],
                "count": int(rel.count[b]),
            })
    return rows


def sample_frame(split_logits: SplitLogits) -> pd.DataFrame:
    """The per-sample loss matrix of one split: a member row per (example, instance), plus the
    deterministic, ensemble and (when recorded) full rows (instance -1)."""
    parts = _rows_of(split_logits)
    if split_logits.full_logits is not None:
        parts["full"] = [_single(split_logits.full_logits, split_logits.labels)]
    labels = split_logits.labels
    frames = []
    for predictor, instances in (("member", range(len(parts["member_mean"]))), ("deterministic", [-1]),
                                 ("ensemble", [-1]), ("full", [-1])):
        if predictor not in parts and predictor != "member":
            continue
        source = parts["member_mean"] if predictor == "member" else parts[predictor]
        for r, (probs, losses) in zip(instances, source, strict=True):
            frames.append(pd.DataFrame({
                "split": split_logits.split,
                "sample_id": split_logits.sample_ids,
                "predictor": predictor,
                "instance": r,
                "loss": losses.astype(np.float64),
                "correct": probs.argmax(axis=1) == labels,
                "confidence": probs.max(axis=1).astype(np.float64),
            }))
    return pd.concat(frames, ignore_index=True)
