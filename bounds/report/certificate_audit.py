"""The audit of the PAC-Bayes dropout certificates: each premise checked against what the run recorded.

Every item is an `Assumption` that can fail (docs/certificate.md, "Premises"):

==================================  ================================================================
``certified_disjoint_from_prior``   prior/prior.json: certifiable_ids and prior_ids disjoint (init: no
                                    example seen)
``n_bound_matches_prior``           the certified rows (and, at group level, groups) are those
                                    prior.json leaves certifiable
``independence_level``              the level the bound counts examples at, and its premise: groups
                                    (the prior took whole groups), rows of data without groups, or
                                    rows declared i.i.d. by the user (not checkable)
``data_unchanged``                  the certified rows' texts and labels, fingerprinted when
                                    certify evaluated them, are those fingerprinted at training
``every_certified_example_evaluated``  counted while certify ran: every certified row got every
                                    draw at every grid point, and passes = grid_size x draws
``selection_counted``               certify_log.jsonl: how many certificates were tried on the run;
                                    delta and delta_mc are split over all of them
``learned_tensors_match_run``       (learned posterior) each tensor's KL weight is 1 - p of the run's
                                    config for a LoRA factor and 1 otherwise, and its count is the
                                    tensor's size in posterior/learned.safetensors
==================================  ================================================================
"""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path

import numpy as np
import pandas as pd

from ..assumptions import Assumption
from ..runlog import CERTIFY_LOG, LEARNED_DIR, read_certify_log

_WEIGHT_TOL = 1e-12


def disjoint(kind: str, record: dict | None) -> Assumption:
    name = "certified_disjoint_from_prior"
    if kind == "init":
        return Assumption(name, 0.0, 0.0, True, "the init prior (seeded initialisation) depends on no example, so "
                                                "every training example may be certified")
    if record is None:
        return Assumption(name, math.nan, 0.0, None, "not measurable: prior/prior.json is missing, so the examples "
                                                     "the trained prior saw are unknown")
    overlap = sorted(set(record["certifiable_ids"]) & set(record["prior_ids"]))
    example = f", e.g. {overlap[:5]}" if overlap else ""
    return Assumption(name, float(len(overlap)), 0.0, not overlap,
                      f"prior/prior.json: {len(overlap)} of {len(record['certifiable_ids'])} certifiable_ids are among "
                      f"the {len(record['prior_ids'])} prior_ids the trained prior saw{example}; the bound needs "
                      "none (a prior that saw a certified example is not a prior)")


def n_bound(kind: str, record: dict | None, frame: pd.DataFrame, n_train: int | None) -> Assumption:
    """The certified rows (and groups) against prior.json (or all of ``n_train`` for the init prior)."""
    name = "n_bound_matches_prior"
    level, units, rows = str(frame["level"].iloc[0]), int(frame["n_bound"].iloc[0]), int(frame["n_bound_rows"].iloc[0])
    if kind == "init":
        if n_train is None:
            return Assumption(name, float(rows), math.nan, None, "not measurable: meta.json has no n_train")
        return Assumption(name, float(rows), float(n_train), rows == n_train,
                          f"{rows} certified rows = n_train (the init prior leaves all {n_train} certifiable)")
    if record is None:
        return Assumption(name, float(rows), math.nan, None, "not measurable: prior/prior.json is missing")
    expected = len(record["certifiable_ids"])
    if level == "group" and record.get("certifiable_groups") is not None:
        groups = len(record["certifiable_groups"])
        return Assumption(name, float(units), float(groups), rows == expected and units == groups,
                          f"{rows} certified rows in {units} groups; prior/prior.json leaves {expected} rows in "
                          f"{groups} groups certifiable (the groups the trained prior did not see)")
    holds = rows == expected if level == "row" or record.get("level", "row") == "group" else rows <= expected
    return Assumption(name, float(rows), float(expected), holds,
                      f"{rows} certified rows; prior/prior.json leaves {expected} certifiable" +
                      (" (at group level only those of groups the prior saw no row of)" if level == "group" else ""))


def independence_level(kind: str, record: dict | None, frame: pd.DataFrame) -> Assumption:
    """The level at which the bound counts independent examples, and whether the prior split respects it."""
    name = "independence_level"
    level, premise = str(frame["level"].iloc[0]), str(frame["premise"].iloc[0])
    units, rows = int(frame["n_bound"].iloc[0]), int(frame["n_bound_rows"].iloc[0])
    split = "none (data-free)" if kind == "init" else ("unknown" if record is None else record.get("level", "row"))
    if level == "group":
        holds = True if kind == "init" or split == "group" else None
        why = ("the prior took whole groups, so no certified group shares a row with it" if holds else
               "the prior took rows, not groups; certify kept only the groups it saw no row of, which prior.json "
               "cannot confirm")
    elif "declared" in premise:
        holds, why = None, "rows declared i.i.d. by the user (--assume-iid-rows): a premise the data cannot confirm"
    else:
        holds, why = True, "the data have no groups, so rows are the units"
    return Assumption(name, float(units), float(rows), holds,
                      f"level {level}: n_b = {units} units over {rows} rows; premise: {premise}; prior split: {split}; "
                      f"{why}")


def data_unchanged(record: dict | None, frame: pd.DataFrame) -> Assumption:
    name = "data_unchanged"
    recorded = None if record is None else record.get("certifiable_fingerprint")
    found = str(frame["data_fingerprint"].iloc[0])
    rows = int(frame["n_bound_rows"].iloc[0])
    if recorded is None:
        return Assumption(name, math.nan, math.nan, None, "not measurable: prior/prior.json has no fingerprint (a run "
                                                          "trained before they were recorded)")
    if rows != len(record["certifiable_ids"]):
        return Assumption(name, math.nan, math.nan, None, f"not measurable: {rows} of the "
                          f"{len(record['certifiable_ids'])} certifiable rows were certified, and the fingerprint "
                          "covers them all")
    same = recorded == found
    return Assumption(name, float(same), 1.0, same,
                      f"sha256 of the certified rows' (sample_id, label, text) when certify evaluated them "
                      f"({found[:12]}...) {'equals' if same else 'differs from'} prior/prior.json's "
                      f"certifiable_fingerprint ({recorded[:12]}...)")


def every_example_evaluated(frame: pd.DataFrame) -> Assumption:
    rows, k, grid = (int(frame[c].iloc[0]) for c in ("n_bound_rows", "draws", "grid_size"))
    counted = frame["evaluated_draws"].to_numpy(int)
    passes = frame["passes"].to_numpy(int)
    holds = bool((counted == rows * k).all() and (passes == grid * k).all())
    return Assumption("every_certified_example_evaluated", float(counted.min()), float(rows * k), holds,
                      f"(row, draw) losses counted while certify ran: {sorted(set(counted.tolist()))} per grid point, "
                      f"against {rows} certified rows x {k} draws = {rows * k}; passes {sorted(set(passes.tolist()))} "
                      f"against grid_size x draws = {grid * k}")


def selection(run_dir: Path) -> tuple[int, Assumption]:
    """``(m, audit item)``: the distinct certificates tried on the run, which the reports split delta and delta_mc
    over. A measurement repeated with the same kind and settings (seed included) is the same certificate: its
    masks and noise are functions of the settings and the sample ids, so it has no other value to select."""
    entries = read_certify_log(run_dir)
    name = "selection_counted"
    if not entries:
        return 1, Assumption(name, math.nan, math.nan, None,
                             f"not measurable: the run has no {CERTIFY_LOG} (certified before it was kept), so how "
                             "many certificates were tried on it is unknown; reported as if one")
    distinct = {json.dumps({"kind": e["kind"], "settings": e.get("settings")}, sort_keys=True) for e in entries}
    kinds = {k: len({d for d in distinct if json.loads(d)["kind"] == k}) for k in ("grid", "learned")}
    m = len(distinct)
    return m, Assumption(
        name, float(m), float(len(entries)), True,
        f"{CERTIFY_LOG}: {len(entries)} certificate measurements on this run, {m} distinct ({kinds['grid']} grid, "
        f"{kinds['learned']} learned; a repeat with the same settings is the same certificate); each report's delta "
        f"and delta_mc are divided by {m}, so the smallest of all of them may be reported")


def _safetensors_shapes(path: Path) -> dict[str, list[int]]:
    """Tensor shapes from a safetensors file's JSON header (8-byte little-endian length, then the header)."""
    with path.open("rb") as handle:
        (length,) = struct.unpack("<Q", handle.read(8))
        header = json.loads(handle.read(length))
    return {k: v["shape"] for k, v in header.items() if k != "__metadata__"}


def learned_tensors(run_dir: Path, record: dict, dropout_rate: float | None) -> Assumption:
    """learned.json's per-tensor ``weight`` against the run's p and the tensor's kind, ``count`` against its size."""
    name = "learned_tensors_match_run"
    path = Path(run_dir) / LEARNED_DIR / "learned.safetensors"
    if dropout_rate is None or not path.is_file():
        return Assumption(name, math.nan, math.nan, None, f"not measurable: {'the run config has no dropout_rate' if dropout_rate is None else f'{path} is missing'}")
    shapes = _safetensors_shapes(path)
    wrong = []
    for tensor, t in record["tensors"].items():
        factor = ".lora_A." in tensor or ".lora_B." in tensor
        weight = (1.0 - dropout_rate) if factor else 1.0
        size = int(np.prod(shapes[tensor])) if tensor in shapes else None
        if size is None or int(t["count"]) != size or abs(float(t["weight"]) - weight) > _WEIGHT_TOL:
            wrong.append(f"{tensor} (weight {t['weight']!r}, expected {weight!r}; count {t['count']!r}, size {size!r})")
    missing = sorted(set(shapes) - set(record["tensors"]))
    wrong += [f"{m} (in learned.safetensors, not in learned.json: outside the KL)" for m in missing]
    return Assumption(name, float(len(wrong)), 0.0, not wrong,
                      f"{len(record['tensors'])} tensors: KL weight 1 - p = {1 - dropout_rate:g} for LoRA factors and 1 "
                      "for the head, count = size in learned.safetensors" + (f"; wrong: {wrong[:3]}" if wrong else ""))
