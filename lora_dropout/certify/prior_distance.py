"""The squared distances of the posterior mean to the prior mean that enter ``KL(Q || P)`` (docs/certificate.md).

``theta`` is what `lora_dropout.certify.posterior.posterior_parameters` names (the LoRA factors and the
trained head); `prior_tensors` finds its prior tensor by either name form, `per_tensor_sq_dist` holds it against a prior state tensor by tensor (what
`bounds.formulas.learned_dropout_kl` takes), and `factor_and_head_sq_dist` returns the two sums that
`bounds.formulas.dropout_kl` takes.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from typing import NamedTuple

import torch

from ..method import peft_seam
from ..method.apply import get_lora_dropout
from ..method.objective import unwrap
from .posterior import posterior_parameters


class SqDist(NamedTuple):
    """The squared distances of docs/certificate.md's ``KL(Q || P)``.

    Attributes
    ----------
    factor : float
        ``||A - A_P||^2 + ||B - B_P||^2`` summed over the adapted modules.
    head : float
        ``||head - head_P||^2`` (0 when no head is trained).
    """

    factor: float
    head: float


@torch.no_grad()
def factor_and_head_sq_dist(model: torch.nn.Module, prior_state: Mapping[str, torch.Tensor]) -> SqDist:
    """``(||A - A_P||^2 + ||B - B_P||^2, ||head - head_P||^2)`` for ``KL(Q || P)`` (docs/certificate.md).

    Pass the result to `bounds.formulas.dropout_kl` as ``factor_sq_dist`` and ``head_sq_dist``.

    Parameters
    ----------
    model : peft model with LoRA Dropout applied
        Its current parameters are the posterior mean ``theta``.
    prior_state : mapping of name to tensor
        The prior mean ``theta_P``, keyed as in the peft model's ``state_dict()``
        (``...lora_A.default.weight``, ``classifier.modules_to_save.default.weight``) or as in peft's
        adapter file (``get_peft_model_state_dict``: ``...lora_A.weight``, ``classifier.weight``).
        Other entries are ignored.

    Returns
    -------
    SqDist
        Sums of squares, accumulated in float64.

    Raises
    ------
    KeyError
        If a factor or head parameter has no entry in ``prior_state`` (the message lists them).
    ValueError
        If an entry's shape differs from the parameter's.
    """
    factors, head = posterior_parameters(unwrap(model))
    dist = per_tensor_sq_dist(model, prior_state)
    return SqDist(factor=sum(dist[n] for n in factors), head=sum(dist[n] for n in head))


def prior_tensors(model: torch.nn.Module, prior_state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The prior mean of every tensor `posterior_parameters` names, keyed by its model name.

    ``prior_state`` is keyed as for `factor_and_head_sq_dist` (either name form); the same errors.
    """
    inner = unwrap(model)
    factors, head = posterior_parameters(inner)
    file_names = peft_seam.adapter_file_names(get_lora_dropout(inner).model)
    missing = [n for n in (*factors, *head) if n not in prior_state and file_names.get(n) not in prior_state]
    if missing:
        raise KeyError(
            f"prior_state has no entry for {missing} (under either name form); it has {sorted(prior_state)[:8]}..."
        )
    out = {}
    for name, p in {**factors, **head}.items():
        prior = prior_state[name] if name in prior_state else prior_state[file_names[name]]
        if tuple(prior.shape) != tuple(p.shape):
            raise ValueError(f"prior_state[{name!r}] has shape {tuple(prior.shape)}, the parameter {tuple(p.shape)}")
        out[name] = prior
    return out


@torch.no_grad()
def per_tensor_sq_dist(model: torch.nn.Module, prior_state: Mapping[str, torch.Tensor]) -> dict[str, float]:
    """``||theta_g - theta_P,g||^2`` of every tensor `posterior_parameters` names, in float64.

    ``prior_state`` is keyed as for `factor_and_head_sq_dist` (either name form); the same errors.
    """
    factors, head = posterior_parameters(unwrap(model))
    out = {}
    for name, prior in prior_tensors(model, prior_state).items():
        p = factors[name] if name in factors else head[name]
        diff = p.detach().to(torch.float64) - prior.detach().to(device=p.device, dtype=torch.float64)
        out[name] = float((diff * diff).sum())
    return out


@contextlib.contextmanager
def at_prior(model: torch.nn.Module, prior_state: Mapping[str, torch.Tensor]) -> Iterator[None]:
    """Inside the block the trainable parameters of ``model`` hold the prior mean (`prior_tensors`); restored
    exactly on exit. The hold-out baseline measures the prior's own predictor this way (docs/certificate.md)."""
    prior = prior_tensors(model, prior_state)
    factors, head = posterior_parameters(unwrap(model))
    params = {**factors, **head}
    saved = {n: p.detach().clone() for n, p in params.items()}
    try:
        with torch.no_grad():
            for n, p in params.items():
                p.copy_(prior[n].to(device=p.device, dtype=p.dtype))
        yield
    finally:
        with torch.no_grad():
            for n, p in params.items():
                p.copy_(saved[n])

