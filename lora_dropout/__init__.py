"""LoRA Dropout (Lin et al. 2024, arXiv 2404.09610) on peft: masks, the N-instance objective, the ensemble.

The training side of the toolkit (torch, transformers, peft). Import what you use from here:

>>> from lora_dropout import LoraDropoutConfig  # doctest: +SKIP
"""

from .method.config import EnsembleAverage, EvalMode, LoraDropoutConfig, MaskScope

__all__ = [
    "EnsembleAverage",
    "EvalMode",
    "LoraDropoutConfig",
    "MaskScope",
    "apply_lora_dropout",
    "get_lora_dropout",
    "LoraDropout",
    "MaskSet",
    "n_instance_loss",
    "n_instance_backward",
    "predict",
    "Prediction",
    "save_lora_dropout",
    "load_lora_dropout",
    "LoraDropoutTrainer",
    "load_alpaca",
    "score_choices",
]

# The torch-dependent API is imported lazily, so `import lora_dropout` (e.g. for the config or the
# data loaders) works without paying for torch, transformers and peft.
_LAZY = {
    "apply_lora_dropout": "method.apply",
    "get_lora_dropout": "method.apply",
    "LoraDropout": "method.apply",
    "MaskSet": "method.apply",
    "n_instance_loss": "method.objective",
    "n_instance_backward": "method.objective",
    "predict": "method.ensemble",
    "Prediction": "method.ensemble",
    "save_lora_dropout": "method.persist",
    "load_lora_dropout": "method.persist",
    "LoraDropoutTrainer": "method.trainer",
    "load_alpaca": "tasks.alpaca",
    "score_choices": "tasks.choices",
}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        module = importlib.import_module(f".{_LAZY[name]}", __name__)
        return getattr(module, name)
    raise AttributeError(f"module 'lora_dropout' has no attribute {name!r}")
