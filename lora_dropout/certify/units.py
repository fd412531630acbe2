"""The level at which a PAC-Bayes certificate is stated: groups or rows (docs/certificate.md, "Premises").

The PAC-Bayes-kl bound needs its ``n_b`` examples i.i.d. and independent of the prior. When the data come in
groups (reviews of one movie, turns of one dialogue), rows of a group are not independent, so the bound is
stated per group: one "example" per certified group, its loss the group's mean loss (still in ``[0, 1]``),
``n_b`` the number of certified groups. The risk certified is then that of a new group's average example.
A row-level statement is valid on grouped data only when rows are declared i.i.d.

Monte Carlo at group level: with ``k`` draws per row, the mean over a group's rows of draw ``d``'s losses
is one ``[0, 1]``-valued variable per (group, draw), independent across both, with mean the group's Gibbs
loss; the kl-Chernoff bound on their mean holds for any independent ``[0, 1]`` variables (Maurer 2004), so
the Monte Carlo term uses ``n_b k`` with ``n_b`` the number of groups.

Pure numpy: `Units` says which unit each row belongs to, `unit_mean` averages per unit, then over units.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

#: The levels a certificate can be stated at.
LEVELS = ("group", "row")
#: What each level's certificate assumes, as the reports and the audit state it.
PREMISES = {
    "group": "groups i.i.d. (the certified groups hold no row the prior saw); risk of a new group's average example",
    "row": "rows declared i.i.d. (--assume-iid-rows); risk of a new row",
    "row_ungrouped": "rows i.i.d. (the data have no group column); risk of a new row",
}


@dataclass(frozen=True)
class Units:
    """Which independent unit each row of a split is in.

    Attributes
    ----------
    level : {"group", "row"}
    index : ndarray of int, shape ``(n,)``
        Unit of every row, ``0 .. count - 1``.
    count : int
        Number of units: ``n_b`` of the bound.
    premise : str
        What the statement at this level assumes (`PREMISES`).
    """

    level: str
    index: np.ndarray
    count: int
    premise: str


def _missing(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def has_groups(groups: Sequence) -> bool:
    """Whether rows carry groups (any non-missing value)."""
    return any(not _missing(g) for g in groups)


def row_units(n: int, *, declared: bool) -> Units:
    """One unit per row; ``declared``: rows of grouped data declared i.i.d. (else: data without groups)."""
    return Units("row", np.arange(n, dtype=np.int64), n, PREMISES["row" if declared else "row_ungrouped"])


def group_units(groups: Sequence) -> Units:
    """One unit per distinct group, numbered in the order the groups first occur.

    Raises ValueError for a row without a group.
    """
    missing = [i for i, g in enumerate(groups) if _missing(g)]
    if missing:
        raise ValueError(f"row {missing[0]} has no group: a group-level certificate needs a group on every row")
    names = [str(g) for g in groups]
    number = {g: i for i, g in enumerate(dict.fromkeys(names))}
    return Units("group", np.array([number[g] for g in names], dtype=np.int64), len(number), PREMISES["group"])


def unit_mean(values: np.ndarray, units: Units) -> np.ndarray:
    """Mean over units of each unit's mean over its rows, along the last axis of ``values``.

    ``values`` has shape ``(..., n)``; the result ``(...)``. At row level this is the plain mean.
    """
    values = np.asarray(values, dtype=np.float64)
    if values.shape[-1] != len(units.index):
        raise ValueError(f"values have {values.shape[-1]} rows but the units {len(units.index)}")
    flat = values.reshape(-1, values.shape[-1])  # (..., n) -> (m, n): one bincount per row, no (n, units) matrix
    sums = np.stack([np.bincount(units.index, weights=v, minlength=units.count) for v in flat])
    sums = sums.reshape(*values.shape[:-1], units.count)
    sizes = np.bincount(units.index, minlength=units.count)
    return (sums / sizes).mean(axis=-1)
