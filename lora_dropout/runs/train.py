"""Fine-tuning with LoRA Dropout: the training loop and the run it writes.

The loop is deliberately plain (nanoGPT-style) because the theory needs control over it: the data
order of every epoch is a seeded permutation of the full training set, so a leave-one-out run can
skip one example and keep everything else, masks included (`lora_dropout.method.masks`), identical.

Randomness, all derived from ``TrainConfig.seed``:

=========  =================================================================================
init       the new classification head and LoRA's A (torch global RNG, seeded before creation)
order      ``np.random.default_rng([order_seed, epoch]).permutation(n)`` per epoch
masks      counter-based, keyed by (seed, epoch, sample_id, instance) (`LoraDropout.sample`)
dropout    the base model's own dropout, if enabled (torch global RNG, seeded at the start)
prior      ``np.random.default_rng(prior_seed).permutation(units)``: the prior order of the groups, or of
           the rows when the data have none (`prior_order`, `prior_split`)
=========  =================================================================================

Two phases (docs/certificate.md, "Priors"; `phases`): with ``prior_fraction = alpha > 0`` a prior mean
is first trained on the prior examples (`prior_split`): when the training split has groups (the default
data: movies; a user's ``group_column``), every row of the first ``floor(alpha G)`` of its ``G`` groups in
`prior_order`; otherwise the first ``floor(alpha n)`` rows. Whole groups, because a certificate needs the
certified examples independent of the prior (docs/certificate.md, "Premises"). The prior order is a stream of
its own, so independent of every epoch's order. The prior trains exactly as a run on just those examples
(`fit` on ``data.subset(split.positions)``: ``epochs`` at ``lr``, same masks, N instances and
objective; its epoch orders are ``epoch_order(n_prior, seed, e)`` over that subset). The posterior then
trains from the prior on all ``n`` examples with a fresh optimizer at ``posterior_lr`` for
``posterior_epochs``, continuing the streams: its epochs are numbered from ``epochs`` and its steps from
the prior's last, so its data orders and masks are fresh. With ``alpha = 0`` there is no prior phase
(the prior is the seeded initialisation) and the posterior phase is the whole run, from epoch 0 and
step 0, exactly as a run without a prior.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..method.apply import LoraDropout, apply_lora_dropout
from ..method.objective import n_instance_backward
from ..method.peft_seam import adalora_update_and_allocate, is_adalora
from ..tasks.base import EvalSplit, Task, TrainSplit, task_for
from ..tasks.data import load_hf_dataset, load_rotten_tomatoes, load_text_file
from ..tasks.splits import TextSplits
from .config import DEFAULT_DATA, RunConfig, TrainConfig, derive_seed
from .models import load_model, load_tokenizer, make_peft_model


def epoch_order(n: int, seed: int, epoch: int) -> np.ndarray:
    """Positions ``0..n-1`` in the order epoch ``epoch`` visits them."""
    return np.random.default_rng([derive_seed(seed, "order"), epoch]).permutation(n)


def prior_order(n: int, seed: int) -> np.ndarray:
    """Positions ``0..n-1`` in the seeded prior order: a data-dependent prior trains on a prefix of it."""
    return np.random.default_rng(derive_seed(seed, "prior")).permutation(n)


def prior_size(n: int, fraction: float) -> int:
    """``floor(fraction * n)`` (rounded to 9 decimals first, so ``0.29 * 100`` is 29, not 28)."""
    return math.floor(round(fraction * n, 9))


#: The levels a prior split (and a certificate) can be stated at.
SPLIT_LEVELS = ("group", "row")


@dataclass(frozen=True)
class PriorSplit:
    """Which training examples the PAC-Bayes prior trains on (docs/certificate.md, "Priors").

    Attributes
    ----------
    positions : ndarray of int
        Positions in the training split's order (ascending) of the prior's examples.
    level : {"group", "row"}
        ``group`` when the split has groups: the prior takes whole groups, so no group is on both sides.
    prior_groups : tuple of str
        The groups the prior trains on (empty at row level).
    """

    positions: np.ndarray
    level: str
    prior_groups: tuple[str, ...]


def training_groups(groups) -> list[str] | None:
    """The group of every training row as a list of str, or None when the split has no groups."""
    values = list(groups)
    if not values or all(g is None or (isinstance(g, float) and math.isnan(g)) for g in values):
        return None
    missing = [i for i, g in enumerate(values) if g is None or (isinstance(g, float) and math.isnan(g))]
    if missing:
        raise ValueError(f"training split: row {missing[0]} has no group while others have one; a group-level "
                         "prior split needs a group on every row")
    return [str(g) for g in values]


def prior_split(groups, tc: TrainConfig) -> PriorSplit:
    """The prior's examples of a training split whose rows have ``groups`` (None or missing: no groups).

    With groups, the distinct groups are taken in the order they first occur in the split and permuted
    by `prior_order`; the prior gets every row of the first ``floor(prior_fraction G)`` of them. Without,
    the prior gets the first ``floor(prior_fraction n)`` rows of `prior_order`.
    """
    names = training_groups(groups)
    n = len(groups)
    if names is None:
        return PriorSplit(np.sort(prior_order(n, tc.seed)[: prior_size(n, tc.prior_fraction)]), "row", ())
    distinct = list(dict.fromkeys(names))
    order = prior_order(len(distinct), tc.seed)[: prior_size(len(distinct), tc.prior_fraction)]
    chosen = {distinct[i] for i in order}
    positions = np.flatnonzero([g in chosen for g in names]).astype(np.int64)
    return PriorSplit(positions, "group", tuple(distinct[i] for i in np.sort(order)))


@dataclass(frozen=True)
class Phases:
    """The optimizer steps of a run of ``n`` training examples: prior phase, then posterior phase."""

    n_prior: int  # examples the prior trains on (0: the data-free prior, no prior phase)
    prior_steps: int
    posterior_first_epoch: int  # the epoch number (data-order and mask streams) the posterior starts at
    posterior_epochs: int
    posterior_lr: float
    posterior_steps: int

    @property
    def total_steps(self) -> int:
        """The step counter at the end of the run (it continues from the prior phase into the posterior's)."""
        return self.prior_steps + self.posterior_steps


def phases(tc: TrainConfig, n: int, n_prior: int | None = None) -> Phases:
    """The two training phases of a run of ``n`` examples under ``tc`` (see the module docstring).

    ``n_prior``: the prior's examples (``len(prior_split(...).positions)``); default the row-level count
    ``floor(prior_fraction n)``. Raises ValueError when ``prior_fraction > 0`` gives no prior example.
    """
    n_prior = prior_size(n, tc.prior_fraction) if n_prior is None else int(n_prior)
    if tc.prior_fraction > 0 and n_prior == 0:
        raise ValueError(f"prior_fraction={tc.prior_fraction!r} of n_train={n} gives no prior example "
                         f"(floor({tc.prior_fraction!r} times the groups or rows) = 0); use a larger fraction or 0")
    epochs = tc.epochs if tc.posterior_epochs is None else tc.posterior_epochs
    return Phases(
        n_prior=n_prior,
        prior_steps=tc.epochs * steps_per_epoch(n_prior, tc.batch_size) if n_prior else 0,
        posterior_first_epoch=tc.epochs if n_prior else 0,
        posterior_epochs=epochs,
        posterior_lr=tc.lr if tc.posterior_lr is None else tc.posterior_lr,
        posterior_steps=epochs * steps_per_epoch(n, tc.batch_size),
    )


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def load_splits(tc: TrainConfig) -> TextSplits:
    """The data a run trains and tests on (see `lora_dropout.tasks.data`).

    ``n_train`` / ``n_test`` are resolved against the loaded split (`TrainConfig.resolve_size`): the
    ``auto`` default takes all available examples up to its cap. Loading everything and taking the
    prefix gives the same examples as loading with that size, since the sizes are nested prefixes of one
    seeded order.
    """
    common = dict(seed=tc.data_seed, n_train=None, n_test=None)
    if tc.data == DEFAULT_DATA:
        splits = load_rotten_tomatoes(**common)
    elif tc.data.startswith("hf:"):
        splits = load_hf_dataset(tc.data[3:], text_column=tc.text_column, label_column=tc.label_column,
                                 group_column=tc.group_column, **common)
    else:
        splits = load_text_file(tc.data, text_column=tc.text_column, label_column=tc.label_column,
                                group_column=tc.group_column, **common)
    n_train = tc.resolve_size("n_train", len(splits.train), "train examples")
    n_test = tc.resolve_size("n_test", len(splits.test), "test examples")
    if (n_train, n_test) == (len(splits.train), len(splits.test)):
        return splits
    return TextSplits(train=splits.train.iloc[:n_train].reset_index(drop=True),
                      test=splits.test.iloc[:n_test].reset_index(drop=True),
                      label_names=splits.label_names, source=splits.source)


@dataclass
class Prepared:
    """Data of a run, tokenised by its task (`lora_dropout.tasks.base.Task.prepare`)."""

    splits: TextSplits
    task: Task
    train: TrainSplit
    test: EvalSplit
    eval_train: EvalSplit
    tokenizer: object


def prepare(tc: TrainConfig) -> Prepared:
    """Load a run's data and let its task tokenise it.

    Classification: `EncodedSplit`s. Instruction tuning: the training split as instruction records
    with response-only labels, and the train and test splits as multiple-choice items
    (`lora_dropout.tasks.instruction.instruction_splits`), which the evaluation scores like class labels.
    """
    splits = load_splits(tc)
    # resolved before any tokenising, so a bad size fails at once
    k = tc.resolve_size("eval_train_size", len(splits.train), "training examples")
    task = task_for(tc.task)
    tokenizer = load_tokenizer(tc.model, task)
    data = task.prepare(splits, tokenizer, max_length=tc.max_length, eval_train_size=k)
    return Prepared(splits, task, data.train, data.test, data.eval_train, tokenizer)


def steps_per_epoch(n_examples: int, batch_size: int) -> int:
    return math.ceil(n_examples / batch_size)


def build_model(config: RunConfig, num_labels: int, total_steps: int) -> tuple[torch.nn.Module, LoraDropout]:
    """Pretrained classifier (or causal LM) + peft adapter + LoRA Dropout, on the configured device and dtype."""
    tc = config.train
    init = derive_seed(tc.seed, "init")
    dtype = getattr(torch, tc.dtype)
    dtype = dtype if dtype != torch.float32 else None
    task = task_for(tc.task)
    model = load_model(task, tc.model, num_labels=num_labels, seed=init, base_dropout=tc.base_dropout, dtype=dtype)
    model = make_peft_model(model, config.adapter, task_type=task.peft_task_type, total_step=total_steps, seed=init)
    model.to(resolve_device(tc.device))
    handle = apply_lora_dropout(model, config.lora_dropout.replace(seed=derive_seed(tc.seed, "masks")))
    return model, handle


def trainable_parameters(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


def adapter_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The trainable parameters as peft saves them (`get_peft_model_state_dict` names: the keys of
    ``adapter/adapter_model.safetensors``), detached copies on the CPU."""
    from peft import get_peft_model_state_dict

    return {k: v.detach().to("cpu", copy=True).contiguous() for k, v in get_peft_model_state_dict(model).items()}


def load_adapter(model: torch.nn.Module, adapter_dir: Path, *, device: torch.device | str) -> None:
    """Load a saved ``adapter/`` (``adapter_model.safetensors``) into a model built as training built it.

    AdaLoRA saves only the ranks its budget kept (``rank_pattern`` in ``adapter_config.json``); peft
    shrinks the fresh layers to that pattern when the model's config carries it, and keeps ``ranknum``,
    so the loaded model computes what the trained one did (the pruned ranks had Lambda = 0).
    """
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    if is_adalora(model):
        saved = json.loads((adapter_dir / "adapter_config.json").read_text())
        model.peft_config[model.active_adapter].rank_pattern = saved.get("rank_pattern")
    set_peft_model_state_dict(model, load_file(str(adapter_dir / "adapter_model.safetensors"), device=str(device)))


def make_optimizer(model: torch.nn.Module, tc: TrainConfig, *, lr: float | None = None):
    """AdamW with ``tc``'s settings and warm-up; ``lr`` overrides ``tc.lr`` (the posterior phase's)."""
    lr = tc.lr if lr is None else lr
    optimizer = torch.optim.AdamW(trainable_parameters(model), lr=lr, weight_decay=tc.weight_decay)
    warm = tc.warmup_steps
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / warm) if warm else 1.0)
    return optimizer, scheduler


@dataclass
class StepInfo:
    """Passed to callbacks after every optimizer step."""

    step: int
    epoch: int
    loss: float
    per_example: torch.Tensor  # (N, B)
    sample_ids: torch.Tensor  # (B,)


def fit(
    model: torch.nn.Module,
    handle: LoraDropout,
    data: TrainSplit,
    tc: TrainConfig,
    *,
    exclude: Iterable[int] = (),
    on_step: Callable[[StepInfo], None] | None = None,
    should_eval: Callable[[int, bool], bool] | None = None,
    on_eval: Callable[[int, float], None] | None = None,
    epochs: int | None = None,
    first_epoch: int = 0,
    first_step: int = 0,
    optimizer=None,
    scheduler=None,
) -> int:
    """Train ``model`` on ``data`` with Eq. 7 and the per-example loss of ``tc.task``; returns the step
    counter at the end.

    Parameters
    ----------
    exclude : sample ids skipped (leave-one-out): the order of the others is unchanged. (The prior phase
        of a run instead trains on ``data.subset(prior_split(...).positions)``: see the module docstring.)
    on_step : called after each optimizer step.
    should_eval, on_eval : ``should_eval(step, end_of_epoch)`` decides; ``on_eval(step, epoch)`` evaluates.
    epochs, first_epoch : train epochs ``first_epoch .. first_epoch + epochs - 1`` (default: all of
        ``tc.epochs`` from 0); a warm start continues the data-order and mask streams this way, and
        with ``first_step`` the step counter (batch-scope masks, AdaLoRA's schedule).
    """
    device = resolve_device(tc.device)
    excluded = set(int(i) for i in exclude)
    if optimizer is None:
        optimizer, scheduler = make_optimizer(model, tc)
    params = trainable_parameters(model)
    adalora = is_adalora(model)
    loss_fn = task_for(tc.task).per_example_loss
    torch.manual_seed(derive_seed(tc.seed, "dropout"))
    step = first_step
    n_epochs = tc.epochs if epochs is None else epochs
    for epoch in range(first_epoch, first_epoch + n_epochs):
        order = [i for i in epoch_order(len(data), tc.seed, epoch) if int(data.sample_ids[i]) not in excluded]
        n_batches = steps_per_epoch(len(order), tc.batch_size)
        for b, batch in enumerate(data.batches(tc.batch_size, order, device=device)):
            model.train()
            result = n_instance_backward(model, batch, step=step, epoch=epoch, loss_fn=loss_fn)
            if tc.max_grad_norm is not None:
                torch.nn.utils.clip_grad_norm_(params, tc.max_grad_norm)
            optimizer.step()
            if adalora:  # peft's contract: after the optimizer step, before zero_grad
                adalora_update_and_allocate(model, step)
            optimizer.zero_grad(set_to_none=True)
            if scheduler is not None:
                scheduler.step()
            step += 1
            if on_step is not None:
                on_step(StepInfo(step, epoch, float(result.loss), result.per_example, batch["sample_id"]))
            if should_eval is not None and on_eval is not None and should_eval(step, b == n_batches - 1):
                on_eval(step, epoch - first_epoch + (b + 1) / n_batches)
    return step
