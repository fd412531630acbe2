"""CUDA checks (``pytest -m gpu``; skipped without a CUDA device): bf16 on the GPU against float32 on the CPU.

Masks are counter-based integer hashes, so they must be bit-identical on every device and dtype;
model outputs in bf16 agree with float32 to bf16 precision (8 mantissa bits: about 1% relative).
"""

import pytest
import torch

from lora_dropout import LoraDropoutConfig, apply_lora_dropout, predict
from lora_dropout.method.objective import looped_n_instance_loss, n_instance_loss
from lora_dropout.tasks.alpaca import format_prompt
from lora_dropout.tasks.choices import score_choices
from tests.tiny import reviews, tiny_batch, tiny_causal_lm, tiny_lora, tiny_tokenizer

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

CUDA = "cuda"
CONFIG = LoraDropoutConfig(dropout_rate=0.3, n_instances=4)
# bf16 keeps 8 significant bits. These tiny models in bf16 on the CPU give probabilities within 2e-3 of
# float32; the tolerance leaves a factor 10 for other kernels and accumulation orders.
BF16_PROB_ATOL = 2e-2


def _on(batch, device):
    return {k: v.to(device) for k, v in batch.items()}


def test_bf16_masks_and_ensembles_on_cuda_match_float32_on_cpu():
    cpu = tiny_lora(b_scale=5.0)
    gpu = tiny_lora(b_scale=5.0).to(CUDA, torch.bfloat16)
    h_cpu, h_gpu = apply_lora_dropout(cpu, CONFIG), apply_lora_dropout(gpu, CONFIG)
    keys = torch.tensor([3, 1, 4, 1_000_000, 5])
    for train in (True, False):
        m_cpu = h_cpu.sample(5, n_instances=4, keys=keys, epoch=2, train=train)
        m_gpu = h_gpu.sample(5, n_instances=4, keys=keys.to(CUDA), epoch=2, train=train)
        assert m_gpu.masks.keys() == m_cpu.masks.keys()
        for site, (m_in, m_out) in m_cpu.masks.items():
            assert m_gpu.masks[site][0].dtype == torch.bfloat16
            assert torch.equal(m_gpu.masks[site][0].float().cpu(), m_in), site
            assert torch.equal(m_gpu.masks[site][1].float().cpu(), m_out), site

    batch = {**tiny_batch(), "sample_id": keys}
    expected = predict(cpu, batch)
    got = predict(gpu, _on(batch, CUDA))
    torch.testing.assert_close(got.probs.cpu(), expected.probs, rtol=0, atol=BF16_PROB_ATOL)
    assert float(expected.member_probs.std(dim=0).max()) > 0.05  # members differ: the masks matter

    tok = tiny_tokenizer()
    lm_cpu = tiny_causal_lm(tok, b_scale=5.0)
    lm_gpu = tiny_causal_lm(tok, b_scale=5.0).to(CUDA, torch.bfloat16)
    for model in (lm_cpu, lm_gpu):
        apply_lora_dropout(model, CONFIG)
    prompts = [format_prompt(r) for r in reviews()]
    want = score_choices(lm_cpu, tok, prompts, ("negative", "positive"), sample_ids=[9, 8, 7, 6])
    have = score_choices(lm_gpu, tok, prompts, ("negative", "positive"), sample_ids=[9, 8, 7, 6])
    torch.testing.assert_close(have.member_probs, want.member_probs, rtol=0, atol=BF16_PROB_ATOL)
    torch.testing.assert_close(have.probs, want.probs, rtol=0, atol=BF16_PROB_ATOL)


def test_batched_objective_equals_looped_on_cuda():
    model = tiny_lora(b_scale=30.0).to(CUDA)
    apply_lora_dropout(model, LoraDropoutConfig(dropout_rate=0.4, n_instances=4))
    model.train()
    batch = _on({**tiny_batch(), "sample_id": torch.tensor([3, 1, 4, 1_000_000, 5])}, CUDA)
    batched = n_instance_loss(model, batch, step=2, epoch=1)
    batched.loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    looped = looped_n_instance_loss(model, batch, step=2, epoch=1)
    looped.loss.backward()
    torch.testing.assert_close(batched.loss, looped.loss, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(batched.per_example, looped.per_example, rtol=1e-5, atol=1e-5)
    assert grads and float(batched.per_example.std(dim=0).max()) > 1e-2
    for name, p in model.named_parameters():
        if name in grads:
            torch.testing.assert_close(grads[name], p.grad, rtol=1e-4, atol=1e-5, msg=name)
