"""The N-instance training objective (Eq. 7).

    L(batch) = (1 / (N B)) * sum_{r=1..N} sum_{b=1..B} loss(x_b; theta_0 + dtheta(m_{r,b}))

computed in one forward pass over the batch tiled N times (instance-major rows ``r * B + b``), each
row with its own mask (per example and instance in ``example`` scope). ``max_instances_per_forward``
splits the N instances over several passes; the masks are counter-based (`lora_dropout.method.masks`), so
chunking changes memory and speed only, never the masks or the loss.

`looped_n_instance_loss` is the plain reference: one ordinary forward per instance.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from . import peft_seam
from .apply import LoraDropout, get_lora_dropout
from .losses import PerExampleLoss, default_loss_for

#: Batch entries that identify examples but are not model inputs.
KEY_FIELD = "sample_id"


@dataclass(frozen=True)
class InstanceLoss:
    """Result of the N-instance objective on one batch.

    Attributes
    ----------
    loss : Tensor, scalar
        Eq. 7 (plus AdaLoRA's orthogonality regulariser when the model has one). Carries the graph
        from `n_instance_loss`; detached from `n_instance_backward`.
    per_example : Tensor, shape ``(N, B)``
        ``loss(x_b; m_{r,b})`` for every instance ``r`` and example ``b``, detached.
    """

    loss: torch.Tensor
    per_example: torch.Tensor


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The model under DistributedDataParallel-style wrappers (``.module``)."""
    while hasattr(model, "module") and isinstance(model.module, torch.nn.Module):
        model = model.module
    return model


def tile(inputs: Mapping[str, Any], n: int, batch_size: int) -> dict[str, Any]:
    """Repeat every tensor whose first dimension is the batch ``n`` times along it (instance-major)."""
    if n == 1:
        return dict(inputs)
    out = {}
    for name, value in inputs.items():
        if torch.is_tensor(value) and value.dim() > 0 and value.shape[0] == batch_size:
            out[name] = value.repeat(n, *([1] * (value.dim() - 1)))
        else:
            out[name] = value
    return out


def split_batch(batch: Mapping[str, Any], labels_key: str = "labels"):
    """``(model inputs, labels, sample keys or None, batch size)`` from a collated batch."""
    if labels_key not in batch:
        raise KeyError(f"batch has no {labels_key!r} entry; entries: {sorted(batch)}")
    inputs = {k: v for k, v in batch.items() if k not in (labels_key, KEY_FIELD)}
    labels = batch[labels_key]
    return inputs, labels, batch.get(KEY_FIELD), labels.shape[0]


def _seq_len(inputs: Mapping[str, Any]) -> int | None:
    for name in ("input_ids", "inputs_embeds", "attention_mask"):
        value = inputs.get(name)
        if torch.is_tensor(value) and value.dim() >= 2:
            return value.shape[1]
    return None


def instance_chunks(n_instances: int, cap: int | None) -> Iterator[tuple[int, int]]:
    """``(first instance, count)`` of each forward pass when at most ``cap`` instances share one."""
    cap = n_instances if cap is None else cap
    for first in range(0, n_instances, cap):
        yield first, min(cap, n_instances - first)


def forward_instances(
    model: torch.nn.Module,
    handle: LoraDropout,
    inputs: Mapping[str, Any],
    batch_size: int,
    *,
    first: int,
    count: int,
    keys: torch.Tensor | None,
    step: int,
    epoch: int,
    train: bool,
) -> Any:
    """One forward pass over the batch tiled ``count`` times under instances ``first .. first+count-1``."""
    masks = handle.sample(
        batch_size, n_instances=count, first_instance=first, keys=keys, step=step, epoch=epoch,
        seq_len=_seq_len(inputs), train=train,
    )
    with handle.use(masks):
        return model(**tile(inputs, count, batch_size))


@contextlib.contextmanager
def _instance_losses(model, handle, batch, *, first, count, step, epoch, loss_fn, labels_key):
    """Per-example losses ``(count, B)`` of instances ``first .. first+count-1``, with their masks in force.

    The masks stay in force until the ``with`` block ends, so a ``backward`` inside it sees them again
    if gradient checkpointing recomputes the forward pass.
    """
    inputs, labels, keys, b = split_batch(batch, labels_key)
    masks = handle.sample(b, n_instances=count, first_instance=first, keys=keys, step=step, epoch=epoch,
                          seq_len=_seq_len(inputs), train=True)
    with handle.use(masks):
        outputs = model(**tile(inputs, count, b))
        fn = loss_fn or default_loss_for(outputs)
        yield fn(outputs, tile({"labels": labels}, count, b)["labels"]).view(count, b)


def mean_loss(per: torch.Tensor) -> torch.Tensor:
    """Mean of per-example losses, summed in the order of torch's own ``cross_entropy(reduction="mean")``.

    ``per.mean()`` or ``per.sum() / per.numel()`` add the same values in another order than torch's NLL
    kernel, so the loss could differ from transformers' own mean loss in the last bit; reducing through
    that kernel (``-nll_loss`` of ``per`` as a one-class input) makes dropout rate 0 with one instance
    report plain LoRA's loss bit for bit. The gradient, ``1 / numel`` per element, is the same either way.
    """
    flat = per.reshape(-1, 1)
    return -F.nll_loss(flat, torch.zeros(flat.shape[0], dtype=torch.long, device=per.device))


def gradient_checkpointing(model: torch.nn.Module) -> bool:
    """Whether any submodule recomputes its forward pass during backward (transformers' flag)."""
    return any(getattr(m, "gradient_checkpointing", False) is True for m in unwrap(model).modules())


def n_instance_loss(
    model: torch.nn.Module,
    batch: Mapping[str, Any],
    *,
    step: int = 0,
    epoch: int = 0,
    n_instances: int | None = None,
    loss_fn: PerExampleLoss | None = None,
    labels_key: str = "labels",
) -> InstanceLoss:
    """Eq. 7 on one batch in a single forward pass, with the graph kept for ``backward``.

    Parameters
    ----------
    model : peft model with LoRA Dropout applied
    batch : mapping
        Model inputs plus ``labels`` and, optionally, ``sample_id`` (stable example keys: with them,
        an example's masks do not depend on its batch, which couples leave-one-out runs).
    step, epoch : int
        Time coordinates of the training masks (see `LoraDropout.sample`).
    n_instances : int, optional
        ``N``; default ``config.n_instances``.
    loss_fn : callable, optional
        Per-example loss; default chosen from the logits' shape (`lora_dropout.method.losses`).
    """
    handle = get_lora_dropout(unwrap(model))
    if gradient_checkpointing(model):
        raise ValueError(
            "gradient checkpointing recomputes the forward pass during backward, after n_instance_loss has "
            "returned and its masks are gone: use n_instance_backward, which runs backward with them in force"
        )
    n = n_instances or handle.config.n_instances
    with _instance_losses(model, handle, batch, first=0, count=n, step=step, epoch=epoch, loss_fn=loss_fn,
                          labels_key=labels_key) as per:
        pass
    loss = mean_loss(per)
    reg = peft_seam.adalora_orth_reg(unwrap(model))
    if reg is not None:
        loss = loss + reg
    return InstanceLoss(loss, per.detach())


def n_instance_backward(
    model: torch.nn.Module,
    batch: Mapping[str, Any],
    *,
    step: int = 0,
    epoch: int = 0,
    n_instances: int | None = None,
    max_instances_per_forward: int | None = None,
    loss_fn: PerExampleLoss | None = None,
    labels_key: str = "labels",
    loss_scale: float = 1.0,
    backward=None,
) -> InstanceLoss:
    """Eq. 7 with ``backward`` run per chunk of at most ``max_instances_per_forward`` instances.

    The gradients accumulated into ``.grad`` equal those of ``n_instance_loss(...).loss * loss_scale``
    (each chunk contributes ``sum of its losses / (N B)``); peak activation memory is that of one
    chunk. ``backward`` replaces ``Tensor.backward`` (e.g. ``accelerator.backward``). Works with gradient
    checkpointing (each backward runs while its chunk's masks are in force).
    """
    handle = get_lora_dropout(unwrap(model))
    n = n_instances or handle.config.n_instances
    cap = max_instances_per_forward or handle.config.max_instances_per_forward
    backward = backward or (lambda t: t.backward())
    pieces, total = [], 0.0
    reg = peft_seam.adalora_orth_reg(unwrap(model))
    for first, count in instance_chunks(n, cap):
        with _instance_losses(model, handle, batch, first=first, count=count, step=step, epoch=epoch,
                              loss_fn=loss_fn, labels_key=labels_key) as per:
            chunk = mean_loss(per) * (count / n)
            if reg is not None and first == 0:
                chunk = chunk + reg
            backward(chunk * loss_scale)  # inside: a checkpointed recompute sees the same masks
        total += float(chunk.detach())
        pieces.append(per.detach())
    return InstanceLoss(torch.tensor(total), torch.cat(pieces, dim=0))


def looped_n_instance_loss(
    model: torch.nn.Module,
    batch: Mapping[str, Any],
    *,
    step: int = 0,
    epoch: int = 0,
    n_instances: int | None = None,
    loss_fn: PerExampleLoss | None = None,
    labels_key: str = "labels",
) -> InstanceLoss:
    """Reference for tests: Eq. 7 as N ordinary forward passes, one instance each, same masks."""
    handle = get_lora_dropout(unwrap(model))
    n = n_instances or handle.config.n_instances
    rows = []
    for r in range(n):
        with _instance_losses(model, handle, batch, first=r, count=1, step=step, epoch=epoch, loss_fn=loss_fn,
                              labels_key=labels_key) as per:
            rows.append(per)
    per = torch.cat(rows, dim=0)
    loss = torch.stack([row.mean() for row in rows]).mean()
    reg = peft_seam.adalora_orth_reg(unwrap(model))
    if reg is not None:
        loss = loss + reg
    return InstanceLoss(loss, per.detach())
