"""The ``probes`` table: curvature and Lipschitz probes of a LoRA Dropout model (docs/bounds.md and docs/measurement.md).

The stability bound (Prop. 4.2, Thm 4.4) reads

    beta <= 2 eta^2 / ((Lambda_min + 2 lambda s) n)

`run_probes` measures its model-side inputs on the training set ``S`` (``eta``, ``Lambda_min``,
``Lambda_max`` and stationarity; `lora_dropout.probes.gradients`, `lora_dropout.probes.curvature`), per
parameter space and hypothesis (`lora_dropout.probes.space`), and returns them as the run log's
``probes`` table.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from bounds.runlog import TABLES, Hypothesis, Space

from ..method.apply import LoraDropout
from ..method.validation import check_option
from ..tasks.classification import EncodedSplit
from .curvature import lanczos_extremes
from .gradients import hessian_hvp, objective_grad_norm, per_sample_grad_norms


def _row(
    quantity: str,
    space: str,
    value: float,
    *,
    n: int,
    iterations: int,
    stderr: float = np.nan,
    residual: float = np.nan,
    converged: bool = True,
    lam: float = np.nan,
    hypothesis: Hypothesis | str = Hypothesis.UNMASKED,
) -> dict:
    return {  # the plain strings of the options: what the table holds
        "quantity": quantity,
        "space": Space(space).value,
        "value": float(value),
        "stderr": float(stderr),
        "iterations": int(iterations),
        "residual": float(residual),
        "converged": bool(converged),
        "n": n,
        "lam": float(lam),
        "hypothesis": Hypothesis(hypothesis).value,
    }


def run_probes(
    model: torch.nn.Module,
    handle: LoraDropout,
    data: EncodedSplit,
    *,
    lam: float = 1.0,
    spaces: tuple[Space | str, ...] = tuple(Space),
    tol: float = 1e-3,
    maxiter: int | None = None,
    batch_size: int = 16,
    hessian_data: EncodedSplit | None = None,
    hypothesis: Hypothesis | str = Hypothesis.UNMASKED,
) -> pd.DataFrame:
    """All probes at ``theta(S)`` on the training set ``data``, as the run log's ``probes`` table.

    Per space: ``lipschitz_max`` (``eta``), ``lipschitz_q99``, ``lipschitz_mean`` (stderr = sample std
    / sqrt(n)), all with ``iterations = n = len(data)``; ``hessian_min_eig`` (``Lambda_min``) and
    ``hessian_max_eig`` with ``iterations`` = Hessian-vector products Lanczos used, its ``residual``
    and ``converged`` (``lam`` NaN: the Hessian is of the unregularised loss; ``n =
    len(hessian_data)``); ``grad_norm`` (stationarity, on ``data``). ``n`` of every row is the number of
    examples it was measured on. Columns are those of ``bounds.runlog.TABLES["probes"]``.

    Parameters
    ----------
    data : EncodedSplit
        The examples of the Lipschitz and stationarity rows: the whole training set for an ``eta``
        that is the maximum over all ``n`` examples the bound counts (one per-sample-gradient pass).
    hessian_data : EncodedSplit, optional
        The examples whose mean loss's Hessian Lanczos measures (each product is a pass over them, so a
        subset is usual); default ``data``.
    lam : float
        ``lambda`` of the regularised loss (Lipschitz and gradient rows).
    tol, maxiter : Lanczos accuracy and restarts (`lora_dropout.probes.curvature.lanczos_extremes`).
    spaces : tuple of Space or str
        The parameter spaces measured (`lora_dropout.probes.space`); default both.
    hypothesis : Hypothesis or str
        The predictor probed (`lora_dropout.probes.space`, "Hypotheses"): ``"unmasked"``, the unmasked
        model (default), or ``"expected"``, every ``dW`` times ``handle.scale_for("expected")``;
        recorded in every row's ``hypothesis``.
    """
    hypothesis = check_option(Hypothesis, "hypothesis", hypothesis)
    spaces = [check_option(Space, "space", space) for space in spaces]
    scale = 1.0 if hypothesis == Hypothesis.UNMASKED else handle.scale_for("expected")
    n = len(data)
    hessian_data = data if hessian_data is None else hessian_data
    rows = []
    for space in spaces:
        norms = per_sample_grad_norms(model, handle, data, space=space, lam=lam, batch_size=batch_size,
                                      scale=scale)
        stderr = norms.std(ddof=1) / np.sqrt(n) if n > 1 else np.nan
        h = dict(hypothesis=hypothesis)
        rows += [
            _row("lipschitz_max", space, norms.max(), n=n, iterations=n, lam=lam, **h),
            _row("lipschitz_q99", space, np.quantile(norms, 0.99), n=n, iterations=n, lam=lam, **h),
            _row("lipschitz_mean", space, norms.mean(), n=n, iterations=n, stderr=stderr, lam=lam, **h),
        ]
        hvp, dim = hessian_hvp(model, handle, hessian_data, space=space, batch_size=batch_size, scale=scale)
        eig = lanczos_extremes(hvp, dim, tol=tol, maxiter=maxiter, seed=0)
        rows += [
            _row(
                f"hessian_{key}_eig",
                space,
                eig[f"{key}_eig"],
                n=len(hessian_data),
                iterations=eig[f"{key}_hvps"],
                residual=eig[f"{key}_residual"],
                converged=eig[f"{key}_converged"],
                **h,
            )
            for key in ("min", "max")
        ]
        grad = objective_grad_norm(model, handle, data, space=space, lam=lam, batch_size=batch_size, scale=scale)
        rows.append(_row("grad_norm", space, grad, n=n, iterations=n, lam=lam, **h))
    return pd.DataFrame(rows, columns=TABLES["probes"].column_names)
