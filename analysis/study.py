"""Studies: a grid over configuration fields, one run directory per point, resumable.

A study directory holds ``manifest.json`` (the spec and its points) and one run directory per
point, named by the point's overrides. Running a study again skips points whose run succeeded and
redoes the others; the directory of a failed or interrupted attempt is moved to ``_attempts/`` first,
so nothing written is ever lost.

Grid keys name a config field, either qualified (``lora_dropout.dropout_rate``) or bare when the
name is unique across the sections (``dropout_rate``, ``n_instances``, ``n_train``, ``seed``,
``method``). A point may also add post-training work: curvature probes, leave-one-out stability and
the PAC-Bayes dropout certificate (``certificates.parquet``, measured again only when the grid, the
draws or the prior it was measured with differ from the point's).
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import shutil
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bounds.runlog import (
    DEFAULT_POSTERIOR_STD_GRID,
    PRIOR_DIR,
    TABLES,
    RunLogError,
    read_meta,
    run_state,
    write_json,
)
from lora_dropout.method.config import LoraDropoutConfig
from lora_dropout.runs.config import AdapterConfig, RunConfig, TrainConfig

SECTIONS = {"train": TrainConfig, "adapter": AdapterConfig, "lora_dropout": LoraDropoutConfig}
#: Short names used in run ids.
ABBREV = {"dropout_rate": "p", "n_instances": "N", "n_eval_instances": "Ntest", "n_train": "n", "seed": "seed",
          "method": "", "lr": "lr", "mask_scope": "scope", "epochs": "ep", "rescale": "rescale"}


def qualify(key: str) -> str:
    """``"dropout_rate"`` -> ``"lora_dropout.dropout_rate"``; errors name unknown or ambiguous keys."""
    if "." in key:
        section, name = key.split(".", 1)
        if section not in SECTIONS or name not in {f.name for f in dataclasses.fields(SECTIONS[section])}:
            raise ValueError(f"grid key {key!r} names no config field")
        return key
    owners = [s for s, cls in SECTIONS.items() if key in {f.name for f in dataclasses.fields(cls)}]
    if not owners:
        raise ValueError(f"grid key {key!r} is not a field of {sorted(SECTIONS)}")
    if len(owners) > 1:  # `seed` lives in train (the run seed) and lora_dropout (derived from it)
        if "train" in owners:
            return f"train.{key}"
        raise ValueError(f"grid key {key!r} is ambiguous: qualify it as one of {[f'{o}.{key}' for o in owners]}")
    return f"{owners[0]}.{key}"


@dataclass(frozen=True, kw_only=True)
class PostTraining:
    """Work after training: curvature/Lipschitz probes, leave-one-out stability and the PAC-Bayes dropout
    certificate (theory.md section 6: ``certify_run`` with ``posterior_std_grid``, ``posterior_draws`` and
    ``certify_prior``, None = the trained prior when the run has one, else the data-free init), each written
    into the run."""

    curvature: bool = False
    stability_k: int = 0
    stability_methods: tuple[str, ...] = ("influence", "warm_start", "retrain")
    probe_examples: int = 128
    lanczos_tol: float = 1e-3
    spaces: tuple[str, ...] = ("delta_w",)
    lam: float = 1.0
    certify: bool = False
    posterior_std_grid: tuple[float, ...] = DEFAULT_POSTERIOR_STD_GRID
    posterior_draws: int = 4
    certify_prior: str | None = None

    def __post_init__(self) -> None:
        if self.certify_prior not in (None, "init", "trained"):
            raise ValueError(f"certify_prior={self.certify_prior!r} must be None, 'init' or 'trained'")
        if isinstance(self.posterior_draws, bool) or not isinstance(self.posterior_draws, int) or \
                self.posterior_draws < 1:
            raise ValueError(f"posterior_draws={self.posterior_draws!r} must be an integer >= 1")
        grid = tuple(float(v) for v in self.posterior_std_grid)
        if not grid or not all(math.isfinite(v) and v > 0 for v in grid) or len(set(grid)) != len(grid):
            raise ValueError(f"posterior_std_grid={list(self.posterior_std_grid)!r} must be distinct numbers > 0")
        object.__setattr__(self, "posterior_std_grid", grid)

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}


@dataclass(frozen=True)
class Point:
    """One run of a study: its directory name, its overrides, and the resolved configuration."""

    run_id: str
    overrides: dict[str, Any]
    config: RunConfig
    post: PostTraining

    def to_dict(self) -> dict[str, Any]:
        return {"run_id": self.run_id, "overrides": self.overrides, "config": self.config.to_dict(),
                "post": self.post.to_dict()}


def _run_id(overrides: Mapping[str, Any]) -> str:
    parts = []
    for key, value in overrides.items():
        name = key.split(".", 1)[1]
        parts.append(f"{ABBREV.get(name, name)}{value}")
    return "-".join(parts) if parts else "base"


def _matches(resolved: dict[str, dict[str, Any]], match: Mapping[str, Any]) -> bool:
    """Whether a resolved configuration (``RunConfig.to_dict()``) has every ``field: value`` of ``match``."""
    for key, value in match.items():
        section, name = qualify(key).split(".", 1)
        if resolved[section][name] != value:
            return False
    return True


@dataclass(frozen=True, kw_only=True)
class StudySpec:
    """A base configuration, a grid of overrides (their product), and extra explicit points."""

    name: str
    base: RunConfig = field(default_factory=RunConfig)
    grid: dict[str, list] = field(default_factory=dict)
    points: tuple[dict[str, Any], ...] = ()
    post: PostTraining = field(default_factory=PostTraining)
    #: overrides of `post` for points matching a filter, e.g. stability only for some runs
    post_for: tuple[tuple[dict[str, Any], dict[str, Any]], ...] = ()

    def expand(self) -> list[Point]:
        grid = {qualify(k): list(v) for k, v in self.grid.items()}
        combos = [dict(zip(grid, values, strict=True)) for values in itertools.product(*grid.values())] if grid else []
        combos += [{qualify(k): v for k, v in p.items()} for p in self.points]
        if not combos:
            combos = [{}]  # no grid: the base configuration is the one point
        seen, out = set(), []
        for overrides in combos:
            run_id = _run_id(overrides)
            if run_id in seen:
                continue
            seen.add(run_id)
            sections: dict[str, dict[str, Any]] = {}
            for key, value in overrides.items():
                section, name = key.split(".", 1)
                sections.setdefault(section, {})[name] = value
            config = self.base.replace(**sections)
            post = self.post
            resolved = config.to_dict()
            for match, changes in self.post_for:  # matched on the resolved configuration of the point
                if _matches(resolved, match):
                    post = dataclasses.replace(post, **changes)
            out.append(Point(run_id, overrides, config, post))
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "base": self.base.to_dict(), "grid": self.grid, "points": list(self.points),
                "post": self.post.to_dict(), "post_for": [list(x) for x in self.post_for]}


# -- running -----------------------------------------------------------------------------------------


def point_status(study_dir: Path, point: Point) -> str:
    """``done`` (succeeded and post-training complete), ``missing``, or the reason to redo it."""
    run_dir = study_dir / point.run_id
    if not (run_dir / "meta.json").exists():
        return "missing"
    try:
        meta = read_meta(run_dir)
    except RunLogError as exc:
        return f"unreadable ({exc})"
    state = run_state(meta)
    if state != "success":
        return state
    if meta.get("config") != point.config.to_dict():
        return "config changed"
    if point.post.curvature and not (run_dir / "probes.parquet").exists():
        return "probes missing"
    if point.post.stability_k and not (run_dir / "stability.parquet").exists():
        return "stability missing"
    if point.post.certify and not certificates_current(run_dir, point.post):
        return "certificates missing"
    return "done"


#: Statuses of a trained run whose post-training work is incomplete: resumed in place, never set aside.
INCOMPLETE = ("probes missing", "stability missing", "certificates missing")


def certificates_current(run_dir: str | Path, post: PostTraining) -> bool:
    """Whether ``run_dir/certificates.parquet`` was measured with ``post``'s settings: the same
    ``posterior_std`` grid, ``posterior_draws`` and prior (``certify_prior``, or the one ``certify_run``
    would pick: ``trained`` when ``prior/prior.safetensors`` exists, else ``init``). A missing or unreadable
    table is not current."""
    import pandas as pd

    path = Path(run_dir) / TABLES["certificates"].filename
    if not path.is_file():
        return False
    try:
        table = pd.read_parquet(path, columns=["posterior_std", "draws", "prior", "grid_size"])
    except Exception:  # unreadable: measure again
        return False
    prior = post.certify_prior or ("trained" if (Path(run_dir) / PRIOR_DIR / "prior.safetensors").is_file()
                                   else "init")
    grid = sorted(post.posterior_std_grid)
    found = sorted(float(v) for v in table["posterior_std"])
    return (len(found) == len(grid) and all(math.isclose(a, b, rel_tol=1e-9) for a, b in zip(found, grid, strict=True))
            and set(table["grid_size"]) == {len(grid)} and set(table["draws"]) == {post.posterior_draws}
            and set(table["prior"]) == {prior})


def _set_aside(study_dir: Path, run_dir: Path) -> None:
    if run_dir.exists():
        attempts = study_dir / "_attempts"
        attempts.mkdir(exist_ok=True)
        shutil.move(str(run_dir), attempts / f"{run_dir.name}-{time.strftime('%Y%m%d-%H%M%S')}")


def execute_point(study_dir: str, point_dict: dict[str, Any], threads: int | None = None) -> str:
    """Train one point (unless already trained) and do its post-training work. Runs in any process."""
    from .pipeline import run_point

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
