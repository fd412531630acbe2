"""The measurements of the PAC-Bayes dropout certificate on a finished run (docs/certificate.md).

``lora-dropout certify RUN_DIR`` rebuilds theta(S) from the run directory (`lora_dropout.runs.run.load_run`),
reads the prior mean from ``RUN_DIR/prior/`` (`bounds.runlog.PRIOR_FILES`) and, for each ``posterior_std``
of a grid fixed in advance, measures what the certificate needs:

- the squared distances ``||A - A_P||^2 + ||B - B_P||^2`` and ``||head - head_P||^2`` to the prior
  (`lora_dropout.certify.prior_distance.factor_and_head_sq_dist`) and the KL bound they give;
- the Monte Carlo estimate of the empirical Gibbs 0-1 risk and linear risk (``1 - prob_y``) on the
  certified training examples: ``k`` posterior draws per example (`lora_dropout.certify.posterior.posterior_logits`:
  fresh masks and fresh Gaussian noise per example and draw, so the ``n_b k`` losses are independent given
  the data);
- the same two risks on the test split: the measured test Gibbs error of the same posterior, which the
  certificate is held against;
- the hold-out baseline: the prior's own Gibbs member (its mean, the same masks, no noise) on the same
  certified and test examples.

The means are taken per unit (`lora_dropout.certify.units`): per group when the data have groups, per row
otherwise (and also per row, from the same draws, when rows are declared i.i.d.). It writes
``certificates.parquet`` (one row per ``posterior_std``, columns documented in `bounds.runlog.TABLES`) and
appends the measurement to ``certify_log.jsonl``; the certificate itself is pure arithmetic on that table, done
on the theory side (`bounds.report.certificate`). Cost: ``grid size x k`` posterior draws of every certified and
every test example, counted in the ``passes`` column, and ``k`` draws of the prior; the masks and Gaussian noise
of a batch are drawn once for the whole grid (`lora_dropout.certify.posterior.posterior_logits_over_grid`).

Which examples are certified: `lora_dropout.certify.certified_set`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from bounds.runlog import DEFAULT_POSTERIOR_STD_GRID, TABLES, append_certify_log, read_run_meta, run_state

from ..method.validation import check_count
from ..runs.run import load_run
from ..runs.writer import write_table
from ..tasks.splits import examples_fingerprint
from .certified_set import (
    certificate_levels,
    certification_units,
    certified_ids,
    check_fingerprints,
    group_of,
    resolve_prior,
)
from .posterior import posterior_logits_over_grid
from .prior_distance import at_prior, factor_and_head_sq_dist
from .units import Units, unit_mean

#: Default ``k``: posterior draws per example.
DEFAULT_POSTERIOR_DRAWS = 4
#: Default failure probabilities of the PAC-Bayes step and of the Monte Carlo step (whole grid).
DEFAULT_DELTA = 0.05
DEFAULT_DELTA_MC = 0.01


@dataclass(frozen=True)
class CertifyResult:
    """What ``certify_run`` wrote.

    Attributes
    ----------
    path : Path
        ``RUN_DIR/certificates.parquet``.
    table : DataFrame
        Its rows (one per ``posterior_std``, in grid order).
    prior : str
        ``init`` or ``trained``.
    certified_ids : tuple of int
        The training examples the empirical risks were computed on (``n_bound`` of them).
    passes : int
        ``grid size x k``: posterior draws of every certified and test example.
    """

    path: Path
    table: pd.DataFrame
    prior: str
    certified_ids: tuple[int, ...]
    passes: int


def check_grid(posterior_std_grid: Sequence[float]) -> tuple[float, ...]:
    """The grid as a tuple of floats, or ValueError naming the bad entry (empty, <= 0, non-finite, repeated)."""
    grid = tuple(posterior_std_grid)
    if not grid:
        raise ValueError("posterior_std_grid is empty: give at least one posterior_std > 0")
    for value in grid:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not (math.isfinite(value) and value > 0):
            raise ValueError(f"posterior_std_grid entry {value!r} must be a finite number > 0")
    if len(set(grid)) != len(grid):
        raise ValueError(f"posterior_std_grid {list(grid)} repeats a value")
    return tuple(float(v) for v in grid)


def check_probability(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 < value < 1.0:
        raise ValueError(f"{name}={value!r} must be in (0, 1)")
    return float(value)


def load_prior_state(path: Path, device: torch.device) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path), device=str(device))


@dataclass(frozen=True)
class RowRisks:
    """Gibbs risks of every row of a split at every ``posterior_std`` of a grid, as `gibbs_risks` measured them.

    Attributes
    ----------
    error, linear : ndarray, shape ``(G, n)``
        Mean over the ``draws`` of the 0-1 loss ``argmax != label`` and of the linear loss ``1 - prob_label``.
    sample_ids : ndarray of int, shape ``(n,)``
        The rows, in the order they were evaluated.
    evaluated : ndarray of int, shape ``(G,)``
        ``(row, draw)`` losses accumulated at each grid point, counted while running (``n x draws`` when
        every row got every draw).
    """

    error: np.ndarray
    linear: np.ndarray
    sample_ids: np.ndarray
    evaluated: np.ndarray

    def at(self, units: Units) -> tuple[np.ndarray, np.ndarray]:
        """``(0-1 risk, linear risk)`` per grid point at the level of ``units`` (`unit_mean`)."""
        return unit_mean(self.error, units), unit_mean(self.linear, units)


@torch.no_grad()
def gibbs_risks(model: torch.nn.Module, data, *, posterior_stds: Sequence[float], draws: int, batch_size: int,
                seed: int | None = None, device: torch.device | str = "cpu", on_batch=None) -> RowRisks:
    """Per-row Gibbs risks of the posterior on ``data`` at each ``posterior_std``.

    Each of ``draws`` draws per example has its own masks and noise (`posterior_logits_over_grid`, which
    draws them once per batch for the whole grid). Sums are accumulated in float64.
    """
    errors, linear, ids = [], [], []
    evaluated = np.zeros(len(posterior_stds), dtype=np.int64)
    for batch in data.batches(batch_size, device=device):
        grid_logits = posterior_logits_over_grid(model, batch, posterior_stds=posterior_stds, draws=draws,
                                                 seed=seed)  # (G, k, B, C)
        labels = batch["labels"].expand(grid_logits.shape[1], -1)  # (k, B)
        wrong = (grid_logits.argmax(-1) != labels).double()  # (G, k, B)
        prob = grid_logits.double().softmax(-1).gather(-1, labels.expand_as(wrong).unsqueeze(-1)).squeeze(-1)
        errors.append(wrong.mean(1).cpu().numpy())
        linear.append((1.0 - prob).mean(1).cpu().numpy())
        evaluated += wrong.shape[1] * wrong.shape[2]
        ids.append(batch["sample_id"].cpu().numpy())
        if on_batch is not None:
            on_batch()
    return RowRisks(np.concatenate(errors, axis=1), np.concatenate(linear, axis=1), np.concatenate(ids), evaluated)


def certify_run(
    run_dir: str | Path,
    *,
    posterior_std_grid: Sequence[float] = DEFAULT_POSTERIOR_STD_GRID,
    posterior_draws: int = DEFAULT_POSTERIOR_DRAWS,
    delta: float = DEFAULT_DELTA,
    delta_mc: float = DEFAULT_DELTA_MC,
    prior: str | None = None,
    assume_iid_rows: bool = False,
    batch_size: int | None = None,
    seed: int | None = None,
    device: str | None = None,
    progress: bool = True,
) -> CertifyResult:
    """Measure the PAC-Bayes dropout certificate's inputs on ``run_dir`` and write ``certificates.parquet``.

    The certificate is stated at the level at which the data are independent (`lora_dropout.certify.units`):
    per group when the training split has groups, per row otherwise. With ``assume_iid_rows`` on grouped
    data, the rows are declared i.i.d. and a row-level table, ``certificates_iid_rows.parquet``, is written
    from the same draws beside the group-level one. Every call is appended to ``certify_log.jsonl``
    (`bounds.runlog.append_certify_log`), whose entries the report's union bound counts.

    Parameters
    ----------
    posterior_std_grid : floats > 0
        The grid of ``sigma``, fixed before looking at the data (default
        `bounds.runlog.DEFAULT_POSTERIOR_STD_GRID`); ``delta`` and ``delta_mc`` are split over it.
    posterior_draws : int
        ``k``, draws per example.
    delta, delta_mc : float
        Failure probabilities of the PAC-Bayes and Monte Carlo steps (recorded; used by the report).
    prior : {"init", "trained"}, optional
        Default: ``trained`` when ``prior/prior.safetensors`` exists, else ``init``.
    assume_iid_rows : bool
        Declare the rows of grouped data i.i.d. and also certify at row level.
    batch_size : int, optional
        Examples per forward pass before tiling by the draws (default: the run's ``eval_batch_size``).
    seed : int, optional
        Root of the posterior noise stream (default: the run's LoRA Dropout mask seed).
    device : str, optional
        Default: the run's.

    Raises
    ------
    FileNotFoundError
        The run has no such prior (see `resolve_prior`).
    ValueError
        A bad argument, a run that is not a finished classification run, a prior.json whose certifiable ids
        overlap the prior's, or a data file that no longer matches the one the run was trained on.
    """
    run_dir = Path(run_dir)
    grid = check_grid(posterior_std_grid)
    check_count("posterior_draws", posterior_draws)
    delta = check_probability("delta", delta)
    delta_mc = check_probability("delta_mc", delta_mc)
    check_count("batch_size", batch_size, optional=True)
    check_count("seed", seed, minimum=0, optional=True)
    meta = read_run_meta(run_dir)
    state = run_state(meta)
    if state != "success":
        raise ValueError(f"{run_dir} is not a finished run (status {state}): certify the parameters of a run that "
                         "ended successfully")
    kind, prior_path, record = resolve_prior(run_dir, prior)
    task = meta.task
    if task != "classification":
        raise ValueError(f"{run_dir} is an {task} run: the certificate is implemented for classification runs "
                         "(the Gibbs 0-1 error of class logits)")

    loaded = load_run(run_dir, device=device)
    model = loaded.model
    dev = next(p for p in model.parameters() if p.requires_grad).device
    splits = loaded.prepared.splits
    check_fingerprints(record, splits.train, splits.source)
    train, test = loaded.prepared.train, loaded.prepared.test
    groups = group_of(splits.train)
    levels = certificate_levels(kind, record, groups, assume_iid_rows=assume_iid_rows)
    ids = certified_ids(kind, record, train.sample_ids, groups if levels[0] == "group" else None)
    chosen = set(ids)
    certified = train.subset([i for i, s in enumerate(train.sample_ids) if int(s) in chosen])
    if len(test) == 0:
        raise ValueError(f"{run_dir} has no test examples to measure the test Gibbs error on")
    prior_state = load_prior_state(prior_path, dev)
    try:
        dist = factor_and_head_sq_dist(model, prior_state)
    except KeyError as exc:
        raise ValueError(f"{prior_path} does not match the run's adapter: {exc.args[0]}") from None
    p = float(loaded.handle.config.dropout_rate)
    seed = int(loaded.handle.config.seed if seed is None else seed)
    bs = batch_size or loaded.config.train.eval_batch_size
    k = posterior_draws
    n_batches = 2 * (math.ceil(len(certified) / bs) + math.ceil(len(test) / bs))
    with tqdm(total=n_batches, desc=f"certify {run_dir.name}", unit="batch", disable=not progress,
              leave=False) as bar:
        risks = {split: gibbs_risks(model, data, posterior_stds=grid, draws=k, batch_size=bs, seed=seed, device=dev,
                                    on_batch=lambda: bar.update(1))
                 for split, data in (("train", certified), ("test", test))}
        # the hold-out baseline: the prior's own Gibbs member (its masks, no noise) on the same examples and draws
        with at_prior(model, prior_state):
            holdout = {split: gibbs_risks(model, data, posterior_stds=(0.0,), draws=k, batch_size=bs, seed=seed,
                                          device=dev, on_batch=lambda: bar.update(1))
                       for split, data in (("train", certified), ("test", test))}
    frames = {"train": splits.train, "test": splits.test}
    common = {"p": p, "draws": k, "factor_sq_dist": dist.factor, "head_sq_dist": dist.head, "prior": kind,
              "grid_size": len(grid), "delta": delta, "delta_mc": delta_mc, "seed": seed,
              "n_bound_rows": len(certified), "n_test_rows": len(test),
              "data_fingerprint": examples_fingerprint(splits.train, risks["train"].sample_ids)}
    tables = {}
    for level in levels:
        units = {split: certification_units(frames[split], risks[split].sample_ids, level=level)
                 for split in ("train", "test")}
        (train_err, train_lin), (test_err, test_lin) = (risks[s].at(units[s]) for s in ("train", "test"))
        (prior_err, _), (prior_test_err, _) = (holdout[s].at(units[s]) for s in ("train", "test"))
        rows = []
        for g, sigma in enumerate(grid):
            two_var = 2.0 * sigma**2  # KL(Q || P) bound of docs/certificate.md (bounds.formulas.dropout_kl)
            factor_term, head_term = (1.0 - p) * dist.factor / two_var, dist.head / two_var
            rows.append({
                **common, "posterior_std": sigma, "level": level, "premise": units["train"].premise,
                "n_bound": units["train"].count, "n_test": units["test"].count,
                "kl_factor_term": factor_term, "kl_head_term": head_term, "kl": factor_term + head_term,
                "train_gibbs_error": train_err[g], "train_gibbs_linear": train_lin[g],
                "test_gibbs_error": test_err[g], "test_gibbs_linear": test_lin[g],
                "holdout_gibbs_error": prior_err[0], "holdout_test_gibbs_error": prior_test_err[0],
                # counted while running: (row, draw) losses per grid point, over both splits, per row
                "evaluated_draws": int(risks["train"].evaluated[g]),
                "passes": int(sum(int(r.evaluated.sum()) for r in risks.values()) // (len(certified) + len(test))),
            })
        tables[level] = pd.DataFrame(rows)
    headline = tables[levels[0]]
    path = write_table(run_dir, "certificates", headline)
    iid_rows = run_dir / TABLES["certificates_iid_rows"].filename
    if len(levels) > 1:
        write_table(run_dir, "certificates_iid_rows", tables["row"])
    elif iid_rows.is_file():
        iid_rows.unlink()  # measured with other draws: stale
    append_certify_log(run_dir, {
        "kind": "grid", "settings": {"posterior_std_grid": list(grid), "posterior_draws": k, "delta": delta,
                                     "delta_mc": delta_mc, "prior": kind, "seed": seed,
                                     "assume_iid_rows": bool(assume_iid_rows)},
        "result": {level: {"n_bound": int(t["n_bound"].iloc[0]), "kl": t["kl"].tolist(),
                           "train_gibbs_error": t["train_gibbs_error"].tolist(),
                           "test_gibbs_error": t["test_gibbs_error"].tolist()} for level, t in tables.items()}})
    return CertifyResult(path, headline, kind, ids, int(headline["passes"].iloc[0]))
