"""Curvature and Lipschitz probes of a LoRA Dropout model at ``theta(S)`` (theory.md sections 2-3).

The stability bound (Prop. 4.2, Thm 4.4) reads

    beta <= 2 eta^2 / ((Lambda_min + 2 lambda s) n)

and this module measures its model-side inputs on the training set ``S``:

- ``eta`` (Lipschitz constant): ``max_i ||grad_theta l_i(theta)||`` with the regularised per-sample loss
  ``l_i(theta) = loss(x_i; theta) + lambda s ||theta - theta0||^2`` (Eqs. 9-11), plus its 99% quantile
  and mean (`per_sample_grad_norms`, ``torch.func.vmap(torch.func.grad(...))``);
- ``Lambda_min``, ``Lambda_max``: extreme eigenvalues of the Hessian of the mean training loss
  ``L(theta) = (1/n) sum_i loss(x_i; theta)`` (unregularised: the bound adds ``2 lambda s`` itself), by
  Lanczos on Hessian-vector products (`hessian_hvp`, `lora_dropout.probes.curvature.lanczos_extremes`);
- stationarity, an assumption of Prop. 4.2: ``||grad (L(theta) + lambda s ||theta - theta0||^2)||``
  (`objective_grad_norm`).

``loss`` is the cross-entropy of the UNMASKED model (``dW`` at full scale) in eval mode, so every
quantity is a deterministic function of ``theta``.

Hypotheses (``bounds.runlog.HYPOTHESES``). By default the probes measure the unmasked model. Training
minimised the MASKED loss, whose mean predictor is the expected one: every ``dW`` times its training
mean ``c = E[m_B m_A^T]`` (``(1-p)^2`` without rescale, 1 with it; ``LoraDropout.scale_for("expected")``,
the scale of the ``expected`` eval mode). ``hypothesis="expected"`` (``scale=c`` of `ParamSpace`)
measures everything at that predictor instead: ``theta(S) = c dW`` in ``delta_w`` space, ``(A, c B)``
in ``factors`` space (AdaLoRA: ``lora_B`` times ``c``), with ``theta0`` unchanged, so the regulariser
is ``lambda s sum_k ||c dW_k||^2``. Both equal the unmasked probes of a copy of the model whose
``B`` factors were multiplied by ``c``.

Parameter spaces (theory.md section 4, "Hessian space"). ``theta`` is restricted to the ADAPTED
parameters, the LoRA sites; the classification head and the base model stay fixed at their current
values. The reason: the sparsity view of LoRA Dropout puts the regulariser ``lambda s ||theta -
theta0||^2`` on the entries of the merged ``dW`` only (masks drop ``dW`` entries, never head weights),
and the ``2 lambda s`` shift in the denominator of Prop. 4.2 holds only along coordinates the
regulariser covers.

- ``delta_w`` (default; "the coordinates are the entries of the merged dW"): one free matrix ``D_k``
  (``out x in``) per site, starting at ``site.delta_weight()``. The LoRA branch is switched off
  (``handle.use_scale(0.0)``) and a forward hook adds ``x @ D_k^T`` to the site's output, so the model
  computes ``W0 x + D_k x``; ``theta - theta0 = D``.
- ``factors``: the LoRA factors (``A``, ``B``; AdaLoRA ``lora_A``, ``lora_E``, ``lora_B``) as peft stores
  them, model unchanged (``handle.use_scale(1.0)``). The regulariser still uses the merged update,
  ``theta - theta0 := dW(A, B) = site.delta_weight()``, so the regularised loss is
  ``loss + lambda s sum_k ||dW_k||_F^2`` in both spaces. Its Hessian there is not ``2 lambda s I``, so
  ``Lambda_min + 2 lambda s`` is exact in ``delta_w`` only.

Every function leaves the model as it found it: parameters untouched (values are substituted with
``torch.func.functional_call``, never written), hooks removed, train/eval flags and ``requires_grad``
restored.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Mapping

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from bounds.runlog import HYPOTHESES, TABLES

from ..method.apply import LoraDropout
from ..method.losses import logits_of
from ..method.objective import KEY_FIELD, split_batch, unwrap
from ..tasks.classification import EncodedSplit
from .curvature import lanczos_extremes

SPACES = ("delta_w", "factors")


def cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-example ``-log softmax(z)_y``, ``(rows,)``; logits ``(rows, C)``.

    `lora_dropout.method.losses.classification_loss` computes in float32; this is the same value for
    float32 and half models but keeps float64 models in float64, which curvature tests against dense
    Hessians need.
    """
    if logits.dim() != 2:
        raise ValueError(
            f"probes need sequence-classification logits (rows, classes), got {tuple(logits.shape)}"
        )
    return F.cross_entropy(
        logits.to(torch.promote_types(logits.dtype, torch.float32)), labels, reduction="none"
    )


class _Reparametrised(torch.nn.Module):
    """``forward(inputs) -> (logits or None, sum_k ||theta_k - theta0_k||^2)``, for `functional_call`.

    `functional_call` substitutes the space's tensors under this module's parameter names:
    ``deltas.<k>`` (the ``D_k``, read by forward hooks) in ``delta_w`` space, ``model.<name>`` (the
    model's own LoRA factors, also what ``site.delta_weight()`` reads) in ``factors`` space.
    """

    def __init__(self, model: torch.nn.Module, sites, deltas: list[torch.Tensor] | None):
        super().__init__()
        self.model = model
        self.sites = sites  # a plain list: sites hold layers that are already submodules of `model`
        self.deltas = None if deltas is None else torch.nn.ParameterList(deltas)

    def forward(self, inputs: Mapping[str, torch.Tensor] | None):
        logits = None if inputs is None else logits_of(self.model(**inputs))
        merged = self.deltas if self.deltas is not None else [s.delta_weight() for s in self.sites]
        return logits, sum(d.square().sum() for d in merged)


class ParamSpace:
    """The adapted parameters of a LoRA Dropout model as one flat vector ``theta`` (see module doc).

    One interface for both spaces: `flat` gives ``theta(S)``; `per_sample_losses`, `loss`, `penalty`
    and `regularised_losses` are pure functions of a flat vector (differentiable twice, vmappable) and
    must run inside ``with space.active():``, which puts the model into the probe's state and
    restores it afterwards.

    Parameters
    ----------
    model : peft model with LoRA Dropout applied (DDP-style wrappers are unwrapped)
    handle : LoraDropout
        Its sites are the adapted parameters; ``handle.config.sparsity`` is ``s``.
    space : {"delta_w", "factors"}
    scale : float
        ``theta(S)`` is the model's with every ``dW`` times ``scale`` (its ``B`` factors times ``scale`` in
        ``factors`` space): 1 = the unmasked model, ``handle.scale_for("expected")`` = the expected
        predictor (module doc, "Hypotheses").
    """

    def __init__(self, model: torch.nn.Module, handle: LoraDropout, space: str = "delta_w", scale: float = 1.0):
        if space not in SPACES:
            raise ValueError(f"space must be one of {SPACES}, got {space!r}")
        if not (math.isfinite(scale) and scale >= 0.0):
            raise ValueError(f"scale must be a finite number >= 0, got {scale!r}")
        self.model = unwrap(model)
        self.handle = handle
        self.space = space
        self.sites = handle.sites
        layers = {id(m) for m in self.model.modules()}
        if any(id(s.layer) not in layers for s in self.sites):
            raise ValueError(
                "the LoRA Dropout handle belongs to another model: pass the model it was applied to"
            )
        self.scale = float(scale)
        if space == "delta_w":
            init = [s.delta_weight().detach() * self.scale for s in self.sites]
            self._module = _Reparametrised(self.model, self.sites, [d.clone() for d in init])
            self._names = [f"deltas.{k}" for k in range(len(init))]
        else:
            names = {id(p): n for n, p in self.model.named_parameters()}
            factors = [p for s in self.sites for _, p in s.trainable_factors()]
            b_factors = {id(s.factors()[1]) for s in self.sites}  # dW is linear in B: scale it there
            init = [p.detach() * self.scale if id(p) in b_factors else p.detach() for p in factors]
            self._module = _Reparametrised(self.model, self.sites, None)
            self._names = [f"model.{names[id(p)]}" for p in factors]
        self._shapes = [t.shape for t in init]
        self._theta = torch.cat([t.reshape(-1) for t in init])
        self.dim = self._theta.numel()
        self._active = False

    @property
    def sparsity(self) -> float:
        """``s = 2p - p^2``, the weight of the regulariser (Eqs. 9-11)."""
        return self.handle.config.sparsity

    def flat(self) -> torch.Tensor:
        """``theta(S)``: a detached copy of the current parameters of this space, shape ``(dim,)``."""
        return self._theta.clone()

    # -- the model state of the probe ---------------------------------------------------------------

    @contextlib.contextmanager
    def active(self) -> Iterator[ParamSpace]:
        """Eval mode, eager attention, parameters frozen, LoRA branch at scale 1 (``factors``) or replaced
        by hooks (``delta_w``); everything restored on exit."""
        if self._active:
            raise RuntimeError("ParamSpace.active() is not re-entrant")
        modes = [(m, m.training) for m in self.model.modules()]
        flags = [(p, p.requires_grad) for p in self.model.parameters()]
        hooks = []
        attention = getattr(getattr(self.model, "config", None), "_attn_implementation", None)
        try:
            if attention not in (None, "eager"):
                # double backward (Hessian-vector products) needs eager attention; fused kernels lack it
                self.model.set_attn_implementation("eager")
            self.model.eval()  # deterministic: base dropout and peft's lora_dropout off
            for p, _ in flags:
                # autograd then builds graphs for theta only, not for the head or unused factors
                p.requires_grad_(False)
            if self.space == "delta_w":
                hooks = [s.layer.register_forward_hook(self._add_delta(k)) for k, s in enumerate(self.sites)]
            with self.handle.use_scale(0.0 if self.space == "delta_w" else 1.0):
                self._active = True
                yield self
        finally:
            self._active = False
            for h in hooks:
                h.remove()
            for p, flag in flags:
                p.requires_grad_(flag)
            for m, training in modes:
                m.training = training
            if attention not in (None, "eager"):
                self.model.set_attn_implementation(attention)

    def _add_delta(self, k: int):
        deltas = self._module.deltas

        def hook(module, args, output):
            return output + args[0] @ deltas[k].T  # (..., in) @ (in, out): W0 x + D_k x

        return hook

    # -- pure functions of theta ---------------------------------------------------------------------

    def _call(self, flat: torch.Tensor, inputs: Mapping[str, torch.Tensor] | None):
        if not self._active:
            raise RuntimeError("evaluate a ParamSpace inside `with space.active():`")
        tensors = [
            t.view(shape)
            for t, shape in zip(
                torch.split(flat, [s.numel() for s in self._shapes]), self._shapes, strict=True
            )
        ]
        return torch.func.functional_call(
            self._module, dict(zip(self._names, tensors, strict=True)), (inputs,)
        )

    def logits(self, flat: torch.Tensor, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Model logits ``(B, C)`` at ``theta = flat`` (``labels`` / ``sample_id`` entries are ignored)."""
        inputs = {k: v for k, v in batch.items() if k not in ("labels", KEY_FIELD)}
        return self._call(flat, inputs)[0]

    def per_sample_losses(self, flat: torch.Tensor, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """``loss(x_i; theta)`` for the examples of ``batch``, shape ``(B,)``."""
        inputs, labels, _, _ = split_batch(batch)
        return cross_entropy(self._call(flat, inputs)[0], labels)

    def loss(self, flat: torch.Tensor, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Mean loss over ``batch``: ``L(theta)`` on that batch."""
        return self.per_sample_losses(flat, batch).mean()

    def penalty(self, flat: torch.Tensor) -> torch.Tensor:
        """``||theta - theta0||^2 = sum_k ||dW_k||_F^2`` (``D_k`` in delta_w, ``dW_k(A, B)`` in factors)."""
        return self._call(flat, None)[1]

    def regularised_losses(
        self, flat: torch.Tensor, batch: Mapping[str, torch.Tensor], lam: float
    ) -> torch.Tensor:
        """``loss(x_i; theta) + lam * s * ||theta - theta0||^2`` per example, shape ``(B,)`` (Eqs. 9-11)."""
        inputs, labels, _, _ = split_batch(batch)
        logits, penalty = self._call(flat, inputs)
        return cross_entropy(logits, labels) + lam * self.sparsity * penalty


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

    The Lipschitz constant ``eta`` of Prop. 4.2 is their maximum (theory.md section 3). Computed with
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


# -- the probes table ---------------------------------------------------------------------------------


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
    hypothesis: str = "unmasked",
) -> dict:
    return {
        "quantity": quantity,
        "space": space,
        "value": float(value),
        "stderr": float(stderr),
        "iterations": int(iterations),
        "residual": float(residual),
        "converged": bool(converged),
        "n": n,
        "lam": float(lam),
        "hypothesis": hypothesis,
    }


def run_probes(
    model: torch.nn.Module,
    handle: LoraDropout,
    data: EncodedSplit,
    *,
    lam: float = 1.0,
    spaces: tuple[str, ...] = SPACES,
    tol: float = 1e-3,
    maxiter: int | None = None,
    batch_size: int = 16,
    hessian_data: EncodedSplit | None = None,
    hypothesis: str = "unmasked",
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
    hypothesis : {"unmasked", "expected"}
        The predictor probed (module doc, "Hypotheses"): the unmasked model (default) or every ``dW``
        times ``handle.scale_for("expected")``; recorded in every row's ``hypothesis``.
    """
    if hypothesis not in HYPOTHESES:
        raise ValueError(f"hypothesis must be one of {HYPOTHESES}, got {hypothesis!r}")
    scale = 1.0 if hypothesis == "unmasked" else handle.scale_for("expected")
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
