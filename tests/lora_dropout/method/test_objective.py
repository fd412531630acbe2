"""Eq. 7: the batched N-instance objective against the looped reference."""

import pytest
import torch
import torch.nn.functional as F

from lora_dropout import LoraDropoutConfig, apply_lora_dropout
from lora_dropout.method.objective import looped_n_instance_loss, n_instance_backward, n_instance_loss, tile
from tests.tiny import tiny_adalora, tiny_batch, tiny_lora


def _grads(model):
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


def _zero(model):
    for p in model.parameters():
        p.grad = None


@pytest.mark.parametrize("scope", ["example", "batch", "token"])
@pytest.mark.parametrize("make", [lambda: tiny_lora(b_scale=30.0), tiny_adalora], ids=["lora", "adalora"])
def test_batched_and_looped_losses_and_gradients_agree(scope, make):
    model = make()
    model.train()
    apply_lora_dropout(model, LoraDropoutConfig(dropout_rate=0.4, n_instances=4, mask_scope=scope))
    batch = {**tiny_batch(), "sample_id": torch.tensor([3, 1, 4, 1_000_000, 5])}
    batched = n_instance_loss(model, batch, step=2, epoch=1)
    batched.loss.backward()
    g_batched = _grads(model)
    _zero(model)
    looped = looped_n_instance_loss(model, batch, step=2, epoch=1)
    looped.loss.backward()
    g_looped = _grads(model)
    torch.testing.assert_close(batched.loss, looped.loss)
    torch.testing.assert_close(batched.per_example, looped.per_example)
    assert g_batched.keys() == g_looped.keys() and len(g_batched) > 0
    for name in g_batched:
        torch.testing.assert_close(g_batched[name], g_looped[name], msg=name)
    # the instances really differ (masks are not vacuous)
    assert batched.per_example.std(dim=0).max() > 1e-2


@pytest.mark.parametrize("cap", [1, 3])
def test_chunked_backward_matches_one_pass(cap):
    model = tiny_lora(b_scale=30.0)
    model.train()
    apply_lora_dropout(model, LoraDropoutConfig(dropout_rate=0.4, n_instances=4))
    batch = tiny_batch()
    one = n_instance_loss(model, batch)
    one.loss.backward()
    g_one = _grads(model)
    _zero(model)
    chunked = n_instance_backward(model, batch, max_instances_per_forward=cap)
    torch.testing.assert_close(chunked.loss, one.loss.detach())
    torch.testing.assert_close(chunked.per_example, one.per_example)
    for name, g in _grads(model).items():
        torch.testing.assert_close(g, g_one[name], msg=name)


def test_loss_is_the_mean_of_per_example_instance_losses_and_rate_zero_is_plain_ce():
    model = tiny_lora()
    model.train()
    batch = tiny_batch()
    apply_lora_dropout(model, LoraDropoutConfig(dropout_rate=0.0, n_instances=3))
    result = n_instance_loss(model, batch)
    assert result.per_example.shape == (3, 5)
    torch.testing.assert_close(result.loss.detach(), result.per_example.mean())
    plain = F.cross_entropy(model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits,
                            batch["labels"])
    torch.testing.assert_close(result.loss.detach(), plain.detach())


def test_adalora_objective_includes_the_orthogonality_regulariser():
    model = tiny_adalora()
    model.train()
    apply_lora_dropout(model, LoraDropoutConfig(dropout_rate=0.2, n_instances=2))
    result = n_instance_loss(model, tiny_batch())
    assert float(result.loss - result.per_example.mean()) > 0  # orth_reg_weight * ||P^T P - I|| ... > 0


def test_tile_is_instance_major_and_leaves_non_batch_entries_alone():
    batch = {"x": torch.arange(3), "y": torch.ones(3, 2), "scalar": torch.tensor(7), "name": "a"}
    tiled = tile(batch, 2, 3)
    assert tiled["x"].tolist() == [0, 1, 2, 0, 1, 2]
    assert tiled["y"].shape == (6, 2)
    assert tiled["scalar"] is batch["scalar"] and tiled["name"] == "a"


def test_gradient_checkpointing_sees_the_same_masks_in_its_recompute():
    batch = tiny_batch()
    grads = {}
    for checkpointing in (False, True):
        model = tiny_lora(b_scale=30.0)
        if checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.train()
        apply_lora_dropout(model, LoraDropoutConfig(dropout_rate=0.4, n_instances=3))
        n_instance_backward(model, batch, max_instances_per_forward=2)
        grads[checkpointing] = _grads(model)
        if checkpointing:
            with pytest.raises(ValueError, match="gradient checkpointing"):
                n_instance_loss(model, batch)
    assert grads[True].keys() == grads[False].keys()
    for name in grads[False]:
        torch.testing.assert_close(grads[True][name], grads[False][name], msg=name)
