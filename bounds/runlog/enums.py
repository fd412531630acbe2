"""The closed vocabularies of the run directory, each declared once.

Every option is a ``str`` enum (the pattern of `lora_dropout.method.config.MaskScope`): a member
compares equal to its plain string, so ``Split.TRAIN == "train"`` and a table column holding
``"train"`` matches it, and every function that takes one also accepts the plain string
(`bounds.validation.check_option` turns either into the member). ``str()``, ``format()`` and JSON of a
member are its plain value, so anything written from one reads exactly as before.

Iteration order is meaningful where it says so (`StabilityMethod`: most trustworthy first).
"""

from __future__ import annotations

from enum import Enum

__all__ = [
    "BoundPredictor",
    "Hypothesis",
    "Predictor",
    "SamplePredictor",
    "Space",
    "Split",
    "StabilityMethod",
    "Status",
]


class _Option(str, Enum):
    """A str enum whose text form is its value (``str(Split.TRAIN) == "train"``, also in f-strings)."""

    def __str__(self) -> str:
        return str(self.value)

    def __format__(self, spec: str) -> str:
        return format(str(self.value), spec)


class Status(_Option):
    """``meta.json``'s ``status``: how the run ended (``running`` until it does)."""

    RUNNING = "running"
    SUCCESS = "success"
    FAILED = "failed"


class Split(_Option):
    """The data split a row was evaluated on."""

    TRAIN = "train"
    TEST = "test"


class Predictor(_Option):
    """Predictors whose risk is reported in ``steps.jsonl`` (docs/measurement.md, "Decisions": "report all three")."""

    DETERMINISTIC = "deterministic"
    MEMBER_MEAN = "member_mean"
    ENSEMBLE = "ensemble"


class SamplePredictor(_Option):
    """Row kinds of the per-sample table: one row per ensemble member, the single predictors, and ``full``
    (the unmasked model: theta(S) of the theory, whose curvature and stability the probes measure)."""

    MEMBER = "member"
    DETERMINISTIC = "deterministic"
    ENSEMBLE = "ensemble"
    FULL = "full"


class BoundPredictor(_Option):
    """Predictors whose risks a bound can be evaluated on (``full`` by default: the theory's hypothesis)."""

    FULL = "full"
    DETERMINISTIC = "deterministic"
    MEMBER_MEAN = "member_mean"
    ENSEMBLE = "ensemble"


class Space(_Option):
    """Parameter space of a probe: the entries of the merged update ``dW`` or the LoRA factors A and B."""

    DELTA_W = "delta_w"
    FACTORS = "factors"


class StabilityMethod(_Option):
    """How a leave-one-out pair of ``stability.parquet`` was measured; most trustworthy first."""

    RETRAIN = "retrain"  # coupled retraining from the same initialisation and streams
    WARM_START = "warm_start"  # from theta(S), more epochs on S and on S^i with coupled streams
    INFLUENCE = "influence"  # first-order (influence-function) approximation at theta(S)


class Hypothesis(_Option):
    """The hypothesis a probe row was measured at (``probes.parquet``'s ``hypothesis``).

    ``unmasked``: the model with the full ``dW`` (theta(S) of the theory, the default). ``expected``: the
    mean predictor of the masked training loss, every ``dW`` scaled by its training mean ``E[m_B m_A^T]``
    (``(1-p)^2`` without rescale, 1 with it), the predictor of the ``expected`` eval mode.
    """

    UNMASKED = "unmasked"
    EXPECTED = "expected"
