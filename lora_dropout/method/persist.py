"""Save and load a LoRA Dropout adapter: peft's adapter files plus the LoRA Dropout config beside them.

The directory stays a valid peft adapter (``PeftModel.from_pretrained`` loads the weights and
ignores the extra file); `load_lora_dropout` also restores the stochastic behaviour, so a reloaded
model trains and ensembles exactly like the saved one.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch

from .apply import LoraDropout, apply_lora_dropout, get_lora_dropout
from .config import LoraDropoutConfig

CONFIG_NAME = "lora_dropout_config.json"


def save_lora_dropout(model: torch.nn.Module, directory: str | os.PathLike) -> Path:
    """Save the peft adapter of ``model`` and its LoRA Dropout config into ``directory``."""
    handle = get_lora_dropout(model)
    directory = Path(directory)
    # Written beside the target and swapped in by renames, so an interruption leaves either the old
    # adapter or the new one, never a half-written file.
    fresh = directory.with_name(f".{directory.name}.new")
    stale = directory.with_name(f".{directory.name}.old")
    for leftover in (fresh, stale):
        shutil.rmtree(leftover, ignore_errors=True)
    fresh.mkdir(parents=True)
    model.save_pretrained(fresh)
    # a plain write is enough: the whole directory is swapped in by the renames below
    text = json.dumps(handle.config.to_dict(), indent=2, sort_keys=True, allow_nan=False) + "\n"
    (fresh / CONFIG_NAME).write_text(text)
    if directory.exists():
        os.replace(directory, stale)
    os.replace(fresh, directory)
    shutil.rmtree(stale, ignore_errors=True)
    return directory


def read_lora_dropout_config(directory: str | os.PathLike) -> LoraDropoutConfig:
    """The LoRA Dropout config saved beside an adapter."""
    path = Path(directory) / CONFIG_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: {directory} is not a LoRA Dropout adapter directory")
    return LoraDropoutConfig.from_dict(json.loads(path.read_text()))


def load_lora_dropout(
    base_model: torch.nn.Module, directory: str | os.PathLike, *, is_trainable: bool = True
) -> tuple[torch.nn.Module, LoraDropout]:
    """Load an adapter saved by `save_lora_dropout` onto ``base_model`` and re-apply LoRA Dropout.

    Returns
    -------
    (peft model, LoraDropout handle)
    """
    from peft import PeftModel

    config = read_lora_dropout_config(directory)
    model = PeftModel.from_pretrained(base_model, str(directory), is_trainable=is_trainable)
    return model, apply_lora_dropout(model, config)
