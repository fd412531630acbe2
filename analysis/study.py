"""Running a study: one run directory per point of a `analysis.spec.StudySpec`, resumable.

A study directory holds ``manifest.json`` (the spec and its points) and one run directory per
point, named by the point's overrides. Running a study again skips points whose run succeeded and
redoes the others; the directory of a failed or interrupted attempt is moved to ``_attempts/`` first,
so nothing written is ever lost. A trained point whose post-training work is incomplete (probes,
stability, or a ``certificates.parquet`` measured with another grid, draws or prior than the point's)
is resumed in place (`analysis.pipeline`).
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bounds.runlog import RunLogError, read_run_meta, run_state, write_json
from lora_dropout.runs.config import RunConfig

from .pipeline import certificates_current, learned_current, run_point
from .spec import Point, PostTraining, StudySpec


def point_status(study_dir: Path, point: Point) -> str:
    """``done`` (succeeded and post-training complete), ``missing``, or the reason to redo it."""
    run_dir = study_dir / point.run_id
    if not (run_dir / "meta.json").exists():
        return "missing"
    try:
        meta = read_run_meta(run_dir)
    except RunLogError as exc:
        return f"unreadable ({exc})"
    state = run_state(meta)
    if state != "success":
        return state
    if meta.config_dict() != point.config.to_dict():
        return "config changed"
    if point.post.curvature and not (run_dir / "probes.parquet").exists():
        return "probes missing"
    if point.post.stability_k and not (run_dir / "stability.parquet").exists():
        return "stability missing"
    if point.post.certify and not certificates_current(run_dir, point.post):
        return "certificates missing"
    if point.post.learn_posterior and not learned_current(run_dir, point.post):
        return "learned posterior missing"
    return "done"


#: Statuses of a trained run whose post-training work is incomplete: resumed in place, never set aside.
INCOMPLETE = ("probes missing", "stability missing", "certificates missing", "learned posterior missing")


def _set_aside(study_dir: Path, run_dir: Path) -> None:
    if run_dir.exists():
        attempts = study_dir / "_attempts"
        attempts.mkdir(exist_ok=True)
        shutil.move(str(run_dir), attempts / f"{run_dir.name}-{time.strftime('%Y%m%d-%H%M%S')}")


def execute_point(study_dir: str, point_dict: dict[str, Any], threads: int | None = None) -> str:
    """Train one point (unless already trained) and do its post-training work. Runs in any process."""
    if threads:
        import torch

        torch.set_num_threads(threads)
    point = Point(point_dict["run_id"], point_dict["overrides"], RunConfig.from_dict(point_dict["config"]),
                  PostTraining(**{k: tuple(v) if isinstance(v, list) else v for k, v in point_dict["post"].items()}))
    run_point(Path(study_dir), point)
    return point.run_id


@dataclass
class StudyResult:
    study_dir: Path
    done: list[str]
    skipped: list[str]  # already done before this call
    failed: dict[str, str]  # run id -> error


def run_study(spec: StudySpec, study_dir: str | Path, *, executor: str = "local", address: str | None = None,
              progress: bool = True, threads: int | None = None,
              on_point: Callable[[Point], None] | None = None) -> StudyResult:
    """Run every point of ``spec`` that is not done yet.

    Parameters
    ----------
    executor : ``"local"`` (sequential, a progress bar over runs) or ``"ray"`` (one task per point;
        ``address`` of an existing cluster, default a local Ray instance).
    threads : torch threads per run (default: torch's own choice locally, 1 per Ray task).
    """
    from tqdm.auto import tqdm

    study_dir = Path(study_dir)
    study_dir.mkdir(parents=True, exist_ok=True)
    points = spec.expand()
    write_json(study_dir / "manifest.json",
                      {"spec": spec.to_dict(), "points": [p.to_dict() for p in points]})
    todo, skipped = [], []
    statuses = {point.run_id: point_status(study_dir, point) for point in points}
    running = sorted(r for r, status in statuses.items() if status == "running")
    if running:  # never move a directory a live writer (here or on another host) is still filling
        raise RuntimeError(f"run(s) {running} of {study_dir} are still running; wait for them or stop them "
                           "(a run killed without notice shows as stale and is redone)")
    for point in points:
        status = statuses[point.run_id]
        if status == "done":
            skipped.append(point.run_id)
            continue
        if status != "missing" and status not in INCOMPLETE:
            _set_aside(study_dir, study_dir / point.run_id)
        todo.append(point)
    failed: dict[str, str] = {}
    done: list[str] = []
    if executor == "local":
        for point in tqdm(todo, desc=f"study {spec.name}", unit="run", disable=not progress):
            if on_point:
                on_point(point)
            try:
                execute_point(str(study_dir), point.to_dict(), threads)
                done.append(point.run_id)
            except KeyboardInterrupt:
                raise
            except Exception as exc:  # the run is marked failed in its meta.json; go on with the others
                failed[point.run_id] = f"{type(exc).__name__}: {exc}"
    elif executor == "ray":
        done, failed = _run_ray(study_dir, todo, address, threads or 1, progress)
    else:
        raise ValueError(f"executor={executor!r} must be 'local' or 'ray'")
    return StudyResult(study_dir, done, skipped, failed)


def _run_ray(study_dir: Path, points: Iterable[Point], address: str | None, threads: int, progress: bool):
    import ray
    from tqdm.auto import tqdm

    started = not ray.is_initialized()
    if started:
        ray.init(address=address, include_dashboard=False, log_to_driver=False, ignore_reinit_error=True)
    try:
        remote = ray.remote(num_cpus=threads)(execute_point)
        futures = {remote.remote(str(study_dir), p.to_dict(), threads): p.run_id for p in points}
        done, failed = [], {}
        pending = list(futures)
        with tqdm(total=len(pending), desc="study (ray)", unit="run", disable=not progress) as bar:
            while pending:
                ready, pending = ray.wait(pending, num_returns=1)
                run_id = futures[ready[0]]
                try:
                    ray.get(ready[0])
                    done.append(run_id)
                except Exception as exc:
                    failed[run_id] = f"{type(exc).__name__}: {exc}"
                bar.update(1)
        return done, failed
    finally:
        if started:
            ray.shutdown()
