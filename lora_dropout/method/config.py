"""The LoRA Dropout configuration: what is masked, how many instances, and how evaluation works.

One frozen, validated dataclass. Field names follow docs/method.md, "Notation"; the choices the paper leaves
open (docs/measurement.md, "Decisions") are options here with the paper-faithful value as default.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from .validation import check_count_field, check_option


class MaskScope(str, Enum):
    """How often a fresh mask is drawn (docs/measurement.md, "Decisions", "mask scope")."""

    EXAMPLE = "example"  # one mask per (example, instance), shared by that example's tokens
    BATCH = "batch"  # one mask per instance, shared by every example of the step
    TOKEN = "token"  # a fresh mask for every token


class EvalMode(str, Enum):
    """Which predictor `predict` returns (Eq. 8 or a deterministic stand-in)."""

    ENSEMBLE = "ensemble"  # Eq. 8: average of n_eval_instances masked members
    EXPECTED = "expected"  # one pass with dW scaled by its training mean E[m_B m_A^T]
    FULL = "full"  # one pass with the unmasked dW ("Drop_train" of the paper's ablation)


class EnsembleAverage(str, Enum):
    """What the test-time ensemble averages."""

    PROBS = "probs"  # o(x) = mean_r softmax(z_r): Thm 4.5's Jensen inequality holds per example
    LOGITS = "logits"  # o(x) = softmax(mean_r z_r)


@dataclass(frozen=True, kw_only=True)
class LoraDropoutConfig:
    """Configuration of LoRA Dropout (Lin et al. 2024, Eqs. 2, 7, 8).

    Parameters
    ----------
    dropout_rate : float
        ``p`` in [0, 1): probability of DROPPING a column of ``A`` (an input feature of the LoRA
        branch) and, independently, a row of ``B`` (an output feature). An entry of
        ``dW_hat = diag(m_B) B A diag(m_A)`` is zero with probability ``s = 2p - p^2``.
    n_instances : int
        ``N`` of Eq. 7: dropout instances whose losses are averaged per training step.
    n_eval_instances : int or None
        ``N`` of Eq. 8: members of the test-time ensemble; None (default) means ``n_instances``.
    mask_scope : MaskScope or str
        ``"example"`` (default), ``"batch"`` or ``"token"``.
    rescale : bool
        False (default, as in the paper): kept entries are left as they are. True: each mask is
        inverted dropout, kept entries scaled by ``1 / (1 - p)``.
    eval_mode : EvalMode or str
        ``"ensemble"`` (default), ``"expected"`` or ``"full"``.
    ensemble_average : EnsembleAverage or str
        ``"probs"`` (default) or ``"logits"``.
    seed : int
        Root of every mask stream (training and evaluation masks are separate streams).
    max_instances_per_forward : int or None
        Largest number of instances tiled into one forward pass; None puts all ``N`` in one pass.
        Smaller values trade speed for memory and do not change the masks or the loss.
    """

    dropout_rate: float = field(default=0.3, metadata={"help": "p: probability of dropping a column of A / row of B"})
    n_instances: int = field(default=4, metadata={"help": "N: dropout instances averaged per training step (Eq. 7)"})
    n_eval_instances: int | None = field(
        default=None, metadata={"help": "members of the test-time ensemble (Eq. 8); default = n_instances"}
    )
    mask_scope: MaskScope = field(
        default=MaskScope.EXAMPLE, metadata={"help": "one mask per example (default), per batch, or per token"}
    )
    rescale: bool = field(default=False, metadata={"help": "scale kept entries by 1/(1-p) (inverted dropout)"})
    eval_mode: EvalMode = field(
        default=EvalMode.ENSEMBLE, metadata={"help": "ensemble (Eq. 8), expected (dW times its mean mask), or full"}
    )
    ensemble_average: EnsembleAverage = field(
        default=EnsembleAverage.PROBS, metadata={"help": "average member probabilities (default) or logits"}
    )
    seed: int = field(default=0, metadata={"help": "seed of the training and evaluation mask streams"})
    max_instances_per_forward: int | None = field(
        default=None, metadata={"help": "cap on instances tiled into one forward pass (memory); None = all"}
    )

    def __post_init__(self) -> None:
        p = self.dropout_rate
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not math.isfinite(p) or not 0.0 <= p < 1.0:
            raise ValueError(f"dropout_rate={p!r} must be a number in [0, 1)")
        check_count_field(self, "n_instances")
        # None follows n_instances (see `eval_instances`), also after `replace`
        check_count_field(self, "n_eval_instances", optional=True)
        check_count_field(self, "max_instances_per_forward", optional=True)
        if not isinstance(self.rescale, bool):
            raise ValueError(f"rescale={self.rescale!r} must be True or False")
        check_count_field(self, "seed", minimum=0)
        # Frozen: normalise plain strings to the enums through object.__setattr__.
        object.__setattr__(self, "dropout_rate", float(p))
        object.__setattr__(self, "mask_scope", check_option(MaskScope, "mask_scope", self.mask_scope))
        object.__setattr__(self, "eval_mode", check_option(EvalMode, "eval_mode", self.eval_mode))
        object.__setattr__(
            self, "ensemble_average", check_option(EnsembleAverage, "ensemble_average", self.ensemble_average)
        )

    @property
    def eval_instances(self) -> int:
        """Members of the test-time ensemble: ``n_eval_instances``, or ``n_instances`` when that is None."""
        return self.n_instances if self.n_eval_instances is None else self.n_eval_instances

    @property
    def keep_prob(self) -> float:
        """Probability that a mask entry is kept, ``1 - p``."""
        return 1.0 - self.dropout_rate

    @property
    def sparsity(self) -> float:
        """``s = 2p - p^2``: probability that an entry of ``dW_hat`` is masked (Eqs. 9-11)."""
        p = self.dropout_rate
        return 2.0 * p - p * p

    @property
    def mask_value(self) -> float:
        """Value of a kept mask entry: 1, or ``1 / (1 - p)`` with ``rescale``."""
        return 1.0 / self.keep_prob if self.rescale else 1.0

    @property
    def expected_scale(self) -> float:
        """``E[m_B,i m_A,j]``: the training mean of a ``dW_hat`` entry over ``dW``'s entry.

        ``(1 - p)^2`` without rescaling, exactly 1 with it; the ``expected`` eval mode multiplies
        ``dW`` by this factor.
        """
        return (self.keep_prob * self.mask_value) ** 2

    def replace(self, **changes: Any) -> LoraDropoutConfig:
        """A copy with some fields changed, validated again."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict (enums as their string values)."""
        return {f.name: _plain(getattr(self, f.name)) for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LoraDropoutConfig:
        """Inverse of `to_dict`; unknown keys are an error that names them."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown LoraDropoutConfig field(s) {unknown}; known: {sorted(known)}")
        return cls(**data)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)


def _plain(value: Any) -> Any:
    return value.value if isinstance(value, Enum) else value
