"""Collection: many run directories and their bound reports into tidy tables.

`collect(study_dir)` reads every run directory under a study (or any list of run directories),
validates it, evaluates its bounds, and returns a `Collection` of tidy tables, each row carrying the
run id and the run's configuration columns. Runs that cannot be used (corrupted, failed, still
running) are skipped, counted and reported with the reason; they never stop the collection.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd

from bounds.compression import ensemble_compression
from bounds.estimators import estimate_risks
from bounds.report import CERTIFICATE_REPORTS, LEARNED_REPORT, BoundReport, evaluate_run
from bounds.runlog import (
    Predictor,
    RunLog,
    RunLogError,
    RunMeta,
    StabilityMethod,
    run_state,
    validate_run,
    write_atomic,
    write_json,
)
from bounds.settings import BoundSettings, CertificateSettings

from . import summary
from .summary import NOT_APPLICABLE

#: Configuration columns attached to every row: (column, section, field).
CONFIG_COLUMNS = (
    ("method", "adapter", "method"),
    ("dropout_rate", "lora_dropout", "dropout_rate"),
    ("n_instances", "lora_dropout", "n_instances"),
    ("n_eval_instances", "lora_dropout", "n_eval_instances"),
    ("mask_scope", "lora_dropout", "mask_scope"),
    ("rescale", "lora_dropout", "rescale"),
    ("eval_mode", "lora_dropout", "eval_mode"),
    ("ensemble_average", "lora_dropout", "ensemble_average"),
    ("n_train", "train", "n_train"),
    ("seed", "train", "seed"),
    ("lr", "train", "lr"),
    ("epochs", "train", "epochs"),
)
TABLE_NAMES = ("runs", "summary", "curves", "reliability", "compression", "bounds", "modules")
#: The certificate reports (grid and learned posterior): the hypothesis does not apply to them.
_CERTIFICATES = (*CERTIFICATE_REPORTS, LEARNED_REPORT)
#: Inputs of the certificate reports added to the summary at the best grid point (report input name -> summary
#: quantity; the report's name goes into the ``report`` column).
CERTIFICATE_INPUTS = {"posterior_std": "posterior_std", "kl": "kl", "gibbs_error": "train_gibbs_error",
                      "gibbs_linear": "train_gibbs_linear", "n_bound": "n_bound", "n_bound_rows": "n_bound_rows",
                      "posterior_draws": "posterior_draws"}


@dataclass
class Collection:
    """Tidy tables over runs (every table has ``run_id`` and the `CONFIG_COLUMNS`).

    runs : one row per usable run
    summary : `analysis.summary.SUMMARY_COLUMNS` per number of a run (final metrics, gaps, bounds, beta_hat,
        probes, sparsity; with certificates.parquet, the certificate (its value, also when >= 1), the
        ensemble's linear certificate and `CERTIFICATE_INPUTS` at the best posterior_std)
    curves : every ``steps.jsonl`` row
    reliability : every ``calibration.parquet`` row
    compression : ``bounds.compression.ensemble_compression`` rows
    bounds : ``BoundReport.to_frame()`` rows
    modules : ``modules.parquet`` rows at each run's final step
    skipped : ``[(run directory, reason)]``
    """

    runs: pd.DataFrame
    summary: pd.DataFrame
    curves: pd.DataFrame
    reliability: pd.DataFrame
    compression: pd.DataFrame
    bounds: pd.DataFrame
    modules: pd.DataFrame
    skipped: list[tuple[str, str]] = field(default_factory=list)

    def save(self, directory: str | Path) -> Path:
        """Write each table as ``<name>.parquet`` and the skipped runs as ``skipped.json``."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        for name in TABLE_NAMES:
            frame = getattr(self, name)
            write_atomic(directory / f"{name}.parquet", lambda tmp, frame=frame: frame.to_parquet(tmp, index=False))
        write_json(directory / "skipped.json", [list(s) for s in self.skipped])
        return directory


def config_columns(meta: RunMeta) -> dict:
    out = {column: meta.option(section, name, None) for column, section, name in CONFIG_COLUMNS}
    if out["n_train"] == "auto":  # the default, resolved against the data
        out["n_train"] = meta.n_train
    if out["n_eval_instances"] is None:  # None means "as many as n_instances" (LoraDropoutConfig.eval_instances)
        out["n_eval_instances"] = out["n_instances"]
    return out


def _estimator(report_name: str) -> str:
    """The leave-one-out estimator of a Prop. 4.2 report (bounds.report names one ``prop42[<estimator>]`` per
    estimator), else `NOT_APPLICABLE`."""
    return next((str(m) for m in StabilityMethod if report_name == f"prop42[{m}]"), NOT_APPLICABLE)


def _summary_rows(run: RunLog, reports: list[tuple[str, BoundReport]], probes: pd.DataFrame | None,
                  modules: pd.DataFrame | None) -> list[dict]:
    """`analysis.summary` rows of one run; ``reports`` pairs each report with the hypothesis it was evaluated at."""
    rows: list[dict] = []

    def add(quantity: str, value, stderr=math.nan, **keys):
        rows.append(summary.row(quantity, value, stderr, **keys))

    steps = run.steps
    final = steps[steps["step"] == steps["step"].max()]
    for r in final.itertuples():
        for metric in ("risk", "accuracy", "ece", "nll", "brier"):
            add(f"{r.split}_{metric}_{r.predictor}", getattr(r, metric))
    by = final.set_index(["split", "predictor"])["risk"]
    for predictor in Predictor:
        if ("test", predictor) in by and ("train", predictor) in by:
            add(f"gap_{predictor}", by[("test", predictor)] - by[("train", predictor)])
    samples = run.table("samples")
    if (samples["predictor"] == "full").any():
        risks = estimate_risks(samples, "full")
        add("train_risk_full", risks.train.value, risks.train.stderr)
        add("test_risk_full", risks.test.value, risks.test.stderr)
        add("gap_full", risks.gap)
        last = samples[(samples["step"] == risks.step) & (samples["predictor"] == "full")]
        for split, rows_ in last.groupby("split"):
            add(f"{split}_accuracy_full", rows_["correct"].mean())
    for hypothesis, report in reports:
        if not report.evaluable:
            continue
        # the certificate rests on no probe: hypothesis does not apply to it
        keys = {"report": report.name, "estimator": _estimator(report.name),
                "hypothesis": NOT_APPLICABLE if report.name in _CERTIFICATES else hypothesis}
        add("bound", report.value if not report.vacuous else math.inf, **keys)
        add("bound_on_measured", report.bound_on_measured if not report.vacuous else math.inf, **keys)
        add("measured", report.measured, **keys)
        add("vacuous", float(report.vacuous), **keys)
        stderr = next((q.stderr for q in report.inputs if q.name == "beta_hat"), math.nan)
        for q in report.diagnostics:  # Thm 4.4: what it would take (lam_needed, n_needed)
            if q.name in ("lam_needed", "n_needed"):
                add(q.name, q.value, **keys)
        if keys["estimator"]:  # Prop. 4.2 per estimator: its measured value is beta_hat
            add("beta_hat", report.measured, stderr, **keys)
    for _, report in reports:  # the PAC-Bayes dropout certificate (docs/certificate.md), its value even when >= 1
        if report.evaluable and report.name in _CERTIFICATES:
            add("certificate", report.value, report=report.name)
            if report.name == "pacbayes_dropout_ensemble":
                add("linear_certificate", report.bound_on_measured, report=report.name)
            for q in report.inputs:  # at the grid point of the smallest certificate
                if q.name in CERTIFICATE_INPUTS:
                    add(CERTIFICATE_INPUTS[q.name], q.value, report=report.name)
    if probes is not None:
        for r in probes.itertuples():
            keys = {"space": r.space, "hypothesis": r.hypothesis}
            add(r.quantity, r.value, r.stderr, **keys)
            if r.quantity.startswith("hessian_"):  # Lanczos: whether the Ritz value met its tolerance
                add(f"{r.quantity}_converged", float(r.converged), **keys)
    if modules is not None and len(modules):
        add("sparsity_nominal", modules["nominal_sparsity"].iloc[0])
        add("sparsity_realised", modules["dw_zero_fraction"].mean(),
            modules["dw_zero_fraction"].std(ddof=1) / math.sqrt(len(modules)) if len(modules) > 1 else math.nan)
    return rows


def _with_config(frame: pd.DataFrame, run_id: str, columns: dict) -> pd.DataFrame:
    frame = frame.copy()
    frame.insert(0, "run_id", run_id)
    for column, value in columns.items():
        frame[column] = value
    return frame


def certified_grid(run_dir: Path) -> list[float] | None:
    """The posterior_std grid the run's certificate was measured with, as bounds.json records it
    (``settings["certificate"]``, written by the study pipeline and by ``lora-dropout certify``); None (the
    default grid) when it records none. The certificate's ``grid_fixed_in_advance`` audit is held against it."""
    try:
        grid = json.loads((run_dir / "bounds.json").read_text())["settings"]["certificate"]["posterior_std_grid"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return [float(v) for v in grid] if isinstance(grid, list) and grid else None


def _collect_run(run: RunLog, run_dir: Path, state: str, *, delta, lam, loss_range) -> dict[str, pd.DataFrame]:
    """Every table's rows for one run (raises on anything wrong with it; `collect` reports and skips)."""
    grid = certified_grid(run_dir)
    settings = BoundSettings(delta=delta, lam=lam, loss_range=loss_range,
                             certificate=None if grid is None else CertificateSettings(posterior_std_grid=grid))
    reports = [("unmasked", r) for r in evaluate_run(run_dir, settings)]
    probes = run.table("probes") if run.has("probes") else None
    if probes is not None and (probes["hypothesis"] == "expected").any():  # theorem44[expected], ...
        reports += [("expected", r) for r in evaluate_run(run_dir, replace(settings, hypothesis="expected"))]
    modules = None
    if run.has("modules"):
        m = run.table("modules")
        modules = m[m["step"] == m["step"].max()]
    rows = {
        # the commit each run was trained at: a resumed study can mix commits, and its report says so
        "runs": pd.DataFrame([{"state": state, "wall_s": run.meta.wall_s, "commit": run.meta.git.get("commit")}]),
        "summary": summary.frame(_summary_rows(run, reports, probes, modules)),
        "curves": run.steps,
        "compression": ensemble_compression(run_dir, settings).drop(columns="run_id"),
        "bounds": pd.concat([r.to_frame().drop(columns="run_id") for _, r in reports], ignore_index=True),
    }
    if run.has("calibration"):
        rows["reliability"] = run.table("calibration")
    if modules is not None:
        rows["modules"] = modules
    columns = config_columns(run.meta)
    return {name: _with_config(frame, run.run_id, columns) for name, frame in rows.items()}


def run_directories(study_dir: str | Path) -> list[Path]:
    """Run directories directly under a study (anything with a meta.json; ``_attempts`` excluded)."""
    root = Path(study_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"{root} is not a directory of runs")
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(("_", ".")) and
                  ((p / "meta.json").exists() or (p / "steps.jsonl").exists()))


def collect(runs: str | Path | Iterable[str | Path], *, delta: float = 0.05, lam: float = 1.0,
            loss_range: float | None = None, require_success: bool = True) -> Collection:
    """Collect a study directory (or an explicit list of run directories) into tidy tables.

    Bounds are evaluated afresh with ``delta``, ``lam`` and ``loss_range`` (the reports do not depend on
    whatever ``bounds.json`` a run holds).
    """
    dirs = run_directories(runs) if isinstance(runs, (str, Path)) else [Path(r) for r in runs]
    parts: dict[str, list[pd.DataFrame]] = {name: [] for name in TABLE_NAMES}
    skipped: list[tuple[str, str]] = []
    for run_dir in dirs:
        try:
            run = validate_run(run_dir, require=("samples",))
            state = run_state(run.meta)
            if require_success and state != "success":
                raise RunLogError(f"status {state}" + (f": {run.meta.error}" if run.meta.error else ""))
            rows = _collect_run(run, run_dir, state, delta=delta, lam=lam, loss_range=loss_range)
        except Exception as exc:  # one bad run never stops a collection
            skipped.append((str(run_dir), f"{type(exc).__name__}: {exc}"))
            continue
        for name, frame in rows.items():
            parts[name].append(frame)
    tables = {name: (pd.concat(frames, ignore_index=True) if frames else pd.DataFrame())
              for name, frames in parts.items()}
    tables["bounds"] = _object_to_str(tables["bounds"])
    return Collection(**tables, skipped=skipped)


def _object_to_str(frame: pd.DataFrame) -> pd.DataFrame:
    """Parquet needs one type per column: mixed-object columns (``holds``) become strings."""
    if "holds" in frame:
        frame = frame.assign(holds=frame["holds"].map(lambda v: None if v is None or
                                                      (isinstance(v, float) and np.isnan(v)) else str(bool(v))))
    return frame
