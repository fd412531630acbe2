"""Eq. 8: the test-time ensemble, the single-pass eval modes, and reproducible evaluation masks."""

import pytest
import torch

from lora_dropout import LoraDropoutConfig, apply_lora_dropout, predict
from lora_dropout.method.ensemble import aggregate
from tests.tiny import tiny_batch, tiny_lora


def _strong_lora(seed=0):
    """A tiny model whose LoRA update dominates, so members differ a lot (the Jensen gap is visible)."""
    return tiny_lora(seed=seed, b_scale=30.0).double()


@pytest.mark.parametrize("average", ["probs", "logits"])
def test_jensen_gap_is_non_negative_for_every_example(average):
    model = _strong_lora()
    apply_lora_dropout(model, LoraDropoutConfig(dropout_rate=0.5, n_eval_instances=8, ensemble_average=average))
    batch = tiny_batch(batch_size=32)
    pred = predict(model, batch)
    assert pred.member_logits.shape == (8, 32, 3) and pred.probs.shape == (32, 3)
    gap = pred.jensen_gap(batch["labels"])
    assert float(gap.max()) > 1e-3  # members disagree, so the inequality is not trivially tight
    assert bool((gap >= -1e-12).all()), gap.min()


def test_aggregate_probs_and_logits():
    z = torch.tensor([[[2.0, 0.0]], [[0.0, 2.0]]])  # two members, one example
    torch.testing.assert_close(aggregate(z, "probs"), torch.tensor([[0.5, 0.5]]))
    torch.testing.assert_close(aggregate(z, "logits"), torch.tensor([[0.5, 0.5]]))
    z = torch.tensor([[[4.0, 0.0]], [[0.0, 1.0]]])
    assert not torch.allclose(aggregate(z, "probs"), aggregate(z, "logits"))


def test_expected_mode_is_the_mean_of_many_masked_forwards_of_a_linear_layer():
    # Linear in dW: E[diag(m_B) B A diag(m_A)] = (1-p)^2 B A exactly, so the mean of masked outputs of
    # one LoRA layer converges to the expected-mode output at rate 1/sqrt(draws).
    model = tiny_lora().double()
    p = 0.4
    handle = apply_lora_dropout(model, LoraDropoutConfig(dropout_rate=p))
    site = handle.sites[0]
    x = torch.randn(1, 3, site.in_features, dtype=torch.float64)
    draws = 20000
    masks = handle.sample(1, n_instances=draws, dtype=torch.float64)
    with torch.no_grad(), handle.use(masks):
        mean = site.layer(x.expand(draws, -1, -1)).mean(dim=0)
    with torch.no_grad(), handle.use_scale(handle.scale_for("expected")):
        expected = site.layer(x)[0]
    with torch.no_grad(), handle.use_scale(handle.scale_for("full")):
        full = site.layer(x)[0]
    branch = (full - site.layer.base_layer(x)[0]).abs().max()
    assert float((mean - expected).abs().max()) < 0.02 * float(branch)
    assert float((full - expected).abs().max()) > 0.3 * float(branch)  # (1-p)^2 = 0.36 really scales it


def test_single_pass_modes_and_their_shapes():
    model = tiny_lora()
    batch = tiny_batch()
    handle = apply_lora_dropout(model, LoraDropoutConfig(dropout_rate=0.5))
    expected = predict(model, batch, mode="expected")
    full = predict(model, batch, mode="full")
    assert expected.member_logits.shape == (1, 5, 3)
    assert not torch.allclose(expected.probs, full.probs)
    with torch.no_grad(), handle.use_scale(1.0):
        plain = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    torch.testing.assert_close(full.member_logits[0], plain)


def test_evaluation_is_reproducible_and_independent_of_batch_composition():
    model = tiny_lora()
    apply_lora_dropout(model, LoraDropoutConfig(dropout_rate=0.5, n_eval_instances=4, seed=3))
    batch = {**tiny_batch(), "sample_id": torch.arange(100, 105)}
    first = predict(model, batch)
    torch.testing.assert_close(predict(model, batch).member_logits, first.member_logits)
    # the last two examples alone, chunked one instance per pass: same members
    sub = {k: v[3:] for k, v in batch.items()}
    part = predict(model, sub, max_instances_per_forward=1)
    torch.testing.assert_close(part.member_logits, first.member_logits[:, 3:])
    # training mode of the caller is restored
    model.train()
    predict(model, batch)
    assert model.training


def test_ensemble_members_come_from_the_evaluation_stream_not_the_training_one():
    model = tiny_lora()
    handle = apply_lora_dropout(model, LoraDropoutConfig(dropout_rate=0.5, n_eval_instances=2))
    batch = tiny_batch()
    pred = predict(model, batch)
    masks = handle.sample(5, n_instances=2, train=True)
    model.eval()
    with torch.no_grad(), handle.use(masks):
        from lora_dropout.method.objective import tile

        z = model(**tile({k: batch[k] for k in ("input_ids", "attention_mask")}, 2, 5)).logits.view(2, 5, 3)
    assert not torch.allclose(z, pred.member_logits)
