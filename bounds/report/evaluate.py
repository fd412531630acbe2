""":func:`evaluate_run`: every bound of the paper on a run, each held against its measurement.

The reports (`bounds.report.builders`) share one `bounds.inputs.RunInputs` per hypothesis, so each table
is read and each estimate computed once; a report whose table or measurement is missing is returned as
not evaluable, with the reason naming the command that produces it. The run's PAC-Bayes dropout
certificate (`bounds.report.certificate`) is added when the run has one.
"""

from __future__ import annotations

from pathlib import Path

from ..inputs import RunInputs
from ..runlog import Hypothesis, RunLogError
from ..settings import BoundSettings
from . import builders
from .certificate import reports_if_certified
from .learned import reports_if_learned
from .record import BoundReport

__all__ = ["evaluate_run"]


def _hypothesis_reports(run_dir: Path, settings: BoundSettings, hypothesis: Hypothesis) -> list[BoundReport]:
    inputs = RunInputs(run_dir, settings, hypothesis=hypothesis)
    inputs.require_core()
    if hypothesis is Hypothesis.UNMASKED:
        try:
            reports = builders.prop42_reports(inputs)
        except RunLogError as exc:  # no stability rows: no method to report on
            reports = [BoundReport.not_evaluable("prop42", inputs.run_id, builders.THEOREMS["prop42"], str(exc))]
        todo = builders.unmasked_builders
    else:
        reports, todo = [], builders.hypothesis_reports
    for name, build in todo.items():
        try:
            reports.append(build(inputs))
        except (RunLogError, ValueError) as exc:
            reports.append(BoundReport.not_evaluable(name + builders.suffix(inputs), inputs.run_id,
                                                     builders.theorem(name, inputs), str(exc)))
    return reports


def evaluate_run(run_dir: str | Path, settings: BoundSettings | None = None) -> list[BoundReport]:
    """Evaluate every bound of the paper on a run and hold each against its measurement.

    Parameters
    ----------
    run_dir : path
        A run directory (`bounds.runlog`).
    settings : BoundSettings, optional
        ``delta``, ``lam``, ``C``, which probes, predictor and leave-one-out method, the Lemma 4.3 form,
        the hypotheses, and the certificate's grid (see `bounds.settings.BoundSettings`); default
        ``BoundSettings()``.

    Returns
    -------
    list of BoundReport
        For each hypothesis of ``settings.hypothesis`` in turn: at ``unmasked``, ``prop42[<method>]`` (one
        per method), ``lemma43``, ``theorem44``, ``uniform_stability``, ``ensemble``; at ``expected``,
        ``prop42[expected]`` and ``theorem44[expected]``. A missing table or measurement gives a
        not-evaluable report naming the command that produces it. When the run has
        ``certificates.parquet``, also the toolkit's own PAC-Bayes dropout certificate
        (`bounds.report.certificate`): ``pacbayes_dropout`` and ``pacbayes_dropout_ensemble``, after the
        unmasked model's reports; with ``learned_certificates.parquet``, ``pacbayes_dropout_learned``
        (`bounds.report.learned`).

    Raises
    ------
    MissingTableError
        When ``samples.parquet`` is missing: without it there is no risk to bound.
    RunLogError
        When ``meta.json`` lacks what every report needs (``p``, ``n``).
    """
    settings = BoundSettings() if settings is None else settings
    run_dir = Path(run_dir)
    reports: list[BoundReport] = []
    for hypothesis in settings.hypothesis:
        reports += _hypothesis_reports(run_dir, settings, hypothesis)
        if hypothesis is Hypothesis.UNMASKED:  # the certificate does not depend on the hypothesis
            reports += reports_if_certified(run_dir, settings.posterior_std_grid)
            reports += reports_if_learned(run_dir, settings.posterior_std_grid)
    return reports
