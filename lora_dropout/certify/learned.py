"""A PAC-Bayes dropout posterior learned by minimising the certificate (the toolkit's own; docs/certificate.md).

`lora_dropout.certify.measure` certifies the posterior ``Q = masks x N(theta(S), sigma^2 I)`` at each
``sigma`` of a grid. Here the posterior keeps the LoRA Dropout masks but its Gaussian part is learned:
a mean ``mu`` (the LoRA factors and the head, starting at ``theta(S)``) and one std ``sigma_g`` per
tensor ``g`` (each ``lora_A``/``lora_B`` of every adapted module, each head tensor). The prior stays
``masks x N(theta_P, sigma_P^2 I)`` with ``sigma_P`` on a grid fixed in advance, and the KL is
`bounds.formulas.learned_dropout_kl` (dropout discounts the factor tensors' KL by ``1 - p``).

Learning (`learn_posterior`) minimises, over ``mu`` and ``ln sigma_g``, the smallest over the grid of

    B(sigma_P) = (sqrt(R + c) + sqrt(c))^2,   c = (KL(Q || P_sigma_P) + ln(2 sqrt(n_b) |grid| / delta)) / (2 n_b)

(the "quad" relaxation of the PAC-Bayes-kl bound, Perez-Ortiz, Rivasplata, Shawe-Taylor & Szepesvari 2021,
JMLR 22(227)), with ``R`` the mean of a differentiable [0, 1] surrogate of the 0-1 loss over one posterior draw
per certified example: the linear loss ``1 - prob_y`` by default (on the 0-1 error's scale), or their bounded
cross-entropy ``-ln(max(prob_y, min_prob)) / ln(1 / min_prob)``. On the whole default data the latter, about
a ninth of the 0-1 error once rescaled, weighs the KL so heavily that learning settled at the largest prior std
(0.1), where the Gibbs error is 0.32 and the certificate 0.366 (README); the linear loss keeps the trade-off (the reparameterisation ``eps = sigma_g z``: `posterior.perturbed`
with a std per tensor). It writes ``RUN_DIR/posterior/`` (`bounds.runlog.LEARNED_FILES`); the run's own adapter
is not changed.

Certifying (`certify_learned`) then measures the learned ``Q`` like `certify_run` measures a grid point: the
Monte Carlo Gibbs risks of ``k`` fresh draws per certified and test example, once (they do not depend on the
prior), and the KL at every ``sigma_P`` of the grid, into ``learned_certificates.parquet``; the bound itself is
computed on the theory side (`bounds.report.learned`). PAC-Bayes bounds hold for every posterior at once, so
``Q`` may be learned on the very examples it is certified on; the Monte Carlo draws must be independent of
it: learning uses draws from `LEARN_FIRST_DRAW` on, the certificate draws ``0 .. k - 1``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import pandas as pd
import torch
from tqdm.auto import tqdm

from bounds.runlog import (
    DEFAULT_POSTERIOR_STD_GRID,
    LEARNED_DIR,
    append_certify_log,
    read_learned_record,
    write_json,
)

from ..method.losses import logits_of
from ..method.objective import KEY_FIELD, tile, unwrap
from ..method.validation import check_count
from ..runs.run import load_run
from ..runs.writer import write_table
from .certified_set import certification_units, certified_ids, check_fingerprints, group_of, resolve_prior
from .measure import (
    DEFAULT_DELTA,
    DEFAULT_DELTA_MC,
    DEFAULT_POSTERIOR_DRAWS,
    check_grid,
    check_probability,
    gibbs_risks,
    load_prior_state,
)
from .posterior import perturbed, posterior_parameters, shared_draws
from .prior_distance import per_tensor_sq_dist, prior_tensors

#: The [0, 1] surrogates of the 0-1 loss the objective can use (`surrogate_loss`).
SURROGATES = ("linear", "bounded_ce")
#: First noise draw index learning uses: far above any certificate's ``k``, so the Monte Carlo draws of
#: `certify_learned` (``0 .. k - 1``) are never draws the posterior was fitted to.
LEARN_FIRST_DRAW = 1 << 32


@dataclass(frozen=True)
class LearnSettings:
    """How `learn_posterior` minimises the bound.

    Attributes
    ----------
    epochs : int
        Passes over the certified examples.
    lr : float
        Adam learning rate of the mean ``mu`` (LoRA factors and head).
    std_lr : float
        Adam learning rate of ``ln sigma_g``.
    draws : int
        Posterior draws per example and step (the gradient's Monte Carlo size).
    batch_size : int, optional
        Examples per step before tiling by ``draws`` (default: the run's ``batch_size``).
    surrogate : {"linear", "bounded_ce"}
        The [0, 1] loss the objective's risk averages: ``1 - prob_y``, or the bounded cross-entropy.
    min_prob : float
        In (0, 1): the bounded cross-entropy's floor on ``prob_y`` (its range is ``[0, ln(1 / min_prob)]``,
        rescaled to [0, 1]).
    """

    epochs: int = 1
    lr: float = 1e-4
    std_lr: float = 0.05
    draws: int = 1
    batch_size: int | None = None
    surrogate: str = "linear"
    min_prob: float = 1e-4

    def __post_init__(self):
        if self.surrogate not in SURROGATES:
            raise ValueError(f"surrogate={self.surrogate!r} must be one of {SURROGATES}")
        check_count("epochs", self.epochs)
        check_count("draws", self.draws)
        check_count("batch_size", self.batch_size, optional=True)
        for name in ("lr", "std_lr"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not (math.isfinite(value)
                                                                                      and value > 0):
                raise ValueError(f"{name}={value!r} must be a finite number > 0")
        check_probability("min_prob", self.min_prob)


@dataclass(frozen=True)
class LearnedPosterior:
    """What `learn_posterior` wrote: ``RUN_DIR/posterior/learned.json`` (as ``record``) and the mean's file."""

    directory: Path
    record: dict


def bounded_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, min_prob: float) -> torch.Tensor:
    """``-ln(max(prob_y, min_prob)) / ln(1 / min_prob)`` per row, in [0, 1] (Perez-Ortiz et al. 2021)."""
    log_prob = torch.log_softmax(logits.double(), dim=-1).gather(-1, labels.unsqueeze(-1)).squeeze(-1)
    floor = math.log(min_prob)
    return -torch.clamp(log_prob, min=floor) / -floor


def surrogate_loss(logits: torch.Tensor, labels: torch.Tensor, settings: LearnSettings) -> torch.Tensor:
    """The objective's per-row loss in [0, 1]: ``1 - prob_y`` (``linear``) or `bounded_cross_entropy`."""
    if settings.surrogate == "linear":
        return 1.0 - torch.softmax(logits.double(), dim=-1).gather(-1, labels.unsqueeze(-1)).squeeze(-1)
    return bounded_cross_entropy(logits, labels, settings.min_prob)


def quad_bound(risk: torch.Tensor, kl: torch.Tensor, n_bound: int, delta: float) -> torch.Tensor:
    """``(sqrt(risk + c) + sqrt(c))^2`` with ``c = (kl + ln(2 sqrt(n_bound) / delta)) / (2 n_bound)``: an upper
    bound on ``kl_inv_upper(risk, 2 c)``, the PAC-Bayes-kl certificate (Perez-Ortiz et al. 2021, "f_quad")."""
    c = (kl + math.log(2.0 * math.sqrt(n_bound) / delta)) / (2.0 * n_bound)
    return (torch.sqrt(risk + c) + torch.sqrt(c)) ** 2


def learned_kl(prior_std: float, *, weight: dict[str, float], count: dict[str, int],
               log_std: dict[str, torch.Tensor], sq_dist: dict[str, torch.Tensor]) -> torch.Tensor:
    """`bounds.formulas.learned_dropout_kl` at one ``prior_std`` in torch (differentiable in ``log_std``
    and ``sq_dist``)."""
    two_var = 2.0 * prior_std**2
    total = torch.zeros((), dtype=torch.float64)
    for name, w in weight.items():
        s = log_std[name].double()
        total = total + w * (count[name] * (math.log(prior_std) - s + torch.exp(2 * s) / two_var - 0.5)
                             + sq_dist[name] / two_var)
    return total


def _groups(model: torch.nn.Module, p: float):
    factors, head = posterior_parameters(unwrap(model))
    params = {**factors, **head}
    weight = {n: (1.0 - p) if n in factors else 1.0 for n in params}
    count = {n: int(t.numel()) for n, t in params.items()}
    return params, weight, count


def learn_posterior(
    run_dir: str | Path,
    *,
    prior_std_grid: Sequence[float] = DEFAULT_POSTERIOR_STD_GRID,
    settings: LearnSettings = LearnSettings(),
    delta: float = DEFAULT_DELTA,
    prior: str | None = None,
    device: str | None = None,
    progress: bool = True,
) -> LearnedPosterior:
    """Learn the mean and per-tensor stds of the dropout posterior by minimising the bound; write ``posterior/``.

    Parameters
    ----------
    prior_std_grid : floats > 0
        The prior's ``sigma_P`` grid, fixed in advance; the objective is the smallest bound over it (with
        ``delta`` split over it), and ``certify_learned`` certifies against the same grid.
    settings : LearnSettings
    delta : float
        The PAC-Bayes failure probability the objective is written for.
    prior : {"init", "trained"}, optional
        As for `certify_run` (default: trained when the run has it).

    Raises
    ------
    FileNotFoundError, ValueError
        As `certify_run` (no prior, an unfinished or non-classification run, a bad argument).
    """
    run_dir = Path(run_dir)
    grid = check_grid(prior_std_grid)
    delta = check_probability("delta", delta)
    kind, prior_path, record = resolve_prior(run_dir, prior)
    loaded = load_run(run_dir, device=device)
    if loaded.config.train.task != "classification":
        raise ValueError(f"{run_dir} is an {loaded.config.train.task} run: the learned posterior is implemented for "
                         "classification runs")
    model = loaded.model
    train, splits = loaded.prepared.train, loaded.prepared.splits
    check_fingerprints(record, splits.train, splits.source)
    groups = group_of(splits.train)
    chosen = set(certified_ids(kind, record, train.sample_ids, groups))
    data = train.subset([i for i, s in enumerate(train.sample_ids) if int(s) in chosen])
    # n_b of the bound the objective relaxes: certified groups when the data have groups, else rows
    n_b = len(data) if groups is None else len({groups[int(i)] for i in data.sample_ids})
    p = float(loaded.handle.config.dropout_rate)
    seed = int(loaded.handle.config.seed)
    params, weight, count = _groups(model, p)
    dev = next(iter(params.values())).device
    prior_state = load_prior_state(prior_path, dev)
    prior_mean = {n: t.to(torch.float64) for n, t in prior_tensors(model, prior_state).items()}
    bs = settings.batch_size or loaded.config.train.batch_size
    d = settings.draws
    delta_point = delta / len(grid)

    def objective(batch, first_draw: int, log_std: dict[str, torch.Tensor]) -> torch.Tensor:
        keys = batch[KEY_FIELD]
        inputs = {k: v for k, v in batch.items() if k not in ("labels", KEY_FIELD)}
        shared = shared_draws(model, keys, draws=d, first_draw=first_draw, seed=seed)
        with perturbed(model, shared, {n: torch.exp(s) for n, s in log_std.items()}):
            logits = logits_of(model(**tile(inputs, d, keys.shape[0])))
        risk = surrogate_loss(logits, batch["labels"].repeat(d), settings).mean()
        sq = {n: ((t.double() - prior_mean[n]) ** 2).sum() for n, t in params.items()}
        bounds = torch.stack([quad_bound(risk, learned_kl(sp, weight=weight, count=count, log_std=log_std,
                                                          sq_dist=sq), n_b, delta_point) for sp in grid])
        return bounds.min()

    # start every std at the grid point whose bound is smallest on the first batch
    first = next(iter(data.batches(bs, device=dev)))
    with torch.no_grad():
        start = [float(objective(first, LEARN_FIRST_DRAW, {n: torch.tensor(math.log(sp)) for n in params}))
                 for sp in grid]
    init_std = grid[min(range(len(grid)), key=start.__getitem__)]
    log_std = {n: torch.tensor(math.log(init_std), dtype=torch.float64, requires_grad=True) for n in params}
    opt_mean = torch.optim.Adam(list(params.values()), lr=settings.lr)
    opt_std = torch.optim.Adam(list(log_std.values()), lr=settings.std_lr)
    history = []
    generator = torch.Generator().manual_seed(seed)
    n_steps = settings.epochs * math.ceil(n_b / bs)
    with tqdm(total=n_steps, desc=f"learn posterior {run_dir.name}", unit="step", disable=not progress,
              leave=False) as bar:
        for epoch in range(settings.epochs):
            order = torch.randperm(n_b, generator=generator).tolist()
            total = 0.0
            for batch in data.batches(bs, order=order, device=dev):
                bound = objective(batch, LEARN_FIRST_DRAW + epoch * d, log_std)
                opt_mean.zero_grad(set_to_none=True)
                opt_std.zero_grad(set_to_none=True)
                bound.backward()
                opt_mean.step()
                opt_std.step()
                total += float(bound.detach()) * batch["labels"].shape[0]
                bar.update(1)
                bar.set_postfix(bound=f"{float(bound.detach()):.4f}", refresh=False)
            history.append(total / n_b)
    directory = run_dir / LEARNED_DIR
    directory.mkdir(exist_ok=True)
    from safetensors.torch import save_file

    save_file({n: t.detach().cpu().contiguous() for n, t in params.items()}, str(directory / "learned.safetensors"))
    dist = per_tensor_sq_dist(model, prior_state)
    learned = {
        "prior": kind, "prior_std_grid": list(grid), "delta": delta, "n_bound": n_b, "p": p, "seed": seed,
        "first_draw": LEARN_FIRST_DRAW, "draws_used": settings.epochs * d, "init_std": init_std,
        "tensors": {n: {"posterior_std": float(torch.exp(log_std[n].detach())), "count": count[n], "weight": weight[n],
                        "sq_dist": dist[n]} for n in params},
        "settings": asdict(settings), "objective": history,
    }
    write_json(directory / "learned.json", learned)
    return LearnedPosterior(directory, learned)


def certify_learned(
    run_dir: str | Path,
    *,
    posterior_draws: int = DEFAULT_POSTERIOR_DRAWS,
    delta_mc: float = DEFAULT_DELTA_MC,
    batch_size: int | None = None,
    device: str | None = None,
    progress: bool = True,
) -> pd.DataFrame:
    """Measure the learned posterior of ``RUN_DIR/posterior/`` and write ``learned_certificates.parquet``.

    ``k = posterior_draws`` fresh draws (``0 .. k - 1``, below `LEARN_FIRST_DRAW`) of every certified and test
    example give the Gibbs risks; the KL is evaluated at every ``sigma_P`` of the grid learning used (the
    union bound is over that grid); ``delta`` is the one learning was written for.

    Raises
    ------
    FileNotFoundError
        Without ``posterior/`` (run `learn_posterior` first) or its prior.
    ValueError
        When ``posterior/`` does not match the run (tensors, distances) or a bad argument.
    """
    run_dir = Path(run_dir)
    check_count("posterior_draws", posterior_draws)
    delta_mc = check_probability("delta_mc", delta_mc)
    check_count("batch_size", batch_size, optional=True)
    record = read_learned_record(run_dir)
    if record is None:
        raise FileNotFoundError(f"{run_dir / LEARNED_DIR / 'learned.json'} is missing: learn the posterior first "
                                "(lora-dropout certify RUN_DIR --learn-posterior)")
    if posterior_draws > record["first_draw"]:
        raise ValueError(f"posterior_draws={posterior_draws} would reuse the draws learning used (from "
                         f"{record['first_draw']})")
    kind, prior_path, prior_record = resolve_prior(run_dir, record["prior"])
    loaded = load_run(run_dir, device=device)
    model = loaded.model
    p = float(loaded.handle.config.dropout_rate)
    params, weight, count = _groups(model, p)
    if set(params) != set(record["tensors"]):
        raise ValueError(f"{run_dir / LEARNED_DIR} does not match the run's perturbed tensors")
    from safetensors.torch import load_file

    dev = next(iter(params.values())).device
    mean = load_file(str(run_dir / LEARNED_DIR / "learned.safetensors"), device=str(dev))
    with torch.no_grad():
        for n, t in params.items():
            t.copy_(mean[n])
    dist = per_tensor_sq_dist(model, load_prior_state(prior_path, dev))
    for n, t in record["tensors"].items():
        if not math.isclose(dist[n], t["sq_dist"], rel_tol=1e-9, abs_tol=1e-12):
            raise ValueError(f"{run_dir / LEARNED_DIR}: the mean's distance to the prior for {n} is {dist[n]!r}, "
                             f"learned.json says {t['sq_dist']!r}")
    std = {n: t["posterior_std"] for n, t in record["tensors"].items()}
    train, test, splits = loaded.prepared.train, loaded.prepared.test, loaded.prepared.splits
    check_fingerprints(prior_record, splits.train, splits.source)
    groups = group_of(splits.train)
    level = "row" if groups is None else "group"
    chosen = set(certified_ids(kind, prior_record, train.sample_ids, groups))
    certified = train.subset([i for i, s in enumerate(train.sample_ids) if int(s) in chosen])
    bs = batch_size or loaded.config.train.eval_batch_size
    seed = int(record["seed"])
    n_batches = math.ceil(len(certified) / bs) + math.ceil(len(test) / bs)
    with tqdm(total=n_batches, desc=f"certify learned {run_dir.name}", unit="batch", disable=not progress,
              leave=False) as bar:
        measured = {split: gibbs_risks(model, data, posterior_stds=[std], draws=posterior_draws, batch_size=bs,
                                       seed=seed, device=dev, on_batch=lambda: bar.update(1))
                    for split, data in (("train", certified), ("test", test))}
    frames = {"train": splits.train, "test": splits.test}
    units = {s: certification_units(frames[s], m.sample_ids, level=level) for s, m in measured.items()}
    risks = {s: tuple(float(v[0]) for v in m.at(units[s])) for s, m in measured.items()}
    grid = tuple(record["prior_std_grid"])
    rows = []
    for sp in grid:  # bounds.formulas.learned_dropout_kl, recomputed by the report
        two_var = 2.0 * sp**2
        variance = sum(weight[n] * count[n] * (math.log(sp / std[n]) + std[n] ** 2 / two_var - 0.5) for n in std)
        distance = sum(weight[n] * dist[n] / two_var for n in std)
        rows.append({
            "prior_std": sp, "p": p, "level": level, "n_bound": units["train"].count,
            "n_bound_rows": len(certified), "n_test": units["test"].count, "draws": posterior_draws,
            "kl_variance_term": variance, "kl_distance_term": distance, "kl": variance + distance,
            "train_gibbs_error": risks["train"][0], "train_gibbs_linear": risks["train"][1],
            "test_gibbs_error": risks["test"][0], "test_gibbs_linear": risks["test"][1],
            "prior": kind, "grid_size": len(grid), "delta": float(record["delta"]), "delta_mc": delta_mc,
            "seed": seed,
        })
    table = pd.DataFrame(rows)
    write_table(run_dir, "learned_certificates", table)
    append_certify_log(run_dir, {
        "kind": "learned", "settings": {"prior_std_grid": list(grid), "posterior_draws": posterior_draws,
                                        "delta": float(record["delta"]), "delta_mc": delta_mc, "prior": kind,
                                        "seed": seed, "learn": record.get("settings")},
        "result": {level: {"n_bound": units["train"].count, "kl": table["kl"].tolist(),
                           "train_gibbs_error": risks["train"][0], "test_gibbs_error": risks["test"][0]}}})
    return table

