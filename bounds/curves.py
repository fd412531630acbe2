"""Bounds as functions of one input (``p``, ``lam``, ``n`` or ``delta``), for sensitivity plots.

:func:`bound_curve` evaluates one bound of `bounds.formulas` on a whole array of values of the
varied input in one vectorised call, with the other inputs taken from a run directory (as
:func:`bounds.report.evaluate_run` measures them) or passed explicitly; explicit inputs win.

What theory says the curves do (theory.md section 2): the gap of Theorem 4.4 falls in ``p``, ``lam``
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

from .estimators import (
    LIPSCHITZ_QUANTITIES,
    estimate_risks,
    estimate_stability,
    probe_quantity,
    stability_methods,
)
from .formulas import lemma43_bound, stability_bound, theorem44_bound, theorem44_gap
from .runlog import RunLogError, read_run

__all__ = ["BOUNDS", "DEFAULTS", "INPUTS", "VARIABLES", "bound_curve", "run_curve_inputs"]

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
#: Configuration inputs that are not measurements: used unless passed or varied.
DEFAULTS = {"lam": 1.0, "delta": 0.05}


def run_curve_inputs(
    run_dir: str | Path,
    names: tuple[str, ...],
    *,
    predictor: str = "full",
    loss_range: float | None = None,
    lipschitz: str = "max",
    space: str = "delta_w",
    stability_method: str | None = None,
) -> dict[str, float]:
    """The inputs ``names`` of a bound, measured on a run (only those asked for are read).

    ``p`` and ``n`` come from ``meta.json``; ``r_hat`` (the predictor's training risk) and the observed
    ``loss_range`` from ``samples.parquet`` at the final step (clipped at ``loss_range`` when given);
    ``lipschitz`` and ``hessian_min_eig`` from ``probes.parquet``; ``stability`` (``beta_hat``) from
    ``stability.parquet``. A missing table raises `bounds.runlog.MissingTableError` naming its producer.
    """
    run = read_run(run_dir)
    found: dict[str, float] = {}
    if "p" in names:
        found["p"] = float(run.config["lora_dropout"]["dropout_rate"])
    if "n" in names:
        found["n"] = run.n_train
    if {"r_hat", "loss_range"} & set(names):
        risks = estimate_risks(run.table("samples"), predictor, loss_range=loss_range)
        found.update(r_hat=risks.train.value, loss_range=risks.loss_range.value)
    if "lipschitz" in names:
        found["lipschitz"] = probe_quantity(run.table("probes"), LIPSCHITZ_QUANTITIES[lipschitz], space,
                                            run_dir=run_dir).value
    if "hessian_min_eig" in names:
        found["hessian_min_eig"] = probe_quantity(run.table("probes"), "hessian_min_eig", space,
                                                  run_dir=run_dir).value
    if "stability" in names:
        table = run.table("stability")
        method = stability_method or next(iter(stability_methods(table)), None)
        if method is None:
            raise RunLogError(f"{run_dir}/stability.parquet has no rows")
        estimate = estimate_stability(table, method, loss_range=loss_range, run_dir=run_dir)
        found["stability"] = estimate.beta_hat.value
    return {k: v for k, v in found.items() if k in names}


def bound_curve(
    bound: str,
    vary: str,
    values: np.ndarray,
    run_dir: str | Path | None = None,
    *,
    inputs: Mapping[str, float] | None = None,
    predictor: str = "full",
    loss_range: float | None = None,
    lipschitz: str = "max",
    space: str = "delta_w",
    stability_method: str | None = None,
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
        ``delta`` default to `DEFAULTS`.
    predictor, loss_range, lipschitz, space, stability_method
        How the run's inputs are measured, as in :func:`bounds.report.evaluate_run`.

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
    given = {**DEFAULTS, **(inputs or {})}
    fixed = {k: given[k] for k in names if k != vary and k in given}
    needed = tuple(k for k in names if k != vary and k not in given)
    if needed and run_dir is None:
        raise ValueError(f"bound {bound!r} needs {needed}: pass them in inputs or give a run_dir")
    if needed:
        fixed.update(run_curve_inputs(run_dir, needed, predictor=predictor, loss_range=loss_range,
                                      lipschitz=lipschitz, space=space, stability_method=stability_method))
    x = np.asarray(values, dtype=float)
    if x.ndim != 1:
        raise ValueError(f"values must be 1-D, got shape {x.shape}")
    b = formula(**{k: (x if k == vary else fixed[k]) for k in names})
    frame = pd.DataFrame({"bound": bound, vary: x, "value": b.value, "vacuous": b.vacuous,
                          "reason": b.reason})
    frame.attrs["inputs"] = fixed
    return frame
