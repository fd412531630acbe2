"""Study specs as data: a base configuration, a grid of overrides and explicit points, and the work after
training each point asks for (`PostTraining`). `StudySpec.expand` turns a spec into its `Point`s, each
named by its overrides; `analysis.study` runs them, `analysis.presets` names the studies of
``lora-dropout reproduce``.

Grid keys name a config field, either qualified (``lora_dropout.dropout_rate``) or bare when the
name is unique across the sections (``dropout_rate``, ``n_instances``, ``n_train``, ``seed``,
``method``). A point may also add post-training work: curvature probes, leave-one-out stability and
the PAC-Bayes dropout certificate.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from bounds.runlog import DEFAULT_POSTERIOR_STD_GRID
from lora_dropout.method.config import LoraDropoutConfig
from lora_dropout.method.validation import check_count_field
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
    certificate (docs/certificate.md: ``certify_run`` with ``posterior_std_grid``, ``posterior_draws`` and
    ``certify_prior``, None = the trained prior when the run has one, else the data-free init), each written
    into the run; with ``learn_posterior`` also a posterior learned by minimising the certificate over the
    same grid (`lora_dropout.certify.learned`, default `LearnSettings`)."""

    curvature: bool = False
    stability_k: int = 0
    stability_methods: tuple[str, ...] = ("influence", "warm_start", "retrain")
    probe_examples: int = 128
    # the first k training examples eta and the stationarity probe use; None = every training example (a
    # subset is labelled in the report and the assumption audit: eta then bounds only the examples it saw)
    lipschitz_examples: int | None = None
    lanczos_tol: float = 1e-3
    spaces: tuple[str, ...] = ("delta_w",)
    lam: float = 1.0
    certify: bool = False
    posterior_std_grid: tuple[float, ...] = DEFAULT_POSTERIOR_STD_GRID
    posterior_draws: int = 4
    certify_prior: str | None = None
    learn_posterior: bool = False

    def __post_init__(self) -> None:
        if self.certify_prior not in (None, "init", "trained"):
            raise ValueError(f"certify_prior={self.certify_prior!r} must be None, 'init' or 'trained'")
        check_count_field(self, "posterior_draws")
        check_count_field(self, "lipschitz_examples", optional=True)
        grid = tuple(float(v) for v in self.posterior_std_grid)
        if not grid or not all(math.isfinite(v) and v > 0 for v in grid) or len(set(grid)) != len(grid):
            raise ValueError(f"posterior_std_grid={list(self.posterior_std_grid)!r} must be distinct numbers > 0")
        object.__setattr__(self, "posterior_std_grid", grid)
        if self.learn_posterior and not self.certify:
            raise ValueError("learn_posterior=True needs certify=True (the learned posterior is certified beside "
                             "the grid)")

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
            if post.stability_k and config.adapter.method == "adalora":
                # caught here, before hours of training, rather than by probe_run after it
                raise ValueError(f"point {run_id}: stability_k={post.stability_k} on an AdaLoRA run; leave-one-out "
                                 "stability is implemented for LoRA runs (restrict it with post_for "
                                 "{'method': 'lora', ...})")
            out.append(Point(run_id, overrides, config, post))
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "base": self.base.to_dict(), "grid": self.grid, "points": list(self.points),
                "post": self.post.to_dict(), "post_for": [list(x) for x in self.post_for]}
