"""Probes on the tiny float64 BERT: reparametrisation, per-sample gradients, Lanczos vs the dense Hessian."""

import numpy as np
import pytest
import torch

from bounds.runlog import TABLES, Space
from lora_dropout import LoraDropoutConfig, apply_lora_dropout
from lora_dropout.probes.curvature import dense_hessian, lanczos_extremes
from lora_dropout.probes.gradients import (
    hessian_hvp,
    objective_grad_norm,
    per_sample_grad_norms,
    per_sample_grad_norms_loop,
)
from lora_dropout.probes.measure import run_probes
from lora_dropout.probes.space import ParamSpace
from lora_dropout.tasks.classification import EncodedSplit
from tests.tiny import VOCAB, tiny_adalora, tiny_lora

SPACES = [s.value for s in Space]  # the plain strings: what callers pass and the table holds
P = 0.3
S = 2 * P - P**2


def _eager(model):
    model.set_attn_implementation("eager")  # double backward (Hessian-vector products) needs eager attention
    return model


def _lora():
    # one adapted layer keeps the dense Hessian small (delta_w: 2 sites x 16 x 16 = 512 coordinates)
    model = _eager(tiny_lora(r=2, layers_to_transform=[0]).double())
    return model, apply_lora_dropout(model, LoraDropoutConfig(dropout_rate=P))


def _data(n: int = 12, seed: int = 0) -> EncodedSplit:
    """Sentences of 3 to 8 tokens: every batch is padded, so pads must not matter."""
    rng = np.random.default_rng(seed)
    features = tuple(
        {"input_ids": rng.integers(1, VOCAB, size=rng.integers(3, 9)).tolist()} for _ in range(n)
    )
    return EncodedSplit(
        features, rng.integers(0, 3, n).astype(np.int64), 10 * np.arange(n, dtype=np.int64), 0
    )


def _model_inputs(batch):
    return {k: v for k, v in batch.items() if k not in ("labels", "sample_id")}


def test_delta_w_space_at_the_merged_update_reproduces_the_model():
    model, handle = _lora()
    model.eval()
    batch = next(_data().batches(12))
    with torch.no_grad(), handle.use_scale(1.0):
        full = model(**_model_inputs(batch)).logits
    with torch.no_grad(), handle.use_scale(0.0):
        base = model(**_model_inputs(batch)).logits
    assert (full - base).abs().max() > 1e-2  # the adapter changes the output: the check below can fail
    for space in SPACES:
        ps = ParamSpace(model, handle, space)
        with torch.no_grad(), ps.active():
            torch.testing.assert_close(ps.logits(ps.flat(), batch), full, rtol=1e-12, atol=1e-12)
    ps = ParamSpace(model, handle, "delta_w")
    with torch.no_grad(), ps.active():  # D = 0 is the base model: the LoRA branch itself is off
        torch.testing.assert_close(
            ps.logits(torch.zeros(ps.dim, dtype=torch.float64), batch), base, rtol=1e-12, atol=1e-12
        )


@pytest.mark.parametrize(
    "make", [_lora, lambda: _with_handle(tiny_adalora().double())], ids=["lora", "adalora"]
)
def test_penalty_is_the_squared_norm_of_the_merged_updates(make):
    model, handle = make()
    expected = sum(float(s.delta_weight().detach().square().sum()) for s in handle.sites)
    for space in SPACES:
        ps = ParamSpace(model, handle, space)
        with torch.no_grad(), ps.active():
            np.testing.assert_allclose(float(ps.penalty(ps.flat())), expected, rtol=1e-12)
    ps = ParamSpace(model, handle, "factors")
    with torch.no_grad(), ps.active():
        # dW is bilinear in (A, B) (AdaLoRA: trilinear in A, E, B): scaling all factors by 2 scales it by 2^k
        k = 3 if handle.sites[0].kind == "adalora" else 2
        np.testing.assert_allclose(float(ps.penalty(2 * ps.flat())), 4**k * expected, rtol=1e-12)


def _with_handle(model):
    return model, apply_lora_dropout(model, LoraDropoutConfig(dropout_rate=P))


@pytest.mark.parametrize("space", SPACES)
def test_lanczos_extremes_match_the_dense_hessian(space):
    model, handle = _lora()
    data = _data()
    ps = ParamSpace(model, handle, space)
    with ps.active():
        dense = dense_hessian(lambda flat: ps.loss(flat, next(data.batches(len(data)))), ps.flat()).numpy()
    exact = np.linalg.eigvalsh(dense)
    hvp, dim = hessian_hvp(model, handle, data, space=space, batch_size=5)  # batches of 5, 5, 2: weighted
    assert dim == ps.dim == dense.shape[0]
    v = np.random.default_rng(1).standard_normal(dim)
    np.testing.assert_allclose(hvp(v), dense @ v, rtol=1e-10, atol=1e-12 * np.abs(dense).max())
    scale = np.abs(exact).max()
    result = lanczos_extremes(hvp, dim, tol=1e-10)
    assert exact[0] < 0  # indefinite, as docs/bounds.md expects: Lambda_min is not trivially positive
    np.testing.assert_allclose(
        [result["min_eig"], result["max_eig"]], [exact[0], exact[-1]], atol=1e-8 * scale
    )
    assert result["min_residual"] < 1e-8 * scale


@pytest.mark.parametrize("lam", [0.0, 1.0])
@pytest.mark.parametrize("space", SPACES)
def test_vmap_per_sample_gradient_norms_match_the_loop(space, lam):
    model, handle = _lora()
    data = _data()
    fast = per_sample_grad_norms(model, handle, data, space=space, lam=lam, batch_size=5)
    slow = per_sample_grad_norms_loop(model, handle, data, space=space, lam=lam)
    assert fast.shape == (len(data),)
    np.testing.assert_allclose(fast, slow, rtol=1e-10)
    assert fast.std() > 1e-3 * fast.mean()  # examples differ: a shared (e.g. batch-mean) gradient would fail


def test_regulariser_adds_2_lam_s_delta_to_every_gradient():
    model, handle = _lora()
    data = _data(n=1)
    d = torch.cat([s.delta_weight().reshape(-1) for s in handle.sites])
    ps = ParamSpace(model, handle)
    with ps.active():
        flat = ps.flat().requires_grad_(True)
        (grad,) = torch.autograd.grad(ps.loss(flat, next(data.batches(1))), flat)
    expected = torch.linalg.vector_norm(grad + 2 * 0.7 * S * d)
    np.testing.assert_allclose(
        per_sample_grad_norms(model, handle, data, lam=0.7), [float(expected)], rtol=1e-12
    )


@pytest.mark.parametrize("space", SPACES)
def test_objective_gradient_norm_matches_the_full_batch_gradient(space):
    model, handle = _lora()
    data = _data()
    ps = ParamSpace(model, handle, space)
    with ps.active():
        flat = ps.flat().requires_grad_(True)
        objective = ps.loss(flat, next(data.batches(len(data)))) + 0.5 * S * ps.penalty(flat)
        (grad,) = torch.autograd.grad(objective, flat)
    np.testing.assert_allclose(
        objective_grad_norm(model, handle, data, space=space, lam=0.5, batch_size=5),
        float(torch.linalg.vector_norm(grad)),
        rtol=1e-12,
    )


def test_adalora_factor_space_holds_lambda_and_matches_the_loop():
    model, handle = _with_handle(tiny_adalora().double())
    ps = ParamSpace(model, handle, "factors")
    assert ps.dim == sum(p.numel() for s in handle.sites for _, p in s.trainable_factors())
    assert any("lora_E" in name for s in handle.sites for name, _ in s.trainable_factors())
    data = _data(n=6)
    np.testing.assert_allclose(
        per_sample_grad_norms(model, handle, data, space="factors", batch_size=4),
        per_sample_grad_norms_loop(model, handle, data, space="factors"),
        rtol=1e-10,
    )


def _record_mask_formats(monkeypatch) -> list[str]:
    """The mask format of every per-example batch that passed the check, in order."""
    import lora_dropout.probes.gradients as probes

    used, real = [], probes._vmap_grads

    def spy(space, theta, batch, lam, mask_format="additive"):
        grads = real(space, theta, batch, lam, mask_format)
        used.append(mask_format)
        return grads

    monkeypatch.setattr(probes, "_vmap_grads", spy)
    return used


def _deberta():
    """A tiny DeBERTa-v3-style model (DebertaV2 architecture: relative attention with p2c/c2p, shared
    keys, position buckets, no absolute positions), LoRA on query_proj/value_proj, float64."""
    from peft import LoraConfig, get_peft_model
    from transformers import DebertaV2Config, DebertaV2ForSequenceClassification

    torch.manual_seed(0)
    config = DebertaV2Config(
        vocab_size=VOCAB, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
        max_position_embeddings=32, relative_attention=True, position_buckets=8, max_relative_positions=-1,
        pos_att_type=["p2c", "c2p"], share_att_key=True, norm_rel_ebd="layer_norm",
        position_biased_input=False, type_vocab_size=0, hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0, pooler_dropout=0.0, num_labels=3, pad_token_id=0,
        initializer_range=0.3,
    )
    lora = LoraConfig(r=2, target_modules=["query_proj", "value_proj"], init_lora_weights=False)
    return _with_handle(get_peft_model(DebertaV2ForSequenceClassification(config), lora).double())


@pytest.mark.parametrize("space", SPACES)
def test_deberta_v2_per_sample_gradients_match_a_loop_of_backwards(space, monkeypatch):
    from lora_dropout.probes.gradients import _per_example_grads

    model, handle = _deberta()
    assert {s.module_name.rsplit(".", 1)[-1] for s in handle.sites} == {"query_proj", "value_proj"}
    data = _data()
    lam = 0.5
    ps = ParamSpace(model, handle, space)
    theta = ps.flat()
    # reference: one ordinary forward and backward per example, unpadded, on the peft model itself
    params = [p for s in handle.sites for _, p in s.trainable_factors()]
    reference = []
    model.eval()
    for batch in data.batches(1):
        inputs = _model_inputs(batch)
        if space == "factors":
            for p in params:
                p.grad = None
            with handle.use_scale(1.0):
                loss = torch.nn.functional.cross_entropy(model(**inputs).logits, batch["labels"])
                loss = loss + lam * S * sum(s.delta_weight().square().sum() for s in handle.sites)
            loss.backward()
            reference.append(torch.cat([p.grad.reshape(-1) for p in params]))
        else:  # D_k is not a model parameter: the loop differentiates ParamSpace's plain (non-vmap) forward
            with ps.active():
                flat = theta.clone().requires_grad_(True)
                (grad,) = torch.autograd.grad(ps.regularised_losses(flat, batch, lam)[0], flat)
            reference.append(grad)
    reference = torch.stack(reference)
    formats = _record_mask_formats(monkeypatch)
    with ps.active():
        fast = torch.cat([_per_example_grads(ps, theta, b, lam, ["additive", "binary"])
                          for b in data.batches(5)])
    assert formats == ["binary"] * 3  # DeBERTa reads its mask as boolean: an additive one masks every token
    torch.testing.assert_close(fast, reference, rtol=1e-9, atol=1e-12 * float(reference.abs().max()))
    assert float(reference.norm(dim=1).std()) > 1e-3 * float(reference.norm(dim=1).mean())  # examples differ
    np.testing.assert_allclose(
        per_sample_grad_norms(model, handle, data, space=space, lam=lam, batch_size=5),
        reference.norm(dim=1).numpy(), rtol=1e-9,
    )


def test_a_causal_model_gets_its_own_causal_mask_from_the_binary_format(monkeypatch):
    # a prepared additive mask would replace LLaMA's causal mask (checked, and rejected); the 0/1 mask
    # lets the model build its causal mask itself, which reproduces the batched forward
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForSequenceClassification

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        num_labels=3,
        pad_token_id=0,
    )
    lora = LoraConfig(r=2, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    model, handle = _with_handle(get_peft_model(LlamaForSequenceClassification(config), lora).double())
    data = _data(n=6)
    formats = _record_mask_formats(monkeypatch)
    fast = per_sample_grad_norms(model, handle, data, lam=0.0, batch_size=3)
    assert formats == ["binary", "binary"]  # the additive one failed the check on the first batch
    # the loop runs each example unpadded: LLaMA's own padded and unpadded float64 forwards differ by ~1e-8
    np.testing.assert_allclose(fast, per_sample_grad_norms_loop(model, handle, data, lam=0.0), rtol=1e-6)


def test_a_model_no_mask_format_reproduces_is_refused(monkeypatch):
    import lora_dropout.probes.gradients as probes

    model, handle = _deberta()
    monkeypatch.setattr(probes, "MASK_FORMATS", ("additive",))  # the only format DeBERTa misreads
    with pytest.raises(RuntimeError, match="every padding-mask format .*additive: .*disagree"):
        per_sample_grad_norms(model, handle, _data(n=4), lam=0.0)


def test_probes_switch_to_eager_attention_and_back():
    # fused (sdpa) attention has no double backward; the probes run eager and restore the model's choice
    model = tiny_lora(r=2)  # sdpa by default
    handle = apply_lora_dropout(model, LoraDropoutConfig(dropout_rate=P))
    assert model.config._attn_implementation == "sdpa"
    hvp, dim = hessian_hvp(model, handle, _data())
    v = np.ones(dim)
    assert np.isfinite(hvp(v)).all()
    assert model.config._attn_implementation == "sdpa"


def _state(model, handle):
    return {
        "training": [m.training for m in model.modules()],
        "requires_grad": [p.requires_grad for p in model.parameters()],
        "params": [p.detach().clone() for p in model.parameters()],
        "hooks": sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules()),
        "plain_step": handle._plain_step,
    }


def test_run_probes_table_and_model_left_as_found():
    model, handle = _lora()
    data = _data()
    batch = _model_inputs(next(data.batches(len(data))))
    model.eval()
    with torch.no_grad():
        before_logits = model(**batch).logits
    model.train()
    model.base_model.model.classifier.eval()  # a mixed train/eval state must come back as it was
    before = _state(model, handle)

    table = run_probes(model, handle, data, batch_size=5)

    after = _state(model, handle)
    assert after["training"] == before["training"] and after["requires_grad"] == before["requires_grad"]
    assert after["hooks"] == before["hooks"] and after["plain_step"] == before["plain_step"]
    for a, b in zip(after["params"], before["params"], strict=True):
        assert torch.equal(a, b)
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(**batch).logits, before_logits)

    assert list(table.columns) == TABLES["probes"].column_names
    quantities = [
        "lipschitz_max",
        "lipschitz_q99",
        "lipschitz_mean",
        "hessian_min_eig",
        "hessian_max_eig",
        "grad_norm",
    ]
    assert sorted(zip(table["quantity"], table["space"], strict=True)) == sorted(
        (q, s) for q in quantities for s in SPACES
    )
    assert np.isfinite(table["value"]).all() and (table["n"] == len(data)).all()
    for space in SPACES:
        row = table[table["space"] == space].set_index("quantity")
        assert (
            row.loc["lipschitz_max", "value"]
            >= row.loc["lipschitz_q99", "value"]
            >= row.loc["lipschitz_mean", "value"]
        )
        assert row.loc["hessian_min_eig", "value"] < row.loc["hessian_max_eig", "value"]
        assert np.isfinite(row.loc["lipschitz_mean", "stderr"]) and np.isnan(
            row.loc["lipschitz_max", "stderr"]
        )
        assert row.loc["hessian_min_eig", "iterations"] > 0 and np.isfinite(
            row.loc["hessian_min_eig", "residual"]
        )
        assert np.isnan(row.loc["hessian_min_eig", "lam"]) and row.loc["grad_norm", "lam"] == 1.0
        assert row["converged"].all()  # Lanczos converged (tol 1e-3); the other rows are exact


def test_run_probes_records_lanczos_convergence_and_the_hessian_subset(monkeypatch):
    import functools

    import lora_dropout.probes.measure as probes

    model, handle = _lora()
    data = _data()
    # the low-rank tiny Hessian converges in one restart of the default 20 vectors; 3 vectors do not
    monkeypatch.setattr(probes, "lanczos_extremes", functools.partial(lanczos_extremes, ncv=3))
    with pytest.warns(RuntimeWarning, match="did not reach"):
        table = run_probes(model, handle, data, spaces=("delta_w",), tol=1e-12, maxiter=1, batch_size=6,
                           hessian_data=data.subset(range(5)))
    row = table.set_index("quantity")
    assert not row.loc["hessian_min_eig", "converged"] and not row.loc["hessian_max_eig", "converged"]
    assert row.loc["hessian_min_eig", "residual"] > 0
    assert row.loc[["lipschitz_max", "lipschitz_q99", "lipschitz_mean", "grad_norm"], "converged"].all()
    assert (row.loc[["lipschitz_max", "lipschitz_mean", "grad_norm"], "n"] == len(data)).all()
    assert (row.loc[["hessian_min_eig", "hessian_max_eig"], "n"] == 5).all()


def _scale_b(model, c):
    """Multiply every LoRA B factor (AdaLoRA's P) of ``model`` by ``c``, by parameter name."""
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.mul_(c)
    return model


@pytest.mark.parametrize(("kind", "rescale"), [("lora", False), ("adalora", False), ("lora", True)])
def test_expected_hypothesis_is_the_unmasked_probe_of_a_copy_with_b_times_the_mean_mask(kind, rescale):
    """hypothesis="expected" probes == unmasked probes of an independently built model with B * c.

    c = E[m_B m_A] = (1 - p)^2 without rescale and 1 with it, computed here from p, not from the handle.
    """
    c = 1.0 if rescale else (1 - P) ** 2
    config = LoraDropoutConfig(dropout_rate=P, rescale=rescale)

    def build():
        if kind == "lora":
            return _eager(tiny_lora(r=2, layers_to_transform=[0]).double())
        return _eager(tiny_adalora().double())

    model = build()
    handle = apply_lora_dropout(model, config)
    copy = _scale_b(build(), c)
    copy_handle = apply_lora_dropout(copy, config)
    data = _data()
    expected = run_probes(model, handle, data, batch_size=5, hypothesis="expected")
    reference = run_probes(copy, copy_handle, data, batch_size=5)
    unmasked = run_probes(model, handle, data, batch_size=5)
    assert set(expected["hypothesis"]) == {"expected"} and set(unmasked["hypothesis"]) == {"unmasked"}
    assert list(expected.columns) == TABLES["probes"].column_names
    key = ["quantity", "space"]
    e, ref, u = (t.set_index(key).sort_index() for t in (expected, reference, unmasked))
    np.testing.assert_allclose(e["value"], ref["value"], rtol=1e-6, atol=1e-9)
    if not rescale:  # the scale matters: the unmasked model's probes are different
        assert not np.allclose(e["value"], u["value"], rtol=1e-3)
    else:
        np.testing.assert_allclose(e["value"], u["value"], rtol=1e-6, atol=1e-9)
    with pytest.raises(ValueError, match="hypothesis"):
        run_probes(model, handle, data, hypothesis="masked")
