"""The masks on real peft layers: Eq. 2 for LoRA, Eqs. 4-6 for AdaLoRA, and exact removal."""

import pytest
import torch
from peft import LoraConfig, get_peft_model
from scipy.stats import binomtest

from lora_dropout import LoraDropoutConfig, apply_lora_dropout, get_lora_dropout
from lora_dropout.method.peft_seam import find_lora_sites, is_installed
from tests.tiny import tiny_adalora, tiny_batch, tiny_bert, tiny_lora


def _logits(model, batch, seed=123):
    torch.manual_seed(seed)  # the base model's and peft's own dropout draw from the global RNG
    return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits


@pytest.mark.parametrize("training", [True, False])
def test_rate_zero_equals_vanilla_peft_bit_for_bit(training):
    # base-model dropout and peft's lora_dropout on, so train mode exercises the same RNG draws
    model = tiny_lora(lora_dropout=0.1, dropout=0.1)
    batch = tiny_batch()
    model.train(training)
    vanilla = _logits(model, batch)
    apply_lora_dropout(model, LoraDropoutConfig(dropout_rate=0.0))
    assert torch.equal(_logits(model, batch), vanilla)


@pytest.mark.parametrize("training", [True, False])
def test_remove_restores_vanilla_peft_exactly(training):
    model = tiny_lora(dropout=0.1)
    batch = tiny_batch()
    model.train(training)
    vanilla = _logits(model, batch)
    handle = apply_lora_dropout(model, LoraDropoutConfig(dropout_rate=0.5))
    assert not torch.equal(_logits(model, batch), vanilla)
    handle.remove()
    assert torch.equal(_logits(model, batch), vanilla)
    assert not any(is_installed(s.layer) for s in find_lora_sites(model))
    assert get_lora_dropout(model, required=False) is None


def _masked_site_output(model, site, masks, x):
    handle = get_lora_dropout(model)
    with handle.use(masks):
        return site.layer(x)


def test_lora_layer_computes_diag_mB_B_A_diag_mA():
    """The masked branch equals x @ dW_hat^T with dW_hat = diag(m_B) B A diag(m_A) (Eq. 2)."""
    model = tiny_lora()
    handle = apply_lora_dropout(model, LoraDropoutConfig(dropout_rate=0.5))
    site = handle.sites[0]
    masks = handle.sample(3, n_instances=2)  # 6 rows
    x = torch.randn(6, 4, site.in_features)
    out = _masked_site_output(model, site, masks, x)
    A, B = site.factors()
    scaling = site.layer.scaling[site.adapter]
    m_in, m_out = masks.masks[site.name]
    for row in range(6):
        dw_hat = torch.diag(m_out[row]) @ B @ A @ torch.diag(m_in[row]) * scaling  # (out, in)
        expected = site.layer.base_layer(x[row]) + x[row] @ dw_hat.T
        torch.testing.assert_close(out[row], expected)


def test_adalora_masks_rows_of_P_and_columns_of_Q_never_Lambda():
    model = tiny_adalora()
    handle = apply_lora_dropout(model, LoraDropoutConfig(dropout_rate=0.5))
    assert {s.kind for s in handle.sites} == {"adalora"}
    site = handle.sites[0]
    masks = handle.sample(2, n_instances=2)
    x = torch.randn(4, 3, site.in_features)
    out = _masked_site_output(model, site, masks, x)
    layer, a = site.layer, site.adapter
    Q, E, P = layer.lora_A[a], layer.lora_E[a], layer.lora_B[a]
    scale = layer.scaling[a] / (layer.ranknum[a] + 1e-5)
    m_in, m_out = masks.masks[site.name]
    for row in range(4):
        # Eqs. 4-6: P_hat = diag(m_B) P, Q_hat = Q diag(m_A); Lambda (E) enters unmasked
        dw_hat = torch.diag(m_out[row]) @ P @ torch.diag(E.view(-1)) @ Q @ torch.diag(m_in[row]) * scale
        torch.testing.assert_close(out[row], layer.base_layer(x[row]) + x[row] @ dw_hat.T)


def test_realised_sparsity_of_dw_hat_matches_2p_minus_p2():
    p = 0.3
    model = tiny_lora()
    handle = apply_lora_dropout(model, LoraDropoutConfig(dropout_rate=p))
    masks = handle.sample(500, n_instances=4)  # 2000 independent instances
    zeros = trials = 0
    for site in handle.sites:
        A, B = site.factors()
        dw = (B @ A).detach()
        assert bool((dw != 0).all()), "B A must be non-zero so that zeros come from the masks only"
        m_in, m_out = masks.masks[site.name]
        d = min(site.in_features, site.out_features)
        # Diagonal entries (i, i) of dW_hat involve disjoint mask entries m_B[i], m_A[i], so they are
        # independent Bernoulli(s) zeros: their count is exactly binomial.
        diag_hat = m_out[:, :d] * torch.diagonal(dw)[None, :d] * m_in[:, :d]
        zeros += int((diag_hat == 0).sum())
        trials += diag_hat.numel()
        # the whole matrix agrees too (entries share masks, so compare the mean loosely)
        full_hat = m_out[:8, :, None] * dw[None] * m_in[:8, None, :]
        assert abs(float((full_hat == 0).float().mean()) - (2 * p - p * p)) < 0.15
    ci = binomtest(zeros, trials, 2 * p - p * p).proportion_ci(0.999)
    assert ci.low <= 2 * p - p * p <= ci.high, zeros / trials


def _branch_mask(model, scope, seq_len=5):
    """The effective input mask of the first site, recovered from the layer on a token-constant input."""
    handle = apply_lora_dropout(model, LoraDropoutConfig(dropout_rate=0.5, mask_scope=scope))
    site = handle.sites[0]
    masks = handle.sample(4, n_instances=2, seq_len=seq_len)
    x = torch.ones(8, seq_len, site.in_features)
    with handle.use(masks):
        masked = site.layer(x) - site.layer.base_layer(x)
    return masked  # (rows, T, out)


def test_example_scope_is_shared_across_tokens_and_differs_across_examples():
    out = _branch_mask(tiny_lora(), "example")
    assert torch.allclose(out, out[:, :1].expand_as(out))  # constant over tokens
    assert not torch.allclose(out[0], out[1])  # examples differ
    assert not torch.allclose(out[0], out[4])  # instances differ


def test_batch_scope_is_shared_across_examples_of_an_instance():
    out = _branch_mask(tiny_lora(), "batch")
    assert torch.allclose(out, out[:, :1].expand_as(out))
    assert torch.allclose(out[0], out[3])  # same instance, other example
    assert not torch.allclose(out[0], out[4])  # other instance


def test_token_scope_differs_across_tokens():
    out = _branch_mask(tiny_lora(), "token")
    assert not torch.allclose(out[:, 0], out[:, 1])


def test_same_seed_same_masks_different_seed_different_masks():
    model = tiny_lora()
    a = apply_lora_dropout(model, LoraDropoutConfig(dropout_rate=0.3, seed=1)).sample(4, n_instances=2)
    b = apply_lora_dropout(model, LoraDropoutConfig(dropout_rate=0.3, seed=1)).sample(4, n_instances=2)
    c = apply_lora_dropout(model, LoraDropoutConfig(dropout_rate=0.3, seed=2)).sample(4, n_instances=2)
    for name in a.masks:
        assert all(torch.equal(x, y) for x, y in zip(a.masks[name], b.masks[name], strict=True))
    assert any(not torch.equal(a.masks[n][0], c.masks[n][0]) for n in a.masks)


def test_training_and_evaluation_streams_are_distinct():
    handle = apply_lora_dropout(tiny_lora(), LoraDropoutConfig(dropout_rate=0.5))
    train = handle.sample(4, n_instances=1, train=True)
    evaluation = handle.sample(4, n_instances=1, train=False)
    assert any(not torch.equal(train.masks[n][0], evaluation.masks[n][0]) for n in train.masks)


def test_example_masks_are_keyed_by_sample_id_not_batch_position():
    handle = apply_lora_dropout(tiny_lora(), LoraDropoutConfig(dropout_rate=0.5))
    one = handle.sample(3, n_instances=2, keys=torch.tensor([10, 11, 12]), epoch=1)
    other = handle.sample(2, n_instances=2, keys=torch.tensor([12, 99]), epoch=1)
    name = handle.sites[0].name
    # example 12: row 2 (instance 0) and row 5 (instance 1) in `one`; rows 0 and 2 in `other`
    assert torch.equal(one.masks[name][0][2], other.masks[name][0][0])
    assert torch.equal(one.masks[name][0][5], other.masks[name][0][2])


def test_plain_forwards_train_with_fresh_masks_and_evaluate_deterministically():
    model = tiny_lora()
    batch = tiny_batch()
    handle = apply_lora_dropout(model, LoraDropoutConfig(dropout_rate=0.5))
    model.train()
    assert not torch.equal(_logits(model, batch), _logits(model, batch))  # a new mask per forward
    model.eval()
    first = _logits(model, batch)
    assert torch.equal(first, _logits(model, batch))
    with handle.use_scale(0.25):  # the expected predictor: dW * (1 - p)^2
        torch.testing.assert_close(first, _logits(model, batch))


def test_model_without_lora_layers_is_a_clear_error():
    with pytest.raises(ValueError, match="no LoRA layers"):
        apply_lora_dropout(tiny_bert())


def test_dora_is_rejected_by_name():
    model = get_peft_model(tiny_bert(), LoraConfig(r=2, target_modules=["query"], use_dora=True))
    with pytest.raises(ValueError, match="DoRA"):
        apply_lora_dropout(model)


def test_every_adapter_of_every_layer_gets_masks():
    model = tiny_lora()
    model.add_adapter("second", LoraConfig(r=2, target_modules=["query"], init_lora_weights=False))
    handle = apply_lora_dropout(model)
    adapters = {s.adapter for s in handle.sites}
    assert adapters == {"default", "second"}
    assert len(handle.sites) == 4 + 2  # query+value in 2 layers, plus query in 2 layers


def test_wrong_row_count_is_reported():
    model = tiny_lora()
    handle = apply_lora_dropout(model, LoraDropoutConfig(dropout_rate=0.5))
    masks = handle.sample(3, n_instances=1)
    batch = tiny_batch(batch_size=5)
    with handle.use(masks), pytest.raises(RuntimeError, match="3 rows"):
        model(input_ids=batch["input_ids"])
