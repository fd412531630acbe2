"""The measurements of the PAC-Bayes dropout certificate on a finished run (theory.md section 6).

``lora-dropout certify RUN_DIR`` rebuilds theta(S) from the run directory (`lora_dropout.runs.run.load_run`),
reads the prior mean from ``RUN_DIR/prior/`` (`bounds.runlog.PRIOR_FILES`) and, for each ``posterior_std``
of a grid fixed in advance, measures what the certificate needs:

- the squared distances ``||A - A_P||^2 + ||B - B_P||^2`` and ``||head - head_P||^2`` to the prior
  (`lora_dropout.probes.prior_distance.factor_and_head_sq_dist`) and the KL bound they give;
- the Monte Carlo estimate of the empirical Gibbs 0-1 risk and linear risk (``1 - prob_y``) on the
  certified training examples: ``k`` posterior draws per example (`lora_dropout.probes.posterior.posterior_logits`:
  fresh masks and fresh Gaussian noise per example and draw, so the ``n_b k`` losses are independent given
  the data);
- the same two risks on the test split: the measured test Gibbs error of the same posterior, which the
  certificate is held against.

It writes ``certificates.parquet`` (one row per ``posterior_std``, columns documented in
`bounds.runlog.TABLES`); the certificate itself is pure arithmetic on that table, done on the theory side
(`bounds.report.certificate`). Cost: ``grid size x k`` posterior draws of every certified and every test
example, recorded in the ``passes`` column; the masks and Gaussian noise of a batch are drawn once for the whole
grid (`lora_dropout.probes.posterior.posterior_logits_over_grid`).

Which examples are certified: with the data-free ``init`` prior (the seeded initialisation, which saw no
example) all ``n`` training examples; with the ``trained`` prior only prior/prior.json's
``certifiable_ids``, which must be disjoint from the ``prior_ids`` the prior was trained on.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch
from tqdm.auto import tqdm

from bounds.runlog import (
    DEFAULT_POSTERIOR_STD_GRID,
    PRIOR_DIR,
    RunMeta,
    read_prior_record,
    read_run_meta,
    run_state,
)

from ..method.validation import check_count
from ..runs.run import load_run
from ..runs.writer import write_table
from .posterior import posterior_logits_over_grid
from .prior_distance import factor_and_head_sq_dist

#: Default ``k``: posterior draws per example.
DEFAULT_POSTERIOR_DRAWS = 4
#: Default failure probabilities of the PAC-Bayes step and of the Monte Carlo step (whole grid).
DEFAULT_DELTA = 0.05
DEFAULT_DELTA_MC = 0.01
#: The priors ``certify`` can use: ``init`` (data-free) and ``trained`` (data-dependent).
PRIORS = ("init", "trained")
PRIOR_STATE_FILES = {"init": "init.safetensors", "trained": "prior.safetensors"}


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


def certified_ids(prior: str, record: dict | None, train_ids: Sequence[int]) -> tuple[int, ...]:
    """The training examples a bound with ``prior`` may be computed on, in training order.

    ``init`` (data-free): all of them. ``trained``: prior.json's ``certifiable_ids``, which must be training
    examples and disjoint from its ``prior_ids``.
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
    chosen = tuple(i for i in train_ids if i in certifiable)
    if not chosen:
        raise ValueError("prior/prior.json has no certifiable_ids: nothing to certify on")
    return chosen


def load_prior_state(path: Path, device: torch.device) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path), device=str(device))


@torch.no_grad()
def gibbs_risks(model: torch.nn.Module, data, *, posterior_stds: Sequence[float], draws: int, batch_size: int,
                seed: int | None = None, device: torch.device | str = "cpu", on_batch=None
                ) -> list[tuple[float, float]]:
    """``(0-1 risk, linear risk)`` of the Gibbs member on ``data`` at each ``posterior_std``: means over every
    example and draw.

    Each of ``draws`` draws per example has its own masks and noise (`posterior_logits_over_grid`, which
    draws them once per batch for the whole grid); the 0-1 loss is ``argmax != label``, the linear loss
    ``1 - prob_label``. Sums are accumulated in float64.
    """
    errors = [0.0] * len(posterior_stds)
    linear = [0.0] * len(posterior_stds)
    for batch in data.batches(batch_size, device=device):
        grid_logits = posterior_logits_over_grid(model, batch, posterior_stds=posterior_stds, draws=draws,
                                                 seed=seed)  # (G, k, B, C)
        labels = batch["labels"].expand(draws, -1)  # (k, B)
        for g, logits in enumerate(grid_logits):
            errors[g] += float((logits.argmax(-1) != labels).sum())
            prob = logits.double().softmax(-1).gather(-1, labels.unsqueeze(-1)).squeeze(-1)  # (k, B)
            linear[g] += float((1.0 - prob).sum())
        if on_batch is not None:
            on_batch()
    total = len(data) * draws
    return [(e / total, lin / total) for e, lin in zip(errors, linear, strict=True)]


def certify_run(
    run_dir: str | Path,
    *,
    posterior_std_grid: Sequence[float] = DEFAULT_POSTERIOR_STD_GRID,
    posterior_draws: int = DEFAULT_POSTERIOR_DRAWS,
    delta: float = DEFAULT_DELTA,
    delta_mc: float = DEFAULT_DELTA_MC,
    prior: str | None = None,
    batch_size: int | None = None,
    seed: int | None = None,
    device: str | None = None,
    progress: bool = True,
) -> CertifyResult:
    """Measure the PAC-Bayes dropout certificate's inputs on ``run_dir`` and write ``certificates.parquet``.

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
        A bad argument, a run that is not a finished classification run, or a prior.json whose
        certifiable ids overlap the prior's.
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
    train, test = loaded.prepared.train, loaded.prepared.test
    ids = certified_ids(kind, record, train.sample_ids)
    chosen = set(ids)
    certified = train.subset([i for i, s in enumerate(train.sample_ids) if int(s) in chosen])
    if len(test) == 0:
        raise ValueError(f"{run_dir} has no test examples to measure the test Gibbs error on")
    try:
        dist = factor_and_head_sq_dist(model, load_prior_state(prior_path, dev))
    except KeyError as exc:
        raise ValueError(f"{prior_path} does not match the run's adapter: {exc.args[0]}") from None
    p = float(loaded.handle.config.dropout_rate)
    seed = int(loaded.handle.config.seed if seed is None else seed)
    bs = batch_size or loaded.config.train.eval_batch_size
    k = posterior_draws
    n_batches = math.ceil(len(certified) / bs) + math.ceil(len(test) / bs)
    passes = len(grid) * k
    with tqdm(total=n_batches, desc=f"certify {run_dir.name}", unit="batch", disable=not progress,
              leave=False) as bar:
        risks = {split: gibbs_risks(model, data, posterior_stds=grid, draws=k, batch_size=bs, seed=seed, device=dev,
                                    on_batch=lambda: bar.update(1))
                 for split, data in (("train", certified), ("test", test))}
    rows = []
    for g, sigma in enumerate(grid):
        two_var = 2.0 * sigma**2  # KL(Q || P) bound of theory.md section 6 (bounds.formulas.dropout_kl)
        factor_term, head_term = (1.0 - p) * dist.factor / two_var, dist.head / two_var
        rows.append({
            "posterior_std": sigma, "p": p, "n_bound": len(certified), "n_test": len(test), "draws": k,
            "factor_sq_dist": dist.factor, "head_sq_dist": dist.head, "kl_factor_term": factor_term,
            "kl_head_term": head_term, "kl": factor_term + head_term,
            "train_gibbs_error": risks["train"][g][0], "train_gibbs_linear": risks["train"][g][1],
            "test_gibbs_error": risks["test"][g][0], "test_gibbs_linear": risks["test"][g][1],
            "prior": kind, "grid_size": len(grid), "delta": delta, "delta_mc": delta_mc, "seed": seed,
            "passes": passes,
        })
    table = pd.DataFrame(rows)
    path = write_table(run_dir, "certificates", table)
    return CertifyResult(path, table, kind, ids, passes)
