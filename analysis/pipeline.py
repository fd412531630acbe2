"""One study point from start to finish: train (unless done), probe, measure stability, certify, write
bounds.json.

Each step checks what the run directory already holds, so an interrupted point resumes where it
stopped: a successful training is never repeated; probes, stability and certificates are added when missing
(certificates also when measured with other settings than the point's).
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from bounds.cli import bounds_document
from bounds.report import evaluate_run
from bounds.runlog import TABLES, read_meta, run_state, write_json

from .study import Point, PostTraining, certificates_current


def certificate_settings(run_dir: Path, post: PostTraining) -> dict | None:
    """What the run's ``certificates.parquet`` was measured with, for bounds.json's ``settings["certificate"]``
    (the grid there is the one the certificate's ``grid_fixed_in_advance`` audit is held against): the
    point's settings when it certifies, else those a ``lora-dropout certify`` recorded in bounds.json;
    None without certificates."""
    if not (run_dir / TABLES["certificates"].filename).is_file():
        return None
    if post.certify:
        table = pd.read_parquet(run_dir / TABLES["certificates"].filename, columns=["prior", "delta", "delta_mc",
                                                                                     "seed"])
        first = table.iloc[0]
        return {"posterior_std_grid": list(post.posterior_std_grid), "posterior_draws": post.posterior_draws,
                "delta": float(first["delta"]), "delta_mc": float(first["delta_mc"]), "prior": str(first["prior"]),
                "seed": int(first["seed"])}
    try:
        recorded = json.loads((run_dir / "bounds.json").read_text())["settings"]["certificate"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return recorded if isinstance(recorded, dict) and "posterior_std_grid" in recorded else None


def run_point(study_dir: Path, point: Point, *, progress: bool = False) -> Path:
    """Bring ``study_dir / point.run_id`` to completion and return it."""
    from lora_dropout.probes.certify import certify_run
    from lora_dropout.probes.on_run import probe_run
    from lora_dropout.runs.run import train_run

    run_dir = study_dir / point.run_id
    trained = (run_dir / "meta.json").exists() and run_state(read_meta(run_dir)) == "success"
    if not trained:
        train_run(point.config, study_dir, run_id=point.run_id, progress=progress)
    post = point.post
    need_probes = post.curvature and not (run_dir / "probes.parquet").exists()
    need_stability = post.stability_k > 0 and not (run_dir / "stability.parquet").exists()
    if need_probes or need_stability:
        probe_run(run_dir, curvature=need_probes, spaces=post.spaces, stability_k=post.stability_k if
                  need_stability else 0, methods=post.stability_methods, lam=post.lam,
                  probe_examples=post.probe_examples, tol=post.lanczos_tol, progress=progress)
    if post.certify and not certificates_current(run_dir, post):
        certify_run(run_dir, posterior_std_grid=post.posterior_std_grid, posterior_draws=post.posterior_draws,
                    prior=post.certify_prior, progress=progress)
    settings = {"delta": 0.05, "lam": post.lam, "loss_range": None}
    certificate = certificate_settings(run_dir, post)
    if certificate is not None:
        settings["certificate"] = certificate
    grid = None if certificate is None else certificate["posterior_std_grid"]
    reports = evaluate_run(run_dir, delta=0.05, lam=post.lam, posterior_std_grid=grid)
    write_json(run_dir / "bounds.json", bounds_document(reports, settings))
    return run_dir
