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
``certificates_iid_rows.parquet``  the same at row level when grouped data's rows are declared i.i.d.
``certify_log.jsonl``  one line per certificate measurement on the run (the union bound counts them)
``learned_certificates.parquet``  the same for a learned posterior, one row per prior_std
``adapter/``           peft adapter + LoRA Dropout config (reloadable)
``prior/``             PAC-Bayes prior: initial parameters, trained prior mean, prior/certifiable ids
                       (`PRIOR_FILES`)
``posterior/``         a posterior learned by minimising the certificate (`LEARNED_FILES`)
``bounds.json``        the bound reports (written by ``lora-dropout bounds``)
=====================  =====================================================================

Modules: `schema` (every table and column declared once, `TABLES`, with its meaning; the ``meta.json``
fields and the prior folder), `enums` (the closed vocabularies: `Status`, `Split`, `Predictor`, ...),
`meta` (``meta.json`` as the typed `RunMeta`), `io` (`read_run`, `validate_run`, which checks a
directory against the declarations, and the atomic writers), `errors`. Needs only the standard
library, numpy, pandas and pyarrow.
"""

from __future__ import annotations

from .enums import (
    BoundPredictor,
    Hypothesis,
    Predictor,
    SamplePredictor,
    Space,
    Split,
    StabilityMethod,
    Status,
)
from .errors import MissingTableError, RunLogError
from .io import (
    RunLog,
    append_certify_log,
    check_certificates,
    check_learned_certificates,
    check_table,
    jsonable,
    read_certify_log,
    read_learned_record,
    read_prior_record,
    read_run,
    read_steps,
    run_state,
    validate_run,
    write_atomic,
    write_json,
)
from .meta import RunMeta, read_meta, read_run_meta
from .schema import (
    CERTIFY_LOG,
    DEFAULT_POSTERIOR_STD_GRID,
    LEARNED_DIR,
    LEARNED_FILES,
    META_FIELDS,
    PARAM_DISTANCE_SPACE,
    PRIOR_DIR,
    PRIOR_FILES,
    REQUIRED_META,
    SCHEMA_VERSION,
    TABLES,
    Column,
    Table,
)

__all__ = [
    "DEFAULT_POSTERIOR_STD_GRID",
    "META_FIELDS",
    "PARAM_DISTANCE_SPACE",
    "LEARNED_DIR",
    "LEARNED_FILES",
    "CERTIFY_LOG",
    "PRIOR_DIR",
    "PRIOR_FILES",
    "REQUIRED_META",
    "SCHEMA_VERSION",
    "TABLES",
    "BoundPredictor",
    "Column",
    "Hypothesis",
    "MissingTableError",
    "Predictor",
    "RunLog",
    "RunLogError",
    "RunMeta",
    "SamplePredictor",
    "Space",
    "Split",
    "StabilityMethod",
    "Status",
    "Table",
    "check_certificates",
    "check_learned_certificates",
    "check_table",
    "jsonable",
    "read_meta",
    "read_learned_record",
    "append_certify_log",
    "read_certify_log",
    "read_prior_record",
    "read_run",
    "read_run_meta",
    "read_steps",
    "run_state",
    "validate_run",
    "write_atomic",
    "write_json",
]
