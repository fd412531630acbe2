"""The probes' parameter space: the adapted parameters of a LoRA Dropout model as one flat vector ``theta``.

`ParamSpace` is what every model probe differentiates (`lora_dropout.probes.gradients`,
`lora_dropout.probes.measure`, the influence estimate of `lora_dropout.probes.stability`).

``loss`` is the cross-entropy of the UNMASKED model (``dW`` at full scale) in eval mode, so every
quantity is a deterministic function of ``theta``.

Hypotheses (`bounds.runlog.Hypothesis`). By default the probes measure the unmasked model. Training
minimised the MASKED loss, whose mean predictor is the expected one: every ``dW`` times its training
mean ``c = E[m_B m_A^T]`` (``(1-p)^2`` without rescale, 1 with it; ``LoraDropout.scale_for("expected")``,
the scale of the ``expected`` eval mode). ``hypothesis="expected"`` (``scale=c`` of `ParamSpace`)
measures everything at that predictor instead: ``theta(S) = c dW`` in ``delta_w`` space, ``(A, c B)``
in ``factors`` space (AdaLoRA: ``lora_B`` times ``c``), with ``theta0`` unchanged, so the regulariser
is ``lambda s sum_k ||c dW_k||^2``. Both equal the unmasked probes of a copy of the model whose
``B`` factors were multiplied by ``c``.

Parameter spaces (docs/measurement.md, "Decisions", "Hessian space"). ``theta`` is restricted to the ADAPTED
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

`ParamSpace` leaves the model as it found it: parameters untouched (values are substituted with
``torch.func.functional_call``, never written), hooks removed, train/eval flags and ``requires_grad``
restored.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Mapping

import torch
import torch.nn.functional as F

from bounds.runlog import Space

from ..method.apply import LoraDropout
from ..method.losses import logits_of
from ..method.objective import KEY_FIELD, split_batch, unwrap
from ..method.validation import check_option


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
    space : Space or str
        ``"delta_w"`` (default) or ``"factors"`` (module doc, "Parameter spaces").
    scale : float
        ``theta(S)`` is the model's with every ``dW`` times ``scale`` (its ``B`` factors times ``scale`` in
        ``factors`` space): 1 = the unmasked model, ``handle.scale_for("expected")`` = the expected
        predictor (module doc, "Hypotheses").
    """

    def __init__(
        self, model: torch.nn.Module, handle: LoraDropout, space: Space | str = Space.DELTA_W, scale: float = 1.0
    ):
        space = check_option(Space, "space", space)
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
        if self.space == Space.DELTA_W:
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
            if self.space == Space.DELTA_W:
                hooks = [s.layer.register_forward_hook(self._add_delta(k)) for k, s in enumerate(self.sites)]
            with self.handle.use_scale(0.0 if self.space == Space.DELTA_W else 1.0):
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
