"""The one place that touches peft internals (peft is pinned in pyproject.toml for this reason).

What this module relies on, and what `tests/lora_dropout/method/test_peft_seam.py` checks against the
pinned peft:

- LoRA linear layers are ``peft.tuners.lora.layer.Linear`` with ``lora_A[adapter]`` (``(r, in)``
  Linear), ``lora_B[adapter]`` (``(out, r)`` Linear), ``lora_dropout[adapter]``, ``scaling[adapter]``
  and a forward computing ``base(x) + lora_B(lora_A(dropout(x))) * scaling``.
- AdaLoRA layers are ``peft.tuners.adalora.layer.SVDLinear`` with parameters ``lora_A`` (Q,
  ``(r, in)``), ``lora_E`` (Lambda, ``(r, 1)``), ``lora_B`` (P, ``(out, r)``), ``ranknum`` and a forward
  computing ``base(x) + (dropout(x) @ (A * E).T @ B.T) * scaling / ranknum``.

LoRA Dropout is installed by giving each such layer an instance-level ``forward`` that computes the
same expression with the input-feature mask applied to the branch input (= columns of A / Q) and the
output-feature mask applied to the branch output (= rows of B / P), Eq. 2 and Eqs. 4-6. Deleting the
instance attribute restores peft's own forward exactly.
"""

from __future__ import annotations

import types
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from peft.tuners.adalora.layer import SVDLinear
from peft.tuners.lora.layer import Linear as LoraLinear
from peft.tuners.lora.layer import LoraLayer
from peft.utils.other import ModulesToSaveWrapper

_ATTR = "_lora_dropout_site_fn"


@dataclass(frozen=True)
class LoraSite:
    """One (layer, adapter) pair that receives masks."""

    name: str  # "<module path>::<adapter>"
    module_name: str
    adapter: str
    layer: torch.nn.Module
    kind: str  # "lora" or "adalora"

    @property
    def in_features(self) -> int:
        return self.layer.in_features

    @property
    def out_features(self) -> int:
        return self.layer.out_features

    def factors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(A, B)`` weights, shapes ``(r, in)`` and ``(out, r)``; for AdaLoRA ``(Q * Lambda, P)``."""
        if self.kind == "adalora":
            return self.layer.lora_A[self.adapter] * self.layer.lora_E[self.adapter], self.layer.lora_B[self.adapter]
        return self.layer.lora_A[self.adapter].weight, self.layer.lora_B[self.adapter].weight

    def delta_weight(self) -> torch.Tensor:
        """The merged ``dW`` of this adapter, shape ``(out, in)``, as peft computes it."""
        return self.layer.get_delta_weight(self.adapter)

    def trainable_factors(self) -> list[tuple[str, torch.nn.Parameter]]:
        """The adapter's own parameters (A, B and, for AdaLoRA, Lambda) with qualified names."""
        prefix = self.module_name
        if self.kind == "adalora":
            names = ("lora_A", "lora_E", "lora_B")
            return [(f"{prefix}.{n}.{self.adapter}", getattr(self.layer, n)[self.adapter]) for n in names]
        return [
            (f"{prefix}.lora_A.{self.adapter}.weight", self.layer.lora_A[self.adapter].weight),
            (f"{prefix}.lora_B.{self.adapter}.weight", self.layer.lora_B[self.adapter].weight),
        ]


def find_lora_sites(model: torch.nn.Module) -> list[LoraSite]:
    """Every LoRA / AdaLoRA linear layer and adapter of ``model``, in module order.

    Raises
    ------
    ValueError
        If the model has no LoRA layer, or a LoRA layer of a kind LoRA Dropout does not define
        (embedding, convolution, DoRA and other variants).
    """
    sites: list[LoraSite] = []
    unsupported: list[str] = []
    for module_name, module in model.named_modules():
        if not isinstance(module, LoraLayer):
            continue
        if isinstance(module, SVDLinear):
            kind = "adalora"
        elif type(module) is LoraLinear:
            kind = "lora"
        else:
            unsupported.append(f"{module_name} ({type(module).__module__}.{type(module).__name__})")
            continue
        adapters = sorted(module.lora_A.keys())
        variants = [a for a in adapters if a in getattr(module, "lora_variant", {})]
        if variants:
            unsupported.append(f"{module_name} (LoRA variant such as DoRA on adapter(s) {variants})")
            continue
        for adapter in adapters:
            sites.append(LoraSite(f"{module_name}::{adapter}", module_name, adapter, module, kind))
    if unsupported:
        raise ValueError(
            "LoRA Dropout masks the columns of A and rows of B of LoRA linear layers (Eq. 2); these layers are "
            f"not supported: {', '.join(unsupported)}"
        )
    if not sites:
        raise ValueError(
            f"{type(model).__name__} has no LoRA layers: apply_lora_dropout needs a peft LoRA or AdaLoRA model "
            "(peft.get_peft_model with a LoraConfig or AdaLoraConfig)"
        )
    return sites


# A site function answers, for one adapter and the branch input x, what to multiply into the branch:
# (input mask or None, output mask or None, scalar scale). None means "nothing to apply".
SiteFn = Callable[[str, torch.Tensor], tuple[torch.Tensor | None, torch.Tensor | None, float]]


def _apply(branch_in: torch.Tensor, m_in: torch.Tensor | None) -> torch.Tensor:
    return branch_in if m_in is None else branch_in * m_in


def _finish(delta: torch.Tensor, m_out: torch.Tensor | None, scale: float) -> torch.Tensor:
    # Multiplying by an all-ones mask or by 1.0 is exact, so p = 0 reproduces peft bit for bit.
    if m_out is not None:
        delta = delta * m_out
    if scale != 1.0:
        delta = delta * scale
    return delta


def _lora_forward(self: LoraLinear, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
    site_fn: SiteFn = getattr(self, _ATTR)
    if self.disable_adapters or kwargs.get("adapter_names") is not None or self.merged:
        if self.merged and not self.disable_adapters:
            raise RuntimeError("LoRA Dropout cannot mask a merged adapter: unmerge it before training or evaluating")
        if kwargs.get("adapter_names") is not None:
            raise RuntimeError("mixed-adapter batches (adapter_names=...) are not supported with LoRA Dropout")
        return type(self).forward(self, x, *args, **kwargs)
    result = self.base_layer(x, *args, **kwargs)
    result_dtype = result.dtype
    for adapter in self.active_adapters:
        if adapter not in self.lora_A:
            continue
        lora_A, lora_B = self.lora_A[adapter], self.lora_B[adapter]
        x = self._cast_input_dtype(x, lora_A.weight.dtype)
        m_in, m_out, scale = site_fn(adapter, x)
        h = _apply(self.lora_dropout[adapter](x), m_in)  # masks A's columns: (..., in)
        delta = lora_B(lora_A(h)) * self.scaling[adapter]  # (..., out)
        result = result + _finish(delta, m_out, scale)  # masks B's rows
    return result.to(result_dtype)


def _adalora_forward(self: SVDLinear, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
    site_fn: SiteFn = getattr(self, _ATTR)
    if self.disable_adapters or self.merged:
        if self.merged and not self.disable_adapters:
            raise RuntimeError("LoRA Dropout cannot mask a merged adapter: unmerge it before training or evaluating")
        return type(self).forward(self, x, *args, **kwargs)
    result = self.base_layer(x, *args, **kwargs)
    for adapter in self.active_adapters:
        if adapter not in self.lora_A:
            continue
        lora_A, lora_B, lora_E = self.lora_A[adapter], self.lora_B[adapter], self.lora_E[adapter]
        ranknum = self.ranknum[adapter] + 1e-5
        x = self._cast_input_dtype(x, lora_A.dtype)
        m_in, m_out, scale = site_fn(adapter, x)
        h = _apply(self.lora_dropout[adapter](x), m_in)  # masks Q's columns; Lambda is never masked
        delta = (h @ (lora_A * lora_E).T @ lora_B.T) * self.scaling[adapter] / ranknum
        result = result + _finish(delta, m_out, scale)  # masks P's rows
    return result


def install(site_layer: torch.nn.Module, site_fn: SiteFn) -> None:
    """Route ``site_layer``'s forward through LoRA Dropout; ``site_fn`` supplies the masks."""
    forward = _adalora_forward if isinstance(site_layer, SVDLinear) else _lora_forward
    setattr(site_layer, _ATTR, site_fn)
    site_layer.forward = types.MethodType(forward, site_layer)


def uninstall(site_layer: torch.nn.Module) -> None:
    """Restore peft's own forward (removes the instance attributes `install` set)."""
    site_layer.__dict__.pop("forward", None)
    site_layer.__dict__.pop(_ATTR, None)


def is_installed(site_layer: torch.nn.Module) -> bool:
    return _ATTR in site_layer.__dict__


def iter_layers(sites: list[LoraSite]) -> Iterator[torch.nn.Module]:
    """Distinct layers of ``sites`` (a layer with several adapters appears once)."""
    seen: set[int] = set()
    for site in sites:
        if id(site.layer) not in seen:
            seen.add(id(site.layer))
            yield site.layer


def is_adalora(model: torch.nn.Module) -> bool:
    """Whether ``model`` carries AdaLoRA layers (their budget allocation needs `update_and_allocate`)."""
    return any(isinstance(m, SVDLinear) for m in model.modules())


def adalora_update_and_allocate(model: torch.nn.Module, global_step: int) -> None:
    """AdaLoRA's rank-budget step; call after ``backward`` and before ``zero_grad`` (peft's contract)."""
    tuner = model.base_model if hasattr(model, "base_model") else model
    tuner.update_and_allocate(global_step)


def adalora_orth_reg(model: torch.nn.Module) -> torch.Tensor | None:
    """AdaLoRA's orthogonality regulariser, weight included, or None for non-AdaLoRA models.

    peft adds it to ``outputs.loss`` inside ``AdaLoraModel.forward`` only when the model computes the
    loss itself; LoRA Dropout computes per-example losses from the logits and adds it here instead.
    """
    if not is_adalora(model):
        return None
    tuner = model.base_model if hasattr(model, "base_model") else model
    config = tuner.peft_config[tuner.trainable_adapter_name]
    weight = config.orth_reg_weight
    if weight <= 0:
        return None
    total, count = 0.0, 0
    for name, param in tuner.model.named_parameters():
        if ("lora_A" in name or "lora_B" in name) and tuner.trainable_adapter_name in name:
            if param.shape == torch.Size([0]):
                continue
            para_cov = param @ param.T if "lora_A" in name else param.T @ param
            eye = torch.eye(*para_cov.size(), out=torch.empty_like(para_cov))
            eye.requires_grad = False
            total = total + torch.norm(para_cov - eye, p="fro")
            count += 1
    if count == 0:
        return None
    return weight * total / count


# -- posterior sampling (docs/certificate.md; used by `lora_dropout.certify.posterior`) ----------------------


def factor_modules(site: LoraSite) -> tuple[torch.nn.Module, torch.nn.Module]:
    """The ``nn.Linear`` modules holding ``A`` (``lora_A``) and ``B`` (``lora_B``) of a LoRA site.

    Both peft's forward and the installed LoRA Dropout forward compute the branch as
    ``lora_B(lora_A(h))`` by calling these modules, so a forward hook on ``lora_A`` sees the (masked)
    branch input ``h`` and one on ``lora_B`` sees ``A h``: that is where the PAC-Bayes posterior adds
    its per-example perturbations of the factors.

    Raises
    ------
    ValueError
        For AdaLoRA sites (their factors are bare parameters with ``Lambda`` between them, and the
        posterior of docs/certificate.md is defined on LoRA's ``A`` and ``B``) and for ``lora_bias``
        (``B`` then carries a bias, a parameter the posterior does not define).
    """
    if site.kind != "lora":
        raise ValueError(
            f"posterior sampling (docs/certificate.md) perturbs LoRA factors A and B; site {site.name} is "
            f"{site.kind!r} (AdaLoRA is not supported)"
        )
    lora_a, lora_b = site.layer.lora_A[site.adapter], site.layer.lora_B[site.adapter]
    if getattr(lora_a, "bias", None) is not None or getattr(lora_b, "bias", None) is not None:
        raise ValueError(f"posterior sampling does not support lora_bias=True (site {site.name} has a LoRA bias)")
    return lora_a, lora_b


def site_is_active(site: LoraSite) -> bool:
    """Whether the site's adapter takes part in the forward pass (active and not disabled)."""
    return site.adapter in site.layer.active_adapters and not site.layer.disable_adapters


def trained_heads(model: torch.nn.Module) -> list[tuple[str, torch.nn.Module]]:
    """The trained heads: peft's ``modules_to_save`` copies that the forward pass uses.

    For every ``ModulesToSaveWrapper`` with adapters enabled, the copy its forward calls
    (``modules_to_save[active_adapters[0]]``), with its qualified module name in ``model``.
    """
    heads = []
    for name, module in model.named_modules():
        if not isinstance(module, ModulesToSaveWrapper) or module.disable_adapters or not module.active_adapters:
            continue
        adapter = module.active_adapters[0]
        if adapter in module.modules_to_save:
            heads.append((f"{name}.modules_to_save.{adapter}", module.modules_to_save[adapter]))
    return heads


def adapter_file_names(model: torch.nn.Module) -> dict[str, str]:
    """``{name in model.state_dict(): name in peft's adapter file}`` for every adapter's saved tensors.

    peft strips the adapter name when it saves (``...lora_A.default.weight`` -> ``...lora_A.weight``,
    ``classifier.modules_to_save.default.weight`` -> ``classifier.weight``); the mapping is read off
    ``get_peft_model_state_dict`` itself (by tensor identity), so it follows peft's own rules. Empty
    when ``model`` is not a ``PeftModel``.
    """
    if not hasattr(model, "peft_config"):
        return {}
    from peft import get_peft_model_state_dict

    by_ptr = {(p.data_ptr(), tuple(p.shape)): n for n, p in model.named_parameters()}
    names: dict[str, str] = {}
    for adapter in model.peft_config:
        for saved, tensor in get_peft_model_state_dict(model, adapter_name=adapter).items():
            full = by_ptr.get((tensor.data_ptr(), tuple(tensor.shape)))
            if full is not None:
                names[full] = saved
    return names
