import torch

from analysis.inspect import branch_input_zeros, token_constant_fraction
from lora_dropout import LoraDropoutConfig, apply_lora_dropout
from tests.tiny import tiny_batch, tiny_lora


def _fractions(scope=None, peft_dropout=0.0):
    model = tiny_lora(lora_dropout=peft_dropout)
    if scope:
        apply_lora_dropout(model, LoraDropoutConfig(dropout_rate=0.5, n_instances=1, mask_scope=scope))
    model.train()
    batch = tiny_batch(batch_size=8, seq_len=6)
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask")}
    zeros = branch_input_zeros(model, inputs)
    assert len(zeros) == 4 and all(z.shape == (8, 6, 16) for z in zeros.values())
    return [token_constant_fraction(z, batch["attention_mask"]) for z in zeros.values()], zeros


def test_example_masks_are_token_constant_and_peft_dropout_is_not():
    ours, zeros = _fractions("example")
    assert ours == [1.0] * 4
    assert 0.3 < float(torch.stack([z.float().mean() for z in zeros.values()]).mean()) < 0.7
    token, _ = _fractions("token")
    assert max(token) < 0.2
    peft, _ = _fractions(peft_dropout=0.5)
    assert max(peft) < 0.2


def test_padding_tokens_are_ignored():
    zeros = torch.zeros(1, 3, 4, dtype=torch.bool)
    zeros[0, 2] = True  # only the padded position differs
    assert token_constant_fraction(zeros, torch.tensor([[1, 1, 0]])) == 1.0
    assert token_constant_fraction(zeros, torch.tensor([[1, 1, 1]])) == 0.0
