"""The run directory: the one contract between training (`lora_dropout`) and theory (`bounds`).

A run directory holds

=====================  =====================================================================
``meta.json``          what ran and how it ended (`META_FIELDS`)
``steps.jsonl``        one line per (evaluation, split, predictor): risks and calibration
``samples.parquet``    the per-sample loss matrix (sample x instance) at each evaluation
``calibration.parquet``  reliability-diagram bins of each predictor at each evaluation
``modules.parquet``    realised sparsity and ``||dW||`` per adapted module
``probes.parquet``     curvature and Lipschitz measurements
``stability.parquet``  leave-one-out pairs (measured stability)
``certificates.parquet``  PAC-Bayes dropout certificate measurements, one row per posterior_std
``adapter/``           peft adapter + LoRA Dropout config (reloadable)
``prior/``             PAC-Bayes prior: initial parameters, trained prior mean, prior/certifiable ids
                       (`PRIOR_FILES`)
``bounds.json``        the bound reports (written by ``lora-dropout bounds``)
=====================  =====================================================================

Every column is declared once below (`TABLES`), with its meaning; `validate_run` checks a directory
against these declarations and `read_run` reads it. This module needs only the standard library,
numpy, pandas and pyarrow.
"""

from __future__ import annotations

import json
import math
import os
import socket
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

SCHEMA_VERSION = 1

STATUSES = ("running", "success", "failed")
SPLITS = ("train", "test")
#: Predictors whose risk is reported (theory.md section 4: "report all three").
PREDICTORS = ("deterministic", "member_mean", "ensemble")
#: Row kinds of the per-sample table: one row per ensemble member, the single predictors, and ``full``
#: (the unmasked model: theta(S) of the theory, whose curvature and stability the probes measure).
SAMPLE_PREDICTORS = ("member", "deterministic", "ensemble", "full")
#: Predictors whose risks a bound can be evaluated on (``full`` by default: the theory's hypothesis).
BOUND_PREDICTORS = ("full", "deterministic", "member_mean", "ensemble")
#: Parameter space of ``stability.parquet``'s ``param_distance`` (every method): the merged updates
#: ``dW_k`` of the adapted modules, the ``delta_w`` space of the probes. A bound that combines it with a
#: probe (``eta * param_distance``) must take the probe in this space.
PARAM_DISTANCE_SPACE = "delta_w"
#: The hypothesis a probe row was measured at (``probes.parquet``'s ``hypothesis``): ``unmasked``, the
#: model with the full ``dW`` (theta(S) of the theory, the default), or ``expected``, the mean predictor
#: of the masked training loss: every ``dW`` scaled by its training mean ``E[m_B m_A^T]`` (``(1-p)^2``
#: without rescale, 1 with it), the predictor of the ``expected`` eval mode.
HYPOTHESES = ("unmasked", "expected")

META_FIELDS = {
    "schema_version": "int: SCHEMA_VERSION of the writer",
    "run_id": "str: unique id, also the directory name",
    "status": "str: running (until the end), success, or failed",
    "error": "str or null: the exception (or 'interrupted') when failed",
    "config": "dict: the full resolved configuration (train, adapter, lora_dropout sections)",
    "seeds": "dict: the seeds of the init, data-order and mask streams",
    "versions": "dict: python and package versions",
    "git": "dict: commit and dirty flag of the toolkit checkout (nulls outside a checkout)",
    "device": "str: torch device the run used",
    "host": "str: machine that ran it",
    "pid": "int: process id of the writer (to tell a live run from one killed without notice)",
    "started_at": "str: ISO-8601 UTC",
    "finished_at": "str or null: ISO-8601 UTC",
    "wall_s": "float or null: wall time of the run in seconds",
    "data": "dict: data source and split sizes (TextSplits.describe())",
    "prior": "dict or null (runs before it): prior_fraction, n_prior and n_certifiable (examples the prior "
             "trained on / not), prior_steps, and the posterior phase: posterior_first_step (= prior_steps; "
             "steps.jsonl's step counts both phases), posterior_first_epoch, posterior_epochs, posterior_lr "
             "(steps.jsonl's epoch counts posterior epochs)",
    "final": "dict: metrics of the last evaluation, keyed split/predictor",
}
REQUIRED_META = ("schema_version", "run_id", "status", "config", "started_at")

#: The PAC-Bayes prior of a run (theory.md section 6), written by ``lora-dropout train`` before the
#: posterior trains (runs from before it lack the folder). Tensor files are keyed by peft's
#: ``get_peft_model_state_dict`` names, the keys of ``adapter/adapter_model.safetensors``.
PRIOR_DIR = "prior"
PRIOR_FILES = {
    "init.safetensors": "the trainable parameters at the seeded initialisation, before any step (the "
                        "data-free prior mean)",
    "prior.safetensors": "the prior mean trained on prior_ids (only when prior_fraction > 0): config.train.epochs "
                         "epochs at config.train.lr on the first floor(prior_fraction * n) positions of the "
                         "seeded prior order (lora_dropout.runs.train.prior_order); the posterior trains from it",
    "prior.json": '{"prior_fraction": float, "prior_ids": [sample ids the prior trained on], "certifiable_ids": '
                  "[the other training sample ids]}, both in the training split's order; prior_fraction 0: "
                  "prior_ids [] and certifiable_ids every training id",
}

#: Default grid of ``posterior_std`` of ``lora-dropout certify``: fixed in advance, before any data is
#: seen, so the union bound over it is valid; a run's certificates are checked against it (or against a
#: grid given as an option), never against a grid chosen from the run's own numbers.
DEFAULT_POSTERIOR_STD_GRID = (0.001, 0.003, 0.01, 0.03, 0.1)


class RunLogError(ValueError):
    """A run directory that does not satisfy the schema; the message lists every problem found."""


@dataclass(frozen=True)
class Column:
    name: str
    kind: str  # "int", "float", "str", "bool"
    description: str
    nullable: bool = False
    finite: bool = False  # values must be finite numbers (losses)
    default: Any = None  # a column added later: older tables without it read as this value


@dataclass(frozen=True)
class Table:
    """A table of the run directory: file, columns, unique key, and the command that produces it."""

    name: str
    filename: str
    description: str
    columns: tuple[Column, ...]
    key: tuple[str, ...]
    producer: str
    fmt: str = "parquet"

    @property
    def column_names(self) -> list[str]:
        return [c.name for c in self.columns]


C = Column
_RISK = (
    C("risk", "float", "mean cross-entropy of the predictor on the split (nats)", finite=True),
    C("accuracy", "float", "fraction of correct argmax predictions"),
    C("ece", "float", "expected calibration error, 15 equal-width confidence bins"),
    C("nll", "float", "mean negative log-likelihood of the predictive distribution (nats)"),
    C("brier", "float", "mean multi-class Brier score sum_k (q_k - 1[y = k])^2"),
)

TABLES: dict[str, Table] = {
    t.name: t
    for t in (
        Table(
            "steps", "steps.jsonl",
            "one line per evaluation, split and predictor; appended and flushed, so a crash loses nothing written",
            (
                C("step", "int", "optimizer steps taken when evaluated"),
                C("epoch", "float", "epochs completed when evaluated"),
                C("split", "str", "train or test"),
                C("predictor", "str", "deterministic (expected or full dW), member_mean (mean over members), "
                                      "or ensemble (Eq. 8)"),
                C("n", "int", "examples evaluated"),
                *_RISK,
                C("objective", "float", "mean Eq. 7 training loss since the previous evaluation", nullable=True),
                C("wall_s", "float", "seconds since the run started"),
            ),
            key=("step", "split", "predictor"),
            producer="lora-dropout train",
            fmt="jsonl",
        ),
        Table(
            "samples", "samples.parquet",
            "per-sample loss matrix: every evaluated example under every member, the deterministic "
            "predictor and the ensemble",
            (
                C("step", "int", "optimizer steps taken when evaluated"),
                C("split", "str", "train or test"),
                C("sample_id", "int", "stable example id of the data loader"),
                C("predictor", "str", "member, deterministic, ensemble, or full (unmasked dW; final evaluation "
                                      "only)"),
                C("instance", "int", "member index r for predictor=member, else -1"),
                C("loss", "float", "cross-entropy of this example under this predictor (nats)", finite=True),
                C("correct", "bool", "argmax prediction equals the label"),
                C("confidence", "float", "probability of the predicted class"),
            ),
            key=("step", "split", "sample_id", "predictor", "instance"),
            producer="lora-dropout train (every evaluation; --samples-every)",
        ),
        Table(
            "calibration", "calibration.parquet",
            "reliability-diagram bins: 15 equal-width confidence bins on [0, 1]; member_mean pools the "
            "predictions of all members (steps.jsonl's member_mean ECE is the mean of per-member ECEs)",
            (
                C("step", "int", "optimizer steps taken when evaluated"),
                C("split", "str", "train or test"),
                C("predictor", "str", "deterministic, member_mean, or ensemble"),
                C("bin", "int", "bin index 0..14"),
                C("lower", "float", "lower bin edge"),
                C("upper", "float", "upper bin edge"),
                C("confidence", "float", "mean confidence in the bin (NaN when empty)", nullable=True),
                C("accuracy", "float", "accuracy in the bin (NaN when empty)", nullable=True),
                C("count", "int", "predictions in the bin"),
            ),
            key=("step", "split", "predictor", "bin"),
            producer="lora-dropout train",
        ),
        Table(
            "modules", "modules.parquet",
            "realised sparsity per adapted module (site = module::adapter) at each evaluation",
            (
                C("step", "int", "optimizer steps taken"),
                C("module", "str", "site name <module path>::<adapter>"),
                C("in_features", "int", "columns of A (input features)"),
                C("out_features", "int", "rows of B (output features)"),
                C("n_masks", "int", "sampled training masks the realised values are computed from"),
                C("nominal_keep", "float", "1 - p"),
                C("keep_in", "float", "realised kept fraction of the input-feature mask (columns of A)"),
                C("keep_out", "float", "realised kept fraction of the output-feature mask (rows of B)"),
                C("nominal_sparsity", "float", "s = 2p - p^2"),
                C("dw_zero_fraction", "float", "realised zero fraction of dW_hat = diag(m_B) B A diag(m_A)"),
                C("nominal_all_dropped", "float", "probability the whole dW_hat is zero: 1-(1-p^in)(1-p^out)"),
                C("all_dropped", "float", "realised fraction of masks that zero the whole dW_hat"),
                C("dw_norm", "float", "Frobenius norm of the unmasked dW = B A * scaling"),
            ),
            key=("step", "module"),
            producer="lora-dropout train",
        ),
        Table(
            "probes", "probes.parquet",
            "curvature and Lipschitz measurements at theta(S)",
            (
                C("quantity", "str", "lipschitz_max, lipschitz_q99, lipschitz_mean, hessian_min_eig, "
                                     "hessian_max_eig, grad_norm"),
                C("space", "str", "delta_w (entries of dW) or factors (LoRA A and B)"),
                C("value", "float", "the measurement"),
                C("stderr", "float", "uncertainty of the value where one is defined", nullable=True),
                C("iterations", "int", "Lanczos iterations or samples used"),
                C("residual", "float", "Lanczos residual ||H v - lambda v|| (NaN where not applicable)",
                  nullable=True),
                C("converged", "bool", "hessian_* rows: Lanczos reached its tolerance (False: the value is the "
                                       "best unconverged estimate, the bounds treat it as not measured); True "
                                       "on the other rows, which are computed exactly"),
                C("n", "int", "training examples the probe was measured on (lipschitz_*: the examples the "
                              "max / quantile / mean is over, fewer than the run's n_train when a subset "
                              "was probed; hessian_*: those whose mean loss's Hessian was taken)"),
                C("lam", "float", "regularisation strength of the regularised loss", nullable=True),
                C("hypothesis", "str", "the predictor probed (HYPOTHESES): unmasked (full dW, theta(S)) or "
                                       "expected (every dW times its training mean E[m_B m_A^T], the expected "
                                       "eval mode's predictor); tables written before this column read as "
                                       "unmasked", default="unmasked"),
            ),
            key=("quantity", "space", "hypothesis"),
            producer="lora-dropout probe RUN_DIR --curvature",
        ),
        Table(
            "stability", "stability.parquet",
            "leave-one-out pairs: the removed example's loss under theta(S) and theta(S^i)",
            (
                C("sample_id", "int", "the removed training example"),
                C("method", "str", "retrain (coupled retraining), warm_start, or influence"),
                C("loss_s", "float", "loss of the example under theta(S), unmasked model (the full predictor)",
                  finite=True),
                C("loss_si", "float", "loss of the example under theta(S^i), unmasked model", finite=True),
                C("param_distance", "float", "sqrt(sum_k ||dW_k(S^i) - dW_k(S)||_F^2): distance of the merged "
                                             "updates, in the delta_w space of the probes (PARAM_DISTANCE_SPACE; "
                                             "the classification head's change is not included)",
                  nullable=True),
                C("wall_s", "float", "seconds this estimate took"),
            ),
            key=("sample_id", "method"),
            producer="lora-dropout probe RUN_DIR --stability-k K",
        ),
        Table(
            "certificates", "certificates.parquet",
            "PAC-Bayes dropout certificate measurements (theory.md section 6; the toolkit's own): per "
            "posterior_std of a grid fixed before the data, the KL to the prior and the empirical Gibbs risks "
            "of the posterior Q (LoRA Dropout masks times N(theta, posterior_std^2 I)) from `draws` draws per "
            "example, fresh masks and noise per example and draw",
            (
                C("posterior_std", "float", "sigma > 0: std of the Gaussian part of posterior and prior"),
                C("p", "float", "dropout_rate of the run (each entry of A and B kept with probability 1 - p)"),
                C("n_bound", "int", "n_b: training examples the empirical risks are computed on (all n for the "
                                    "data-free init prior; prior/prior.json's certifiable_ids for the trained one)"),
                C("n_test", "int", "test examples the test Gibbs risks are computed on"),
                C("draws", "int", "k: posterior draws per example (per split)"),
                C("factor_sq_dist", "float", "||A - A_P||^2 + ||B - B_P||^2 over the adapted modules", finite=True),
                C("head_sq_dist", "float", "||head - head_P||^2 over the trained head (0 when none)", finite=True),
                C("kl_factor_term", "float", "(1 - p) factor_sq_dist / (2 posterior_std^2)"),
                C("kl_head_term", "float", "head_sq_dist / (2 posterior_std^2)"),
                C("kl", "float", "kl_factor_term + kl_head_term: the upper bound on KL(Q || P)"),
                C("train_gibbs_error", "float", "mean over the n_b x k draws of 1[argmax != label] (the Monte "
                                                "Carlo estimate of the empirical Gibbs 0-1 risk)", finite=True),
                C("train_gibbs_linear", "float", "mean over the n_b x k draws of 1 - prob_label (linear loss)",
                  finite=True),
                C("test_gibbs_error", "float", "the same 0-1 mean over n_test x k draws on the test split "
                                               "(measured, held against the certificate)", finite=True),
                C("test_gibbs_linear", "float", "the same linear-loss mean on the test split", finite=True),
                C("prior", "str", "init (the data-free seeded initialisation, prior/init.safetensors) or trained "
                                  "(prior/prior.safetensors, trained on prior/prior.json's prior_ids)"),
                C("grid_size", "int", "|grid|: posterior_std values certified together (the union bound "
                                      "splits delta and delta_mc over them)"),
                C("delta", "float", "failure probability of the PAC-Bayes step, whole grid"),
                C("delta_mc", "float", "failure probability of the Monte Carlo step, whole grid"),
                C("seed", "int", "root of the posterior noise stream (the masks use the run's mask seed)"),
                C("passes", "int", "forward passes over the certified and test splits the certify call made, "
                                   "counted as one posterior draw of every example (grid_size x draws)"),
            ),
            key=("posterior_std",),
            producer="lora-dropout certify RUN_DIR",
        ),
    )
}


@dataclass
class RunLog:
    """A run directory read through the schema. Tables are read on first access."""

    path: Path
    meta: dict[str, Any]
    steps: pd.DataFrame
    _tables: dict[str, pd.DataFrame] = field(default_factory=dict, repr=False)

    @property
    def run_id(self) -> str:
        return self.meta["run_id"]

    @property
    def config(self) -> dict[str, Any]:
        return self.meta["config"]

    @property
    def n_train(self) -> int:
        """``n`` of the bounds: the training examples the run used (``data.n_train``, else the config's)."""
        data = self.meta.get("data") or {}
        if "n_train" in data:
            return int(data["n_train"])
        value = (self.config.get("train") or {}).get("n_train")
        if value is None:
            raise RunLogError(f"{self.path}/meta.json records neither data.n_train nor config.train.n_train")
        return int(value)

    def has(self, name: str) -> bool:
        return (self.path / TABLES[name].filename).is_file()

    def table(self, name: str) -> pd.DataFrame:
        """A parquet table; a missing one raises `MissingTableError` naming its producer command."""
        if name == "steps":
            return self.steps
        if name not in self._tables:
            spec = TABLES[name]
            path = self.path / spec.filename
            if not path.is_file():
                raise MissingTableError(name, self.path)
            frame = pd.read_parquet(path)
            for col in spec.columns:
                if col.default is not None and col.name not in frame.columns:
                    frame[col.name] = col.default  # written before the column existed
            self._tables[name] = frame
        return self._tables[name]


class MissingTableError(RunLogError):
    """A table a computation needs is absent; the message says which command produces it."""

    def __init__(self, name: str, run_dir: Path):
        spec = TABLES[name]
        self.table = name
        super().__init__(
            f"run {run_dir} has no {spec.filename} ({spec.description}); produce it with: "
            f"{spec.producer.replace('RUN_DIR', str(run_dir))}"
        )


def _read_json_object(path: Path) -> dict[str, Any]:
    """A JSON file holding an object, or RunLogError saying what is wrong with it."""
    try:
        value = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise RunLogError(f"{path} is corrupted: not valid JSON ({exc})") from None
    if not isinstance(value, dict):
        raise RunLogError(f"{path} is corrupted: expected a JSON object, got {type(value).__name__}")
    return value


def read_meta(run_dir: str | Path) -> dict[str, Any]:
    path = Path(run_dir) / "meta.json"
    if not path.is_file():
        raise RunLogError(f"{run_dir} is not a run directory: meta.json is missing")
    meta = _read_json_object(path)
    version = meta.get("schema_version")
    if version != SCHEMA_VERSION:
        raise RunLogError(
            f"{path} has schema_version {version!r}; this toolkit reads version {SCHEMA_VERSION}"
        )
    return meta


def run_state(meta: dict[str, Any]) -> str:
    """``success``, ``failed``, ``running``, or ``stale``: marked running, but its writer process on this
    host is gone (killed without a chance to mark the run failed, e.g. SIGKILL or a power loss)."""
    status = meta.get("status")
    if status != "running":
        return status
    if meta.get("host") == socket.gethostname() and isinstance(meta.get("pid"), int):
        try:
            os.kill(meta["pid"], 0)
        except ProcessLookupError:
            return "stale"
        except PermissionError:
            pass  # alive, owned by someone else
    return "running"


def read_steps(run_dir: str | Path) -> pd.DataFrame:
    """``steps.jsonl`` as a DataFrame; a torn last line (a crash mid-write) is dropped, others must parse."""
    path = Path(run_dir) / TABLES["steps"].filename
    columns = TABLES["steps"].column_names
    if not path.is_file():
        return pd.DataFrame(columns=columns)
    rows = []
    lines = path.read_text().splitlines()
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            if number == len(lines):
                break  # the writer was killed while appending this line
            raise RunLogError(f"{path} line {number} is not valid JSON") from None
    return pd.DataFrame(rows, columns=columns) if rows else pd.DataFrame(columns=columns)


def read_run(run_dir: str | Path) -> RunLog:
    """Read a run directory (meta and steps now, parquet tables on demand). Does not validate."""
    run_dir = Path(run_dir)
    return RunLog(run_dir, read_meta(run_dir), read_steps(run_dir))


def _check_table(spec: Table, frame: pd.DataFrame) -> list[str]:
    problems = []
    missing = [c for c in spec.column_names if c not in frame.columns]
    if missing:
        return [f"{spec.filename}: missing column(s) {missing}"]
    for col in spec.columns:
        values = frame[col.name]
        if not col.nullable and values.isna().any():
            problems.append(f"{spec.filename}: column {col.name} has {int(values.isna().sum())} missing values")
        if col.finite:
            numeric = pd.to_numeric(values, errors="coerce").to_numpy(dtype=float)
            bad = ~np.isfinite(numeric)
            if bad.any():
                problems.append(f"{spec.filename}: column {col.name} has {int(bad.sum())} non-finite values")
        if col.kind == "bool" and not pd.api.types.is_bool_dtype(values):
            present = values.dropna()
            flags = present.map(lambda v: isinstance(v, (bool, np.bool_)))
            if not flags.all():
                problems.append(f"{spec.filename}: column {col.name} must be boolean, got "
                                f"{present[~flags].head(3).tolist()}")
    if len(frame) and frame.duplicated(list(spec.key)).any():
        dup = frame[frame.duplicated(list(spec.key), keep=False)].head(1)[list(spec.key)].to_dict("records")[0]
        problems.append(f"{spec.filename}: duplicate key {spec.key} = {dup}")
    return problems


def _check_certificates(frame: pd.DataFrame) -> list[str]:
    """Ranges of certificates.parquet: risks in [0, 1], positive sigma and counts, one grid per table."""
    name = TABLES["certificates"].filename
    problems = []
    for col in ("train_gibbs_error", "train_gibbs_linear", "test_gibbs_error", "test_gibbs_linear", "p"):
        bad = ~frame[col].between(0.0, 1.0)
        if bad.any():
            problems.append(f"{name}: column {col} must lie in [0, 1], got {frame.loc[bad, col].iloc[0]!r}")
    for col in ("posterior_std", "n_bound", "draws", "grid_size"):
        if not (frame[col] > 0).all():
            problems.append(f"{name}: column {col} must be > 0")
    for col in ("prior", "grid_size", "delta", "delta_mc", "draws", "seed", "p", "n_bound"):
        if frame[col].nunique() > 1:
            problems.append(f"{name}: column {col} must be one value for the whole grid, got "
                            f"{sorted(frame[col].unique().tolist())}")
    if len(frame) and int(frame["grid_size"].iloc[0]) != len(frame):
        problems.append(f"{name}: grid_size {int(frame['grid_size'].iloc[0])} but {len(frame)} rows")
    unknown = sorted(set(frame["prior"]) - {"init", "trained"})
    if unknown:
        problems.append(f"{name}: unknown prior value(s) {unknown}")
    return problems


def read_prior_record(run_dir: str | Path) -> dict[str, Any] | None:
    """``RUN_DIR/prior/prior.json`` (`PRIOR_FILES`) checked, or None when the run has none.

    Returns ``{"prior_fraction": float, "prior_ids": list[int], "certifiable_ids": list[int]}``.

    Raises
    ------
    RunLogError
        When the file is not valid JSON or lacks a field or has one of the wrong type.
    """
    path = Path(run_dir) / PRIOR_DIR / "prior.json"
    if not path.is_file():
        return None
    record = _read_json_object(path)
    missing = [k for k in ("prior_fraction", "prior_ids", "certifiable_ids") if k not in record]
    if missing:
        raise RunLogError(f"{path} lacks field(s) {missing}")
    fraction = record["prior_fraction"]
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0.0 <= fraction < 1.0:
        raise RunLogError(f"{path}: prior_fraction must be a number in [0, 1), got {fraction!r}")
    for key in ("prior_ids", "certifiable_ids"):
        ids = record[key]
        if not isinstance(ids, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
            raise RunLogError(f"{path}: {key} must be a list of integer sample ids")
    return {"prior_fraction": float(fraction), "prior_ids": list(record["prior_ids"]),
            "certifiable_ids": list(record["certifiable_ids"])}


def validate_run(run_dir: str | Path, require: Iterable[str] = ()) -> RunLog:
    """Check a run directory against the schema and return it read.

    Checks meta.json (parses, schema version, required fields, status), steps.jsonl and every
    parquet table present (columns, duplicate keys, non-finite losses), and that the tables named in
    ``require`` exist.

    Raises
    ------
    RunLogError
        Listing every problem found.
    """
    run_dir = Path(run_dir)
    run = read_run(run_dir)  # raises on a missing/corrupted meta.json or a wrong schema version
    problems = []
    missing_meta = [k for k in REQUIRED_META if k not in run.meta]
    if missing_meta:
        problems.append(f"meta.json: missing field(s) {missing_meta}")
    status = run.meta.get("status")
    if status not in STATUSES:
        problems.append(f"meta.json: status {status!r} is not one of {STATUSES}")
    if status == "failed" and not run.meta.get("error"):
        problems.append("meta.json: status failed without an error")
    problems += _check_table(TABLES["steps"], run.steps)
    for value, allowed, column in ((run.steps["split"], SPLITS, "split"),
                                   (run.steps["predictor"], PREDICTORS, "predictor")):
        unknown = sorted(set(value.dropna()) - set(allowed))
        if unknown:
            problems.append(f"steps.jsonl: unknown {column} value(s) {unknown}")
    for name, spec in TABLES.items():
        if name == "steps":
            continue
        if not run.has(name):
            if name in require:
                problems.append(str(MissingTableError(name, run_dir)))
            continue
        try:
            frame = run.table(name)
        except Exception as exc:  # a torn or foreign parquet file
            problems.append(f"{spec.filename}: unreadable ({exc})")
            continue
        problems += _check_table(spec, frame)
        if name == "certificates" and not any(p.startswith(spec.filename) for p in problems):
            problems += _check_certificates(frame)
    if problems:
        raise RunLogError(f"run {run_dir} is invalid:\n  - " + "\n  - ".join(problems))
    return run


def write_atomic(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Create or replace ``path`` atomically: ``write`` fills a temporary file beside it, which is then
    renamed over ``path``, so a reader never sees a half-written file. Permissions follow the umask,
    as for a file opened for writing (the temporary file itself starts private)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(Path(tmp))
        with open(tmp, "rb+") as fh:  # on disk before the rename makes it visible
            os.fsync(fh.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_json(path: str | Path, data: Any) -> Path:
    """Strict JSON (no NaN/Infinity: `jsonable` turns them into null), written with `write_atomic`."""
    text = json.dumps(jsonable(data), indent=2, sort_keys=True, allow_nan=False) + "\n"
    return write_atomic(path, lambda tmp: tmp.write_text(text))


def jsonable(value: Any) -> Any:
    """Plain JSON value: numpy scalars and arrays to Python, non-finite floats to None (strict JSON)."""
    if isinstance(value, np.ndarray):
        value = value.tolist()
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
