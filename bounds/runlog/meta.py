"""``meta.json`` read as a typed record: `RunMeta`.

The run writer (`lora_dropout.runs.writer`) keeps ``meta.json`` as a plain dict that it updates while the
run goes (`bounds.runlog.read_meta` returns that dict); every reader takes it through `RunMeta`, whose
attributes name what the readers use and whose `RunMeta.from_dict` checks it once, with messages that
name the field and the bad value.

Lenient where a run legitimately lacks a field: a ``running`` or ``failed`` run has no ``finished_at``,
``final`` or (if it failed early) ``data``; runs from before the PAC-Bayes prior have no ``prior``; a
hand-written test run may carry a partial ``config``. Only `REQUIRED_META` must be present. An option
that is absent is reported when it is asked for (the properties raise `RunLogError` naming
``config.<section>.<field>``), never silently replaced, except where the absence has a documented
meaning (``n_eval_instances`` None: as many as ``n_instances``; no ``task``: classification, the only
task before the field existed).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from ..validation import check_option
from .enums import Status
from .errors import RunLogError
from .schema import REQUIRED_META, SCHEMA_VERSION

__all__ = ["RunMeta", "meta_problems", "read_meta", "read_run_meta"]



_REQUIRED = object()  # `RunMeta.option` without a default


def _empty() -> Mapping[str, Any]:
    return MappingProxyType({})

#: The sections of ``config`` (`lora_dropout.runs.config.RunConfig.to_dict`).
CONFIG_SECTIONS = ("train", "adapter", "lora_dropout")


def _freeze(value: Any) -> Any:
    """A read-only deep copy of a JSON value: objects as MappingProxyType, arrays as tuples."""
    if isinstance(value, Mapping):
        return MappingProxyType({k: _freeze(v) for k, v in value.items()})
    if isinstance(value, (list, tuple)):
        return tuple(_freeze(v) for v in value)
    return value


def _thaw(value: Any) -> Any:
    """Inverse of `_freeze`: the plain JSON value (dicts and lists)."""
    if isinstance(value, Mapping):
        return {k: _thaw(v) for k, v in value.items()}
    if isinstance(value, tuple):
        return [_thaw(v) for v in value]
    return value


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


# Field checks of the top level: (field, test, requirement). A field that is absent is not checked here.
_TOP = (
    ("schema_version", _is_int, "an integer"),
    ("run_id", lambda v: isinstance(v, str) and v != "", "a non-empty string"),
    ("started_at", lambda v: isinstance(v, str), "an ISO-8601 string"),
    ("finished_at", lambda v: v is None or isinstance(v, str), "null or an ISO-8601 string"),
    ("error", lambda v: v is None or isinstance(v, str), "null or a string"),
    ("wall_s", lambda v: v is None or (_is_number(v) and math.isfinite(v) and v >= 0), "null or a number >= 0"),
    ("device", lambda v: v is None or isinstance(v, str), "null or a string"),
    ("host", lambda v: v is None or isinstance(v, str), "null or a string"),
    ("pid", lambda v: v is None or _is_int(v), "null or an integer"),
    *((name, lambda v: v is None or isinstance(v, Mapping), "null or an object")
      for name in ("seeds", "versions", "git", "data", "prior", "final")),
    ("config", lambda v: isinstance(v, Mapping), "an object"),
)
# Checks of the options `RunMeta` exposes, when present: (section, field, test, requirement).
_OPTIONS = (
    ("lora_dropout", "dropout_rate", lambda v: _is_number(v) and 0.0 <= v <= 1.0, "a number in [0, 1]"),
    ("lora_dropout", "n_instances", lambda v: _is_int(v) and v >= 1, "an integer >= 1"),
    ("lora_dropout", "n_eval_instances", lambda v: v is None or (_is_int(v) and v >= 1), "null or an integer >= 1"),
    ("lora_dropout", "rescale", lambda v: isinstance(v, bool), "a boolean"),
    *(("lora_dropout", name, lambda v: isinstance(v, str), "a string")
      for name in ("mask_scope", "eval_mode", "ensemble_average")),
    ("adapter", "method", lambda v: isinstance(v, str), "a string"),
    ("train", "task", lambda v: isinstance(v, str), "a string"),
    ("train", "seed", _is_int, "an integer"),
    ("train", "epochs", lambda v: _is_int(v) and v >= 0, "an integer >= 0"),
    ("train", "lr", lambda v: _is_number(v) and v > 0, "a number > 0"),
    ("train", "prior_fraction", lambda v: _is_number(v) and 0.0 <= v < 1.0, "a number in [0, 1)"),
)


def meta_problems(meta: Any) -> list[str]:
    """Every problem of a ``meta.json`` object, each naming the field and its bad value ([] when none)."""
    if not isinstance(meta, Mapping):
        return [f"meta.json: expected an object, got {type(meta).__name__}"]
    problems = []
    missing = [k for k in REQUIRED_META if k not in meta]
    if missing:
        problems.append(f"meta.json: missing field(s) {missing}")
    if "schema_version" in meta and meta["schema_version"] != SCHEMA_VERSION:
        problems.append(f"meta.json: schema_version {meta['schema_version']!r}; this toolkit reads version "
                        f"{SCHEMA_VERSION}")
    try:
        status = check_option(Status, "status", meta.get("status"))
    except ValueError as exc:
        if "status" in meta:
            problems.append(f"meta.json: {exc}")
        status = None
    if status is Status.FAILED and not meta.get("error"):
        problems.append("meta.json: status failed without an error")
    for name, test, requirement in _TOP:
        if name in meta and not test(meta[name]):
            problems.append(f"meta.json: {name} must be {requirement}, got {meta[name]!r}")
    config = meta.get("config")
    if isinstance(config, Mapping):
        for section in CONFIG_SECTIONS:
            if section in config and not isinstance(config[section], Mapping):
                problems.append(f"meta.json: config.{section} must be an object, got {config[section]!r}")
        for section, name, test, requirement in _OPTIONS:
            values = config.get(section)
            if isinstance(values, Mapping) and name in values and not test(values[name]):
                problems.append(f"meta.json: config.{section}.{name} must be {requirement}, got {values[name]!r}")
    return problems


@dataclass(frozen=True, kw_only=True)
class RunMeta:
    """A run's ``meta.json``, checked (`from_dict`), read-only, with its options as typed properties.

    Attributes are the fields of `bounds.runlog.schema.META_FIELDS`; mappings are read-only (nested
    objects too; arrays are tuples). ``source`` names the file in messages.
    """

    schema_version: int
    run_id: str
    status: Status
    started_at: str
    config: Mapping[str, Any]
    error: str | None = None
    finished_at: str | None = None
    wall_s: float | None = None
    seeds: Mapping[str, Any] = field(default_factory=_empty)
    versions: Mapping[str, Any] = field(default_factory=_empty)
    git: Mapping[str, Any] = field(default_factory=_empty)
    device: str | None = None
    host: str | None = None
    pid: int | None = None
    data: Mapping[str, Any] = field(default_factory=_empty)
    prior: Mapping[str, Any] | None = None
    final: Mapping[str, Mapping[str, Any]] = field(default_factory=_empty)
    source: str = field(default="meta.json", compare=False)

    @classmethod
    def from_dict(cls, meta: Mapping[str, Any], *, source: str | Path = "meta.json") -> RunMeta:
        """Check a ``meta.json`` object and read it.

        Raises
        ------
        RunLogError
            Listing every problem (`meta_problems`), each naming the field and the bad value.
        """
        problems = meta_problems(meta)
        if problems:
            raise RunLogError(f"{source} is invalid:\n  - " + "\n  - ".join(problems))
        optional = {name: _freeze(meta[name]) for name in ("seeds", "versions", "git", "data", "final")
                    if meta.get(name) is not None}
        return cls(
            schema_version=meta["schema_version"], run_id=meta["run_id"], status=Status(meta["status"]),
            started_at=meta["started_at"], config=_freeze(meta["config"]), error=meta.get("error"),
            finished_at=meta.get("finished_at"),
            wall_s=meta.get("wall_s"),  # as written (a number: checked above), so readers copy it unchanged
            device=meta.get("device"), host=meta.get("host"), pid=meta.get("pid"),
            prior=None if meta.get("prior") is None else _freeze(meta["prior"]), source=str(source),
            **optional,
        )

    def config_dict(self) -> dict[str, Any]:
        """The configuration as the plain dict written (for `lora_dropout.runs.config.RunConfig.from_dict`)."""
        return _thaw(self.config)

    # --- options -----------------------------------------------------------------------------------

    def option(self, section: str, name: str, default: Any = _REQUIRED) -> Any:
        """``config.<section>.<name>`` as recorded; when the run does not record it, ``default`` if given,
        else RunLogError naming it. The typed properties below are the usual way in."""
        values = self.config.get(section)
        if isinstance(values, Mapping) and name in values:
            return values[name]
        if default is _REQUIRED:
            raise RunLogError(f"{self.source} has no config.{section}.{name}")
        return default

    @property
    def dropout_rate(self) -> float:
        """p: probability of dropping a column of A / row of B."""
        return float(self.option("lora_dropout", "dropout_rate"))

    @property
    def n_instances(self) -> int:
        """N (train): dropout instances averaged per step."""
        return int(self.option("lora_dropout", "n_instances"))

    @property
    def n_eval_instances(self) -> int:
        """N (test): members of the test-time ensemble; the config's None resolves to ``n_instances``
        (as `lora_dropout.method.config.LoraDropoutConfig.eval_instances` does)."""
        value = self.option("lora_dropout", "n_eval_instances")
        return self.n_instances if value is None else int(value)

    @property
    def rescale(self) -> bool:
        return bool(self.option("lora_dropout", "rescale"))

    @property
    def mask_scope(self) -> str:
        return str(self.option("lora_dropout", "mask_scope"))

    @property
    def eval_mode(self) -> str:
        return str(self.option("lora_dropout", "eval_mode"))

    @property
    def ensemble_average(self) -> str:
        return str(self.option("lora_dropout", "ensemble_average"))

    @property
    def adapter_method(self) -> str:
        """``lora`` or ``adalora``."""
        return str(self.option("adapter", "method"))

    @property
    def task(self) -> str:
        """``classification`` (also when absent: runs from before the field) or ``instruction``."""
        return str(self.option("train", "task", "classification"))

    @property
    def seed(self) -> int:
        """The run's root seed (``config.train.seed``; the derived stream seeds are in ``seeds``)."""
        return int(self.option("train", "seed"))

    @property
    def lr(self) -> float:
        return float(self.option("train", "lr"))

    @property
    def epochs(self) -> int:
        return int(self.option("train", "epochs"))

    @property
    def prior_fraction(self) -> float | None:
        """alpha: share of the training order the prior trained on; None for a run from before the field
        (and before the PAC-Bayes prior: such a run saved no prior at all)."""
        value = self.option("train", "prior_fraction", None)
        return None if value is None else float(value)

    # --- resolved sizes ----------------------------------------------------------------------------

    def _size(self, name: str) -> tuple[int, str]:
        if name in self.data:
            return int(self.data[name]), f"data.{name}"
        value = self.option("train", name, None)
        if not _is_int(value):  # None or "auto": resolved against the data, which this run did not record
            raise RunLogError(f"{self.source} records neither data.{name} nor config.train.{name}")
        return int(value), f"config.train.{name}"

    @property
    def n_train(self) -> int:
        """``n`` of the bounds: the training examples the run used (``data.n_train``, else the config's)."""
        return self._size("n_train")[0]

    @property
    def n_train_source(self) -> str:
        """Where `n_train` comes from: ``data.n_train`` or ``config.train.n_train``."""
        return self._size("n_train")[1]

    @property
    def n_test(self) -> int:
        """Test examples evaluated (``data.n_test``, else the config's when it is a number)."""
        return self._size("n_test")[0]

    @property
    def label_names(self) -> tuple[str, ...]:
        """The label vocabulary (``data.label_names``; label id = position)."""
        if "label_names" not in self.data:
            raise RunLogError(f"{self.source} has no data.label_names")
        return tuple(self.data["label_names"])


def read_json_object(path: Path) -> dict[str, Any]:
    """A JSON file holding an object, or RunLogError saying what is wrong with it."""
    try:
        value = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise RunLogError(f"{path} is corrupted: not valid JSON ({exc})") from None
    if not isinstance(value, dict):
        raise RunLogError(f"{path} is corrupted: expected a JSON object, got {type(value).__name__}")
    return value


def read_meta(run_dir: str | Path) -> dict[str, Any]:
    """``RUN_DIR/meta.json`` as the plain dict written (the writer's own form; readers use `read_run_meta`)."""
    path = Path(run_dir) / "meta.json"
    if not path.is_file():
        raise RunLogError(f"{run_dir} is not a run directory: meta.json is missing")
    meta = read_json_object(path)
    version = meta.get("schema_version")
    if version != SCHEMA_VERSION:
        raise RunLogError(
            f"{path} has schema_version {version!r}; this toolkit reads version {SCHEMA_VERSION}"
        )
    return meta


def read_run_meta(run_dir: str | Path) -> RunMeta:
    """``RUN_DIR/meta.json`` read and checked (`RunMeta.from_dict`)."""
    return RunMeta.from_dict(read_meta(run_dir), source=Path(run_dir) / "meta.json")
