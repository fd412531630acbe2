"""Bounds as functions of one input (``p``, ``lam``, ``n`` or ``delta``), for sensitivity plots.

:func:`bound_curve` evaluates one bound of `bounds.formulas` on a whole array of values of the
varied input in one vectorised call, with the other inputs taken from a run directory (as
:func:`bounds.report.evaluate_run` measures them) or passed explicitly; explicit inputs win.

What theory says the curves do (docs/bounds.md): the gap of Theorem 4.4 falls in ``p``, ``lam``
and ``n`` and rises as ``delta`` shrinks; where ``D = Lambda_min + 2 lam s <= 0`` the bound is vacuous
(value ``inf``, with the reason). Measured inputs such as ``eta`` and ``Lambda_min`` stay fixed along a
curve: a curve over ``p`` is the bound for *this* run's measurements at other rates, not a prediction
of what training at another rate would measure.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd

from .formulas import lemma43_bound, stability_bound, theorem44_bound, theorem44_gap
from .inputs import RunInputs
from .settings import BoundSettings

__all__ = ["BOUNDS", "INPUTS", "VARIABLES", "bound_curve", "run_curve_inputs"]

#: Bound name -> (formula, the inputs it takes, in order).
BOUNDS = {
    "theorem44_gap": (theorem44_gap, ("loss_range", "lipschitz", "hessian_min_eig", "lam", "p", "n",
                                      "delta")),
    "theorem44": (theorem44_bound, ("r_hat", "loss_range", "lipschitz", "hessian_min_eig", "lam", "p", "n",
                                    "delta")),
    "stability": (stability_bound, ("lipschitz", "hessian_min_eig", "lam", "p", "n")),
    "lemma43": (lemma43_bound, ("r_hat", "loss_range", "n", "delta", "stability")),
}
#: Every input of the bounds above.
INPUTS = tuple(dict.fromkeys(name for _, names in BOUNDS.values() for name in names))
#: Inputs a curve can vary.
VARIABLES = ("p", "lam", "n", "delta")


def run_curve_inputs(run_dir: str | Path, names: tuple[str, ...],
                     settings: BoundSettings | None = None) -> dict[str, float]:
    """The inputs ``names`` of a bound, measured on a run (`bounds.inputs.RunInputs`; only those asked for
    are read).

    ``p`` and ``n`` come from ``meta.json``; ``r_hat`` (the training risk of the settings' predictor, at
    the unmasked model by default ``full``) and the observed ``loss_range`` from ``samples.parquet`` at
    the final step (clipped at the settings' ``loss_range`` when given); ``lipschitz`` and
    ``hessian_min_eig`` from ``probes.parquet``; ``stability`` (``beta_hat``) from ``stability.parquet``. A
    missing table raises `bounds.runlog.MissingTableError` naming its producer.
    """
    run = RunInputs(run_dir, settings)
    found: dict[str, float] = {}
    if "p" in names:
        found["p"] = run.p.value
    if "n" in names:
        found["n"] = run.n.value
    if {"r_hat", "loss_range"} & set(names):
        risks = run.risks(run.predictor)
        found.update(r_hat=risks.train.value, loss_range=risks.loss_range.value)
    if "lipschitz" in names:
        found["lipschitz"] = run.lipschitz.value
    if "hessian_min_eig" in names:
        found["hessian_min_eig"] = run.hessian_min_eig.value
    if "stability" in names:
        found["stability"] = run.beta_hat(run.method(), clipped=True).beta_hat.value
    return {k: v for k, v in found.items() if k in names}


def bound_curve(
    bound: str,
    vary: str,
    values: np.ndarray,
    run_dir: str | Path | None = None,
    *,
    inputs: Mapping[str, float] | None = None,
    settings: BoundSettings | None = None,
) -> pd.DataFrame:
    """A bound as a function of one input, the others from a run and/or ``inputs``.

    Parameters
    ----------
    bound : {"theorem44_gap", "theorem44", "stability", "lemma43"}
        :func:`~bounds.formulas.theorem44_gap`, :func:`~bounds.formulas.theorem44_bound`,
        :func:`~bounds.formulas.stability_bound` (Prop. 4.2) or :func:`~bounds.formulas.lemma43_bound`
        (printed form, ``beta`` = the measured ``beta_hat``).
    vary : {"p", "lam", "n", "delta"}
        The input on the x-axis; must be an input of ``bound`` (Lemma 4.3 has no ``p`` or ``lam``).
    values : array_like
        Values of ``vary``.
    run_dir : path, optional
        Run whose measurements supply the inputs not in ``inputs``.
    inputs : mapping, optional
        Explicit inputs by formula name (`INPUTS`: ``r_hat``, ``loss_range``, ``lipschitz``,
        ``hessian_min_eig``, ``lam``, ``p``, ``n``, ``delta``, ``stability``); they override the run's, and
        those the bound does not take are ignored (one mapping can serve several bounds). ``lam`` and
        ``delta`` default to the settings'.
    settings : BoundSettings, optional
        How the run's inputs are measured (``predictor``, ``loss_range``, ``lipschitz``, ``space``,
        ``stability_method``, as in :func:`bounds.report.evaluate_run`), and the ``lam`` and ``delta`` used
        unless passed or varied. Default ``BoundSettings()``.

    Returns
    -------
    DataFrame
        Columns ``bound``, ``<vary>``, ``value``, ``vacuous``, ``reason`` (one row per value;
        ``inf`` where vacuous). ``frame.attrs["inputs"]`` holds the fixed inputs used.

    Examples
    --------
    >>> worked = dict(loss_range=1.0, lipschitz=1.0, hessian_min_eig=0.0, lam=1.0, n=3668, delta=0.05)
    >>> curve = bound_curve("theorem44_gap", "p", [0.0, 0.1, 0.5], inputs=worked)
    >>> curve[["p", "value", "vacuous"]].round(4).to_dict("list")
    {'p': [0.0, 0.1, 0.5], 'value': [inf, 0.4182, 0.2153], 'vacuous': [True, False, False]}
    """
    if bound not in BOUNDS:
        raise ValueError(f"bound={bound!r} is not one of {tuple(BOUNDS)}")
    formula, names = BOUNDS[bound]
    if vary not in VARIABLES or vary not in names:
        raise ValueError(f"bound {bound!r} cannot vary {vary!r}: it varies one of "
                         f"{tuple(v for v in VARIABLES if v in names)}")
    unknown = sorted(set(inputs or {}) - set(INPUTS))
    if unknown:
        raise ValueError(f"inputs {unknown} are not inputs of any bound; known: {INPUTS}")
    settings = BoundSettings() if settings is None else settings
    given = {"lam": settings.lam, "delta": settings.delta, **(inputs or {})}
    fixed = {k: given[k] for k in names if k != vary and k in given}
    needed = tuple(k for k in names if k != vary and k not in given)
    if needed and run_dir is None:
        raise ValueError(f"bound {bound!r} needs {needed}: pass them in inputs or give a run_dir")
    if needed:
        fixed.update(run_curve_inputs(run_dir, needed, settings))
    x = np.asarray(values, dtype=float)
    if x.ndim != 1:
        raise ValueError(f"values must be 1-D, got shape {x.shape}")
    b = formula(**{k: (x if k == vary else fixed[k]) for k in names})
    frame = pd.DataFrame({"bound": bound, vary: x, "value": b.value, "vacuous": b.vacuous,
                          "reason": b.reason})
    frame.attrs["inputs"] = fixed
    return frame
