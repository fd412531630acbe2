"""Per-sample gradients, Hessian-vector products and stationarity in a `ParamSpace` (docs/bounds.md and docs/measurement.md).

At ``theta(S)``, in the space and for the hypothesis of `lora_dropout.probes.space`:

- ``eta`` (Lipschitz constant): ``max_i ||grad_theta l_i(theta)||`` with the regularised per-sample loss
  ``l_i(theta) = loss(x_i; theta) + lambda s ||theta - theta0||^2`` (Eqs. 9-11), plus its 99% quantile
  and mean (`per_sample_grad_norms`, ``torch.func.vmap(torch.func.grad(...))``);
- ``Lambda_min``, ``Lambda_max``: extreme eigenvalues of the Hessian of the mean training loss
  ``L(theta) = (1/n) sum_i loss(x_i; theta)`` (unregularised: the bound adds ``2 lambda s`` itself), by
  Lanczos on Hessian-vector products (`hessian_hvp`, `lora_dropout.probes.curvature.lanczos_extremes`);
- stationarity, an assumption of Prop. 4.2: ``||grad (L(theta) + lambda s ||theta - theta0||^2)||``
  (`objective_grad_norm`).

Like `ParamSpace`, every function leaves the model as it found it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np
import torch

from ..method.apply import LoraDropout
from ..method.objective import split_batch
from ..tasks.classification import EncodedSplit
from .space import ParamSpace

# -- Lipschitz constant: per-sample gradient norms -----------------------------------------------------


def _additive_mask(attention_mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``(B, T)`` 0/1 padding mask -> ``(B, 1, 1, T)`` additive mask (0 on tokens, dtype min on pads).

    transformers builds its attention mask with a data-dependent check (``padding_mask.all()``) that
    ``vmap`` cannot run; a prepared 4-D mask is passed through as-is (the format of eager attention).
    It is right for bidirectional encoders; `_vmap_grads` verifies it against the batched forward.
    """
    return torch.zeros(attention_mask.shape, dtype=dtype, device=attention_mask.device).masked_fill(
        attention_mask == 0, torch.finfo(dtype).min
    )[:, None, None, :]


#: How `_vmap_grads` hands each example its padding mask: ``additive`` (a prepared 4-D additive mask,
#: for models that build theirs with transformers' data-dependent mask utilities, e.g. BERT) or
#: ``binary`` (the 0/1 ``(1, T)`` mask as the tokenizer gives it, for models that build their own mask
#: with tensor ops and read it as a boolean, e.g. DeBERTa-v2/v3, which would mask every token with an
#: additive one). `per_sample_grad_norms` uses the first that reproduces the batched forward.
MASK_FORMATS = ("additive", "binary")


class _PerExampleMismatch(RuntimeError):
    """The per-example forwards of `_vmap_grads` disagree with the batched forward."""


def _vmap_grads(
    space: ParamSpace,
    theta: torch.Tensor,
    batch: Mapping[str, torch.Tensor],
    lam: float,
    mask_format: str = "additive",
) -> torch.Tensor:
    """Per-example gradients of the regularised loss, ``(B, dim)``, one ``vmap(grad)`` over the batch.

    Raises `_PerExampleMismatch` when the per-example losses differ from the batched forward's (the
    model reads ``mask_format`` differently, or builds a non-padding mask).
    """
    inputs, labels, _, _ = split_batch(batch)
    if mask_format == "additive":
        inputs = {**inputs, "attention_mask": _additive_mask(inputs["attention_mask"], theta.dtype)}
    elif mask_format != "binary":
        raise ValueError(f"mask_format must be one of {MASK_FORMATS}, got {mask_format!r}")

    def one(flat, row, label):
        single = {k: v.unsqueeze(0) for k, v in row.items()}  # a batch of one, padded like its batch
        value = space.regularised_losses(flat, {**single, "labels": label.unsqueeze(0)}, lam)[0]
        return value, value.detach()  # (what grad differentiates, the value for the check below)

    grads, values = torch.func.vmap(torch.func.grad(one, has_aux=True), in_dims=(None, 0, 0))(
        theta, inputs, labels
    )
    with torch.no_grad():
        batched = space.regularised_losses(theta, batch, lam)
    tol = torch.finfo(theta.dtype).eps ** 0.5
    if not torch.allclose(values, batched, rtol=tol, atol=tol):
        raise _PerExampleMismatch(
            f"per-example forwards with a {mask_format} padding mask disagree with the batched forward "
            f"(max |diff| {float((values - batched).abs().max()):.3g})"
        )
    return grads


def _per_example_grads(
    space: ParamSpace, theta: torch.Tensor, batch: Mapping[str, torch.Tensor], lam: float, formats: list[str]
) -> torch.Tensor:
    """`_vmap_grads` with the first mask format in ``formats`` that reproduces the batched forward.

    ``formats`` is reordered in place (the working format first), so later batches try it first.
    """
    failures = []
    for fmt in list(formats):
        try:
            grads = _vmap_grads(space, theta, batch, lam, fmt)
        except torch.OutOfMemoryError:
            raise
        except RuntimeError as exc:  # a mismatch, or vmap refusing data-dependent control flow
            failures.append(f"{fmt}: {str(exc).splitlines()[0]}")
            continue
        formats.remove(fmt)
        formats.insert(0, fmt)
        return grads
    raise RuntimeError(
        "per-example forwards disagree with the batched forward with every padding-mask format ("
        + "; ".join(failures)
        + "): the model builds an attention mask from its inputs in a way none of MASK_FORMATS reproduces "
        "per example, which per_sample_grad_norms does not support; use per_sample_grad_norms_loop"
    )


def per_sample_grad_norms(
    model: torch.nn.Module,
    handle: LoraDropout,
    data: EncodedSplit,
    *,
    space: str = "delta_w",
    lam: float = 1.0,
    batch_size: int = 16,
    scale: float = 1.0,
) -> np.ndarray:
    """``||grad_theta l_i(theta(S))||`` per training example, ``l_i = loss_i + lam s ||theta - theta0||^2``.

    The Lipschitz constant ``eta`` of Prop. 4.2 is their maximum (docs/measurement.md). Computed with
    ``torch.func.vmap(torch.func.grad(...))`` over the examples of each padded batch; each example runs
    as a batch of one at its batch's padded length with its padding mask in the first of `MASK_FORMATS`
    whose per-example losses reproduce the ordinary batched forward (a prepared additive mask for BERT
    and the like, the 0/1 mask for DeBERTa-v2/v3 and for causal classifiers such as LLaMA, which then
    build their causal mask themselves); a model that no format reproduces raises a RuntimeError.

    Returns
    -------
    ndarray, shape ``(n,)``, float64, in the order of ``data`` (``data.sample_ids``), whatever the
    (length-sorted) order the batches are formed in.
    """
    ps = ParamSpace(model, handle, space, scale)
    theta = ps.flat()
    # batches of similar lengths: every example costs its batch's padded length under vmap
    order = np.argsort([len(f["input_ids"]) for f in data.features], kind="stable")
    formats = list(MASK_FORMATS)
    with ps.active():
        norms = [
            torch.linalg.vector_norm(_per_example_grads(ps, theta, b, lam, formats), dim=1)
            for b in data.batches(batch_size, order=order, device=theta.device)
        ]
    out = np.empty(len(data))
    out[order] = torch.cat(norms).double().cpu().numpy()
    return out


def per_sample_grad_norms_loop(
    model: torch.nn.Module,
    handle: LoraDropout,
    data: EncodedSplit,
    *,
    space: str = "delta_w",
    lam: float = 1.0,
    scale: float = 1.0,
) -> np.ndarray:
    """Reference for `per_sample_grad_norms`: one unpadded example at a time, plain autograd."""
    ps = ParamSpace(model, handle, space, scale)
    norms = []
    with ps.active():
        for batch in data.batches(1, device=ps.flat().device):
            flat = ps.flat().requires_grad_(True)
            (grad,) = torch.autograd.grad(ps.regularised_losses(flat, batch, lam)[0], flat)
            norms.append(float(torch.linalg.vector_norm(grad)))
    return np.asarray(norms, dtype=np.float64)


# -- Hessian of the mean training loss and the stationarity check --------------------------------------


def hessian_hvp(
    model: torch.nn.Module,
    handle: LoraDropout,
    data: EncodedSplit,
    *,
    space: str = "delta_w",
    batch_size: int = 16,
    scale: float = 1.0,
) -> tuple[Callable[[np.ndarray], np.ndarray], int]:
    """``v -> H v``, ``H = d^2 L / d theta^2`` at ``theta(S)``, ``L`` the mean (unregularised) training loss.

    ``H v = sum_batches (B_b / n) d/dtheta <grad L_b(theta), v>`` (double backward), so one product
    costs a forward, a backward and a double backward over the whole training set; nothing is kept
    between products (memory of one batch).

    Returns
    -------
    hvp : callable
        float64 ``(dim,)`` numpy arrays in and out; computes in the model's dtype, on its device.
    dim : int
    """
    ps = ParamSpace(model, handle, space, scale)
    theta = ps.flat()
    batches = list(data.batches(batch_size, device=theta.device))
    n = len(data)

    def hvp(v: np.ndarray) -> np.ndarray:
        v = torch.as_tensor(np.asarray(v, dtype=np.float64)).to(device=theta.device, dtype=theta.dtype)
        out = torch.zeros_like(theta)
        with ps.active():
            for batch in batches:
                flat = theta.clone().requires_grad_(True)
                (grad,) = torch.autograd.grad(ps.loss(flat, batch), flat, create_graph=True)
                (hv,) = torch.autograd.grad(grad @ v, flat)
                out += hv * (batch["labels"].shape[0] / n)
        return out.double().cpu().numpy()

    return hvp, ps.dim


def objective_grad_norm(
    model: torch.nn.Module,
    handle: LoraDropout,
    data: EncodedSplit,
    *,
    space: str = "delta_w",
    lam: float = 1.0,
    batch_size: int = 16,
    scale: float = 1.0,
) -> float:
    """``||grad_theta (L(theta) + lam s ||theta - theta0||^2)||`` at ``theta(S)``: 0 at a stationary point.

    Prop. 4.2 assumes ``theta(S)`` minimises the regularised objective; this measures how far it is.
    """
    ps = ParamSpace(model, handle, space, scale)
    theta = ps.flat()
    n = len(data)
    with ps.active():
        flat = theta.clone().requires_grad_(True)
        (total,) = torch.autograd.grad(lam * ps.sparsity * ps.penalty(flat), flat)
        for batch in data.batches(batch_size, device=theta.device):
            (grad,) = torch.autograd.grad(ps.loss(flat, batch), flat)
            total += grad * (batch["labels"].shape[0] / n)
    return float(torch.linalg.vector_norm(total))
