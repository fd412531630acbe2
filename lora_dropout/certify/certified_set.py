"""Which examples a PAC-Bayes dropout certificate is computed on, at which level, and whether they are still the
ones the prior split was recorded for (docs/certificate.md, "Premises").

`resolve_prior` picks the prior (the data-free initialisation or the trained prior mean), `certified_ids` the
training examples it leaves certifiable (at group level only groups the prior saw no row of),
`certificate_levels` the levels a run is certified at, `certification_units` the units of each split at a level,
and `check_fingerprints` refuses a data file whose texts or labels changed since training.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from bounds.runlog import PRIOR_DIR, RunMeta, read_prior_record, read_run_meta

from ..tasks.splits import examples_fingerprint
from .units import Units, group_units, has_groups, row_units

#: The priors ``certify`` can use: ``init`` (data-free) and ``trained`` (data-dependent).
PRIORS = ("init", "trained")
PRIOR_STATE_FILES = {"init": "init.safetensors", "trained": "prior.safetensors"}


def _no_prior_message(run_dir: Path, meta: RunMeta, missing: Path) -> str:
    fraction = meta.prior_fraction
    recorded = ("its config has no train.prior_fraction" if fraction is None
                else f"its config says prior_fraction={fraction!r}")
    return (f"{run_dir} has no {PRIOR_DIR}/ prior to certify against ({missing} is missing; {recorded}): the run "
            "was trained by a toolkit version that does not save the PAC-Bayes prior; retrain it with this "
            "version, which writes prior/init.safetensors (and prior/prior.safetensors with prior_fraction > 0)")


def resolve_prior(run_dir: str | Path, prior: str | None = None) -> tuple[str, Path, dict | None]:
    """Which prior to use: ``(kind, path of its state, prior.json record or None)``.

    ``prior=None`` takes ``trained`` when ``prior/prior.safetensors`` exists, else ``init``.

    Raises
    ------
    FileNotFoundError
        When the run has no such prior (the message says what to do).
    ValueError
        For an unknown ``prior``.
    """
    run_dir = Path(run_dir)
    meta = read_run_meta(run_dir)
    if prior is not None and prior not in PRIORS:
        raise ValueError(f"prior={prior!r} is not one of {PRIORS}")
    directory = run_dir / PRIOR_DIR
    record = read_prior_record(run_dir)
    if prior is None:
        prior = "trained" if (directory / PRIOR_STATE_FILES["trained"]).is_file() else "init"
    path = directory / PRIOR_STATE_FILES[prior]
    if not path.is_file():
        if prior == "init" or not directory.is_dir():
            raise FileNotFoundError(_no_prior_message(run_dir, meta, path))
        fraction = None if record is None else record["prior_fraction"]
        raise FileNotFoundError(
            f"{run_dir} has no trained prior ({path} is missing; prior_fraction={fraction!r}): use --prior init "
            "(the data-free prior), or retrain with prior_fraction > 0")
    if prior == "trained" and record is None:
        raise FileNotFoundError(
            f"{run_dir / PRIOR_DIR / 'prior.json'} is missing: without it the examples the trained prior saw are "
            "unknown, so no example can be certified")
    return prior, path, record


def certified_ids(prior: str, record: dict | None, train_ids: Sequence[int],
                  groups: Mapping[int, str] | None = None) -> tuple[int, ...]:
    """The training examples a bound with ``prior`` may be computed on, in training order.

    ``init`` (data-free): all of them. ``trained``: prior.json's ``certifiable_ids``, which must be training
    examples and disjoint from its ``prior_ids``; with ``groups`` (sample id -> group: a group-level
    certificate), only the rows of groups none of whose rows the prior saw (a prior split by rows on grouped
    data leaves few or none).
    """
    train_ids = [int(i) for i in train_ids]
    if prior == "init":
        return tuple(train_ids)
    assert record is not None
    certifiable = set(record["certifiable_ids"])
    overlap = sorted(certifiable & set(record["prior_ids"]))
    if overlap:
        raise ValueError(
            f"prior/prior.json: {len(overlap)} certifiable_ids were also seen by the trained prior (prior_ids), "
            f"e.g. {overlap[:5]}: a bound on examples the prior depends on is not valid")
    unknown = sorted(certifiable - set(train_ids))
    if unknown:
        raise ValueError(f"prior/prior.json: {len(unknown)} certifiable_ids are not training examples of the run, "
                         f"e.g. {unknown[:5]}")
    if groups is not None:
        seen = {groups[int(i)] for i in record["prior_ids"]}
        certifiable = {i for i in certifiable if groups[i] not in seen}
        if not certifiable:
            raise ValueError(
                f"prior/prior.json: every certifiable example shares its group with an example the prior saw "
                f"(prior split level {record.get('level', 'row')!r}), so no group is independent of the prior: "
                "retrain with this version, whose prior takes whole groups, or certify rows with --assume-iid-rows "
                "if rows are i.i.d.")
    chosen = tuple(i for i in train_ids if i in certifiable)
    if not chosen:
        raise ValueError("prior/prior.json has no certifiable_ids: nothing to certify on")
    return chosen


def certificate_levels(kind: str, record: dict | None, groups: Mapping[int, str] | None, *,
                       assume_iid_rows: bool) -> list[str]:
    """The levels a run is certified at, the headline first (`lora_dropout.certify.units`).

    Data without groups: ``["row"]``. Grouped data: ``["group"]``, and ``"row"`` after it when rows are declared
    i.i.d.; a trained prior that took rows instead of whole groups (runs of earlier versions) leaves no group
    independent of it, so then only ``["row"]`` with the declaration, and a ValueError without it.
    """
    if groups is None:
        return ["row"]
    if kind == "trained" and record is not None and record.get("level", "row") == "row" and assume_iid_rows:
        return ["row"]
    return ["group", "row"] if assume_iid_rows else ["group"]


def group_of(frame) -> dict[int, str] | None:
    """``{sample_id: group}`` of a split's frame, or None when it has no groups (a row-level certificate)."""
    if not has_groups(frame["group"]):
        return None
    return {int(i): str(g) for i, g in zip(frame["sample_id"], frame["group"], strict=True)}


def certification_units(frame, sample_ids: Sequence[int], *, level: str) -> Units:
    """The units of the rows ``sample_ids`` of a split's frame (columns ``sample_id``, ``group``) at ``level``."""
    if level == "row":
        return row_units(len(sample_ids), declared=has_groups(frame["group"]))
    by_id = dict(zip(frame["sample_id"].astype(int), frame["group"], strict=True))
    return group_units([by_id[int(i)] for i in sample_ids])


def check_fingerprints(record: dict | None, frame, source: str) -> None:
    """ValueError naming ``source`` when the data no longer hold the texts and labels the prior split was recorded
    with (`lora_dropout.tasks.splits.examples_fingerprint` of prior.json's two id lists); runs trained before the
    fingerprints were recorded are not checked."""
    if record is None:
        return
    for key in ("prior", "certifiable"):
        recorded = record.get(f"{key}_fingerprint")
        if recorded is None:
            continue
        ids = record[f"{key}_ids"]
        try:
            now = examples_fingerprint(frame, ids)
        except KeyError:
            now = None
        if now != recorded:
            raise ValueError(
                f"the data file {source} no longer matches the run: prior/prior.json's {key}_ids point at other texts "
                f"or labels than when the run was trained (sha256 {recorded[:12]}... recorded, "
                f"{'ids missing' if now is None else now[:12] + '...'} now); the file was edited or reordered, so "
                "which examples the prior saw is unknown: restore the file or retrain")
