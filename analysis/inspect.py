"""Looking inside the LoRA branch: which input features reach ``A`` for each token.

Used by the first notebook to show what the masks do: LoRA Dropout zeroes whole input features of the
branch for all tokens of an example (a column of ``A``), while peft's ``lora_dropout`` zeroes
independent (token, feature) entries of ``x``.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch


@torch.no_grad()
def branch_input_zeros(model: torch.nn.Module, inputs: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Zero pattern of the input of every ``lora_A`` during one forward pass: ``{module: (B, T, in) bool}``.

    An entry is True where the branch input is exactly zero: a dropped feature (the hidden states
    themselves are never exactly zero in practice).
    """
    captured: dict[str, torch.Tensor] = {}
    hooks = []
    for name, module in model.named_modules():
        if name.endswith("lora_A.default"):
            hooks.append(module.register_forward_pre_hook(
                lambda mod, args, name=name: captured.__setitem__(name, args[0] == 0)))
    try:
        model(**inputs)
    finally:
        for h in hooks:
            h.remove()
    return captured


def token_constant_fraction(zeros: torch.Tensor, attention_mask: torch.Tensor) -> float:
    """Fraction of examples whose dropped-feature pattern is the same for all of their real tokens."""
    same = []
    for row, mask in zip(zeros, attention_mask.bool(), strict=True):
        tokens = row[mask]  # (T_real, in)
        same.append(bool((tokens == tokens[:1]).all()))
    return sum(same) / len(same)
