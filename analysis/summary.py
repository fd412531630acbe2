"""The collected summary table: one row per number of a run, its columns declared once (`SUMMARY_COLUMNS`).

A number is named by ``quantity`` and, where it belongs to one, by the report, leave-one-out estimator,
parameter space and hypothesis it comes from: each in a column of its own, so readers select rows by
equality (`select`) and never parse a name. A key column that does not apply to a row holds
`NOT_APPLICABLE` (the empty string, so the column stays a plain string column in parquet and an
equality test needs no null handling); ``stderr`` is NaN where the number has none. `analysis.collect`
writes the rows (`row`) and appends the run's configuration columns (`analysis.collect.CONFIG_COLUMNS`).

Rows by ``quantity`` (and the key columns they set):

- final metrics, no keys: ``<split>_<metric>_<predictor>`` of ``steps.jsonl`` (``test_accuracy_ensemble``),
  of the unmasked model (``train_risk_full``, ``test_accuracy_full``), ``gap_<predictor>``, and
  ``sparsity_nominal`` / ``sparsity_realised`` (zero fraction of ``dW_hat``);
- ``bound``, ``bound_on_measured``, ``measured``, ``vacuous`` of every evaluable report: ``report`` (the
  ``BoundReport.name``: ``theorem44``, ``prop42[retrain]``, ``theorem44[expected]``, ``pacbayes_dropout``,
  ...), ``estimator`` for a ``prop42[<estimator>]`` report, ``hypothesis`` for the paper's reports;
- ``beta_hat`` (with its stderr) of each ``prop42[<estimator>]`` report, and Theorem 4.4's diagnostics
  ``lam_needed`` and ``n_needed``: the same keys as their report;
- the PAC-Bayes dropout certificate (``report`` ``pacbayes_dropout`` or ``pacbayes_dropout_ensemble``):
  ``certificate`` (its value also when >= 1), ``linear_certificate`` (the ensemble's) and its inputs at
  the best grid point (`analysis.collect.CERTIFICATE_INPUTS`: ``posterior_std``, ``kl``, ...);
- probes (``hessian_min_eig``, ``lipschitz_max``, ..., and ``<hessian quantity>_converged``, 1 when the
  Lanczos Ritz value met its tolerance): ``space`` and ``hypothesis`` of the ``probes.parquet`` row.
"""

from __future__ import annotations

import math

import pandas as pd

from bounds.runlog import Column

#: A key column that does not apply to a row.
NOT_APPLICABLE = ""

#: The summary's own columns, in order (`analysis.collect` appends the configuration columns).
SUMMARY_COLUMNS: tuple[Column, ...] = (
    Column("run_id", "str", "the run directory's name"),
    Column("quantity", "str", "what the number is (see the module docstring)"),
    Column("report", "str", "name of the BoundReport the number comes from (bounds.report, "
                            "bounds.report.certificate); empty when none"),
    Column("estimator", "str", "leave-one-out estimator of a Prop. 4.2 report (retrain, warm_start, influence); "
                               "empty when none. Not `method`: that column is the adapter's (lora, adalora)"),
    Column("space", "str", "parameter space of a probe (delta_w, factors); empty when none"),
    Column("hypothesis", "str", "the predictor whose probes the number rests on (unmasked, expected): a probe's, "
                                "or that a paper report was evaluated at; empty when none"),
    Column("value", "float", "the number (inf for a vacuous bound)"),
    Column("stderr", "float", "its standard error; NaN when it has none", nullable=True),
)
COLUMNS: tuple[str, ...] = tuple(c.name for c in SUMMARY_COLUMNS)
#: The columns that, with ``run_id`` and ``quantity``, identify a row.
KEYS: tuple[str, ...] = ("report", "estimator", "space", "hypothesis")


def row(quantity: str, value, stderr=math.nan, *, report: str = NOT_APPLICABLE, estimator: str = NOT_APPLICABLE,
        space: str = NOT_APPLICABLE, hypothesis: str = NOT_APPLICABLE) -> dict:
    """One summary row without its ``run_id`` (`frame` and `analysis.collect` add it)."""
    return {"quantity": quantity, "report": str(report), "estimator": str(estimator), "space": str(space),
            "hypothesis": str(hypothesis), "value": float(value), "stderr": float(stderr)}


def frame(rows: list[dict]) -> pd.DataFrame:
    """Rows of `row` as a table with the summary's columns (less ``run_id``), also when there are none."""
    return pd.DataFrame(rows, columns=[c for c in COLUMNS if c != "run_id"])


def select(summary: pd.DataFrame, quantity: str, *, report: str | None = None, estimator: str | None = None,
           space: str | None = None, hypothesis: str | None = None) -> pd.DataFrame:
    """Rows of ``quantity`` whose key columns equal the keys given (a key left at None is not filtered).

    >>> s = frame([row("bound", 0.2, report="theorem44", hypothesis="unmasked"),
    ...            row("bound", 0.3, report="theorem44[expected]", hypothesis="expected"),
    ...            row("hessian_min_eig", -0.5, space="delta_w", hypothesis="unmasked")])
    >>> select(s, "bound", report="theorem44")["value"].tolist()
    [0.2]
    >>> len(select(s, "bound")), len(select(s, "hessian_min_eig", space="factors"))
    (2, 0)
    """
    mask = summary["quantity"] == quantity
    for column, value in (("report", report), ("estimator", estimator), ("space", space),
                          ("hypothesis", hypothesis)):
        if value is not None:
            mask &= summary[column] == value
    return summary[mask]


def value(summary: pd.DataFrame, quantity: str, default: float = math.nan, **keys) -> float:
    """The value of the first row `select` finds, or ``default`` when there is none."""
    found = select(summary, quantity, **keys)["value"]
    return float(found.iloc[0]) if len(found) else default
