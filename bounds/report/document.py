"""``RUN_DIR/bounds.json``: the one owner of its format, its writers and its reader.

The document holds the schema version, the run id, the settings the reports were evaluated with
(`bounds.settings.BoundSettings.to_dict`, the certificate's under ``settings["certificate"]``) and every
report's `BoundReport.to_dict`. Two writers, both atomic (`bounds.runlog.write_json`):

- `write_bounds`: every report of the run under one `BoundSettings` (``lora-dropout bounds``, the study
  pipeline, the example run);
- `write_certificate_entries`: only the certificate's entries (``lora-dropout certify``), merged into the
  document already there.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..runlog import SCHEMA_VERSION, write_json
from ..settings import BoundSettings, CertificateSettings
from .certificate import CERTIFICATE_REPORTS
from .evaluate import evaluate_run
from .record import BoundReport

__all__ = ["BOUNDS_FILE", "bounds_document", "recorded_certificate", "write_bounds", "write_certificate_entries"]

#: The file name, inside a run directory.
BOUNDS_FILE = "bounds.json"


def bounds_document(reports: Sequence[BoundReport], settings: Mapping[str, Any]) -> dict[str, Any]:
    """The content of ``bounds.json``: schema version, run id, the settings, every report's dict."""
    return {
        "schema_version": SCHEMA_VERSION,
        "run_id": reports[0].run_id,
        "settings": dict(settings),
        "reports": [r.to_dict() for r in reports],
    }


def write_bounds(run_dir: str | Path, settings: BoundSettings | None = None,
                 reports: Sequence[BoundReport] | None = None) -> Path:
    """Evaluate every bound of a run (`evaluate_run`) and write ``RUN_DIR/bounds.json``, replacing it.

    Parameters
    ----------
    run_dir : path
    settings : BoundSettings, optional
        Default ``BoundSettings()``; recorded as the document's ``settings``.
    reports : sequence of BoundReport, optional
        ``evaluate_run(run_dir, settings)`` when already computed (e.g. printed first by the command line);
        evaluated here when omitted.

    Returns
    -------
    Path
        The file written.
    """
    settings = BoundSettings() if settings is None else settings
    reports = evaluate_run(run_dir, settings) if reports is None else list(reports)
    return write_json(Path(run_dir) / BOUNDS_FILE, bounds_document(reports, settings.to_dict()))


def _readable_document(target: Path, run_id: str) -> dict[str, Any] | None:
    """The document at ``target`` when it is a bounds.json of this schema and run, else None."""
    if not target.is_file():
        return None
    try:
        document = json.loads(target.read_text())
    except json.JSONDecodeError:
        return None
    if (isinstance(document, dict) and document.get("schema_version") == SCHEMA_VERSION
            and document.get("run_id") == run_id and isinstance(document.get("reports"), list)):
        return document
    return None


def write_certificate_entries(run_dir: str | Path, reports: Sequence[BoundReport],
                              settings: CertificateSettings) -> Path:
    """Put the certificate reports into ``RUN_DIR/bounds.json`` beside the reports already there.

    An existing, readable bounds.json of the same run keeps its other reports and settings; its certificate
    entries (`CERTIFICATE_REPORTS` and any of the names in ``reports``) are replaced and ``settings["certificate"]`` is set to ``settings``.
    Otherwise a new document holds only these reports, and only the certificate's settings.
    """
    reports = list(reports)
    target = Path(run_dir) / BOUNDS_FILE
    record = settings.to_dict()
    document = _readable_document(target, reports[0].run_id)
    if document is None:
        document = bounds_document(reports, {"certificate": record})
    else:
        replaced = set(CERTIFICATE_REPORTS) | {r.name for r in reports}
        kept = [r for r in document["reports"] if not (isinstance(r, dict) and r.get("name") in replaced)]
        document["reports"] = kept + [r.to_dict() for r in reports]
        document["settings"] = {**(document.get("settings") or {}), "certificate": record}
    return write_json(target, document)


def recorded_certificate(run_dir: str | Path) -> CertificateSettings | None:
    """The certificate settings ``RUN_DIR/bounds.json`` records (``settings["certificate"]``, written by
    ``lora-dropout certify`` and by the study pipeline); None when it records no grid or cannot be read."""
    try:
        record = json.loads((Path(run_dir) / BOUNDS_FILE).read_text())["settings"]["certificate"]
        return CertificateSettings.from_dict(record) if "posterior_std_grid" in record else None
    except (OSError, ValueError, KeyError, TypeError):
        return None
