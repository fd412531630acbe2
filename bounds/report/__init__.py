"""Bound reports of a run: each bound evaluated on measured inputs and held against a measurement.

Modules: `record` (`BoundReport`, the frozen record of one bound on one run), `builders` (the paper's
bounds: Prop. 4.2, Lemma 4.3, Thm 4.4, B&E Thm 12, Thm 4.5 with Thm 4.4), `certificate` (the toolkit's
own PAC-Bayes dropout certificate, docs/certificate.md), `learned` (the same certificate for a posterior
learned by minimising it), `evaluate` (`evaluate_run`: all of them on a
run directory) and `document` (``bounds.json``: `write_bounds`, `write_certificate_entries`). The inputs
they use are `bounds.inputs.RunInputs`, their premises `bounds.assumptions`, their options
`bounds.settings.BoundSettings`.
"""

from __future__ import annotations

from .certificate import CERTIFICATE_REPORTS, certificate_reports, certificate_table
from .document import (
    BOUNDS_FILE,
    bounds_document,
    recorded_certificate,
    write_bounds,
    write_certificate_entries,
)
from .evaluate import evaluate_run
from .learned import LEARNED_REPORT, learned_certificate_reports, learned_certificate_table
from .record import FRAME_COLUMNS, BoundReport

__all__ = [
    "BOUNDS_FILE",
    "CERTIFICATE_REPORTS",
    "FRAME_COLUMNS",
    "LEARNED_REPORT",
    "BoundReport",
    "bounds_document",
    "certificate_reports",
    "certificate_table",
    "evaluate_run",
    "learned_certificate_reports",
    "learned_certificate_table",
    "recorded_certificate",
    "write_bounds",
    "write_certificate_entries",
]
