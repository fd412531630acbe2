"""One study point from start to finish: train (unless done), probe, measure stability, write bounds.json.

Each step checks what the run directory already holds, so an interrupted point resumes where it
stopped: a successful training is never repeated, probes and stability are added when missing.
"""

from __future__ import annotations

from pathlib import Path

from bounds.cli import bounds_document
from bounds.report import evaluate_run
from bounds.runlog import read_meta, run_state, write_json

from .study import Point


def run_point(study_dir: Path, point: Point, *, progress: bool = False) -> Path:
    """Bring ``study_dir / point.run_id`` to completion and return it."""
    from lora_dropout.probe_run import probe_run
    from lora_dropout.run import train_run

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
    settings = {"delta": 0.05, "lam": post.lam, "loss_range": None}
    reports = evaluate_run(run_dir, delta=0.05, lam=post.lam)
    write_json(run_dir / "bounds.json", bounds_document(reports, settings))
    return run_dir
