"""The measurements of ``probes.parquet`` as report inputs: the Lipschitz constant ``eta``, the curvature
``Lambda_min`` and the stationarity residual, with the Lanczos convergence and the ``lam`` they were
measured with.
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from ..runlog import Hypothesis, Space
from ..validation import check_option
from .quantity import MissingMeasurementError, Quantity

__all__ = [
    "LIPSCHITZ_QUANTITIES",
    "probe_convergence",
    "probe_lam",
    "probe_quantity",
]


#: ``lipschitz`` option -> the ``quantity`` of ``probes.parquet`` that holds it.
LIPSCHITZ_QUANTITIES = {"max": "lipschitz_max", "q99": "lipschitz_q99"}


def _probe_row(probes: pd.DataFrame, quantity: str, space: str, hypothesis: str) -> pd.DataFrame:
    """The rows of (quantity, space, hypothesis); a table without ``hypothesis`` holds unmasked rows only."""
    hypothesis = check_option(Hypothesis, "hypothesis", hypothesis).value
    hyp = probes["hypothesis"] if "hypothesis" in probes else pd.Series("unmasked", index=probes.index)
    return probes[(probes["quantity"] == quantity) & (probes["space"] == space) & (hyp == hypothesis)]


def probe_quantity(probes: pd.DataFrame, quantity: str, space: str = "delta_w", *, name: str | None = None,
                   run_dir: str | Path | None = None, hypothesis: str = "unmasked") -> Quantity:
    """One measurement of ``probes.parquet`` (``quantity``, ``space``) as a `Quantity`.

    Parameters
    ----------
    probes : DataFrame
        ``probes.parquet``.
    quantity : str
        E.g. ``lipschitz_max``, ``lipschitz_q99``, ``lipschitz_mean``, ``hessian_min_eig``, ``grad_norm``.
    space : str
        ``delta_w`` or ``factors``.
    name : str, optional
        Name of the returned quantity; default ``quantity``.
    run_dir : path, optional
        Used in the error message's producer command.
    hypothesis : {"unmasked", "expected"}
        The predictor the row was measured at (`bounds.runlog.Hypothesis`).

    Raises
    ------
    MissingMeasurementError
        When the row is absent.
    """
    space = check_option(Space, "space", space).value
    row = _probe_row(probes, quantity, space, hypothesis)
    if row.empty:
        hyp = probes["hypothesis"] if "hypothesis" in probes else ["unmasked"] * len(probes)
        present = ", ".join(f"{q}/{s}" + ("" if h == "unmasked" else f"/{h}")
                            for q, s, h in zip(probes["quantity"], probes["space"], hyp, strict=True))
        where = "" if hypothesis == "unmasked" else f" hypothesis={hypothesis}"
        raise MissingMeasurementError("probes", f"row quantity={quantity} space={space}{where}", present, run_dir,
                                      "" if hypothesis == "unmasked" else f" --hypothesis {hypothesis}")
    r = row.iloc[0]
    stderr = float(r["stderr"]) if pd.notna(r["stderr"]) else math.nan
    lam = "" if pd.isna(r["lam"]) else f", lam={float(r['lam']):g}"
    at = "" if hypothesis == "unmasked" else f" hypothesis={hypothesis}"
    source = (f"probes.parquet quantity={quantity} space={space}{at} "
              f"(iterations={int(r['iterations'])}, n={int(r['n'])}{lam})")
    return Quantity(name or quantity, float(r["value"]), source, stderr=stderr, n=int(r["n"]))


def probe_convergence(probes: pd.DataFrame, quantity: str, space: str,
                      hypothesis: str = "unmasked") -> tuple[bool | None, float]:
    """``(converged, residual)`` of a probe row: did Lanczos reach its tolerance, and its residual.

    ``converged`` is None when the table does not record it (a ``probes.parquet`` written before the
    ``converged`` column) or the row is absent; ``residual`` is NaN where not recorded.
    """
    row = _probe_row(probes, quantity, space, hypothesis)
    if row.empty:
        return None, math.nan
    residual = float(row["residual"].iloc[0]) if pd.notna(row["residual"].iloc[0]) else math.nan
    if "converged" not in row or pd.isna(row["converged"].iloc[0]):
        return None, residual
    return bool(row["converged"].iloc[0]), residual


def probe_lam(probes: pd.DataFrame, quantity: str, space: str, hypothesis: str = "unmasked") -> float:
    """The ``lam`` of the regularised loss a probe row was measured with (NaN when not recorded)."""
    row = _probe_row(probes, quantity, space, hypothesis)
    return float(row["lam"].iloc[0]) if len(row) and pd.notna(row["lam"].iloc[0]) else math.nan
