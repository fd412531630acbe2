"""The effective regularisation strength of the masks, ``lam_eff`` (this toolkit's addition, not in the paper).
"""

from __future__ import annotations

import pandas as pd

from ..formulas import Estimate, estimate_mean, sparsity
from .losses import loss_matrix
from .quantity import MissingMeasurementError

__all__ = [
    "dw_norm_squared",
    "estimate_lam_eff",
]


def dw_norm_squared(modules: pd.DataFrame, step: int) -> float:
    """``sum_k ||dW_k||_F^2`` over the adapted modules at ``step`` (``modules.parquet``, ``dw_norm``)."""
    rows = modules[modules["step"] == step]
    if rows.empty:
        raise MissingMeasurementError("modules", f"rows at step={step}",
                                      f"steps {sorted(modules['step'].unique())}")
    return float((rows["dw_norm"].to_numpy(dtype=float) ** 2).sum())


def estimate_lam_eff(samples: pd.DataFrame, modules: pd.DataFrame, p: float, *, step: int | None = None,
                     confidence: float = 0.95) -> Estimate:
    """Effective regularisation strength of the masks, ``lam_eff`` (NOT in the paper; this toolkit's own).

    The paper analyses LoRA Dropout as the sparsity-regularised loss ``L(theta) + lam s ||dW||^2``
    (Eqs. 9-11) with ``lam`` arbitrary. We estimate the ``lam`` the masks actually impose on the
    trained model by matching that penalty to the measured mask-induced increase of the training loss:

        lam_eff = (mean member training loss - mean deterministic training loss) / (s * sum_k ||dW_k||_F^2)

    with ``s = 2p - p^2`` and ``||dW_k||_F`` from ``modules.parquet`` (``dw_norm``) at the same step.

    What it assumes: a second-order expansion of the masked loss around the deterministic predictor,
    ``E_m L(theta_bar + eps_m) ~ L(theta_bar) + (1/2) E_m eps_m^T H eps_m``, where the first-order term
    averages out because the deterministic predictor sits at the mean of the masked weights (true for
    ``eval_mode`` ``expected``, and for ``full`` only with inverted rescaling); the quadratic term is
    then *identified* with ``lam s ||dW||^2``, i.e. the curvature seen by the mask noise is summarised
    by one number. Members are the run's finite test-time ensemble and the training loss is measured
    on the evaluation subset of the training set. Where the expansion is poor (large ``p``, strongly
    non-quadratic loss) ``lam_eff`` is only a descriptive number; it may be negative.

    The standard error comes from the per-sample differences ``mean_r loss_r(x_i) - loss_det(x_i)``
    (samples independent); ``||dW||`` is treated as exact.

    Parameters
    ----------
    samples, modules : DataFrame
        ``samples.parquet`` and ``modules.parquet``.
    p : float
        ``dropout_rate``.
    step : int, optional
        Default: the final evaluation step of ``samples``.
    confidence : float
        Level of the t-interval.

    Raises
    ------
    ValueError
        When ``s * sum ||dW||^2 = 0`` (``p = 0`` or ``dW = 0``): ``lam_eff`` is then undefined.
    """
    matrix = loss_matrix(samples, "train", step)
    denominator = sparsity(p) * dw_norm_squared(modules, matrix.step)
    if not denominator > 0:
        raise ValueError(f"lam_eff is undefined: s * sum ||dW||^2 = {denominator!r} (p = {p!r})")
    e = estimate_mean(matrix.member.mean(axis=0) - matrix.deterministic, confidence)
    return Estimate(e.value / denominator, e.stderr / denominator, e.ci_low / denominator,
                    e.ci_high / denominator, e.n, e.confidence)
