"""Posterior sampling for the PAC-Bayes dropout certificate (docs/certificate.md).

The batched, per-example posterior draws are held against a loop over explicitly perturbed copies
of the model; the noise against its distribution; the squared distances against a direct sum.
"""

import copy

import numpy as np
import pytest
import torch
from peft import get_peft_model_state_dict
from scipy import stats

from lora_dropout import LoraDropoutConfig, apply_lora_dropout, get_lora_dropout
from lora_dropout.certify.noise import posterior_noise, standard_normal
from lora_dropout.certify.posterior import (
    posterior_logits,
    posterior_logits_over_grid,
    posterior_masks,
    posterior_parameters,
    posterior_sampling,
)
from lora_dropout.certify.prior_distance import factor_and_head_sq_dist
from tests.tiny import tiny_adalora, tiny_batch, tiny_lora

SIDS = [10, 3, 7, 42]
LEVEL = (
    1e-6  # two-sided level of each statistical check: the hash is fixed, so a check passes or fails for good
)


def _model(**cfg):
    model = tiny_lora().double()  # init_lora_weights=False: B != 0; float64 for tight comparisons
    apply_lora_dropout(model, LoraDropoutConfig(**{"dropout_rate": 0.3, "seed": 3, **cfg}))
    return model


def _batch(sids=SIDS):
    batch = tiny_batch(len(sids))
    batch["sample_id"] = torch.tensor(sids)
    return batch


def _explicit_member(model, batch, b, d, *, std, seed, perturb=("lora", "head")):
    """Reference: copy the model, add eps to its parameters in place, one example, one member forward."""
    sid = int(batch["sample_id"][b])
    clone = copy.deepcopy(model)
    # Q's masks are per example whatever scope training used: an example-scope handle on the copy
    handle = apply_lora_dropout(clone, get_lora_dropout(model).config.replace(mask_scope="example"))
    with torch.no_grad():
        for name, param in clone.named_parameters():
            role = (
                "lora"
                if (".lora_A." in name or ".lora_B." in name)
                else "head"
                if ".modules_to_save." in name
                else None
            )
            if role in perturb:
                eps = posterior_noise(
                    name,
                    param.shape,
                    keys=[sid],
                    draws=1,
                    first_draw=d,
                    posterior_std=std[name] if isinstance(std, dict) else std,
                    seed=seed,
                    dtype=param.dtype,
                )
                param.add_(eps[0, 0])
        # the certificate's masks (their law is checked against a computation by hand below)
        masks = posterior_masks(handle, torch.tensor([sid]), draws=1, first_draw=d)
        clone.eval()
        with handle.use(masks):
            out = clone(
                input_ids=batch["input_ids"][b : b + 1], attention_mask=batch["attention_mask"][b : b + 1]
            )
    return out.logits[0]


@pytest.mark.parametrize("cfg", [{}, {"dropout_rate": 0.5, "mask_scope": "batch", "rescale": True}])
def test_batched_draws_equal_a_loop_over_explicitly_perturbed_copies(cfg):
    model, batch = _model(**cfg), _batch()
    std, seed, k = 0.2, 11, 3
    got = posterior_logits(model, batch, posterior_std=std, draws=k, seed=seed)
    assert got.shape == (k, len(SIDS), 3)
    expected = torch.stack(
        [
            torch.stack([_explicit_member(model, batch, b, d, std=std, seed=seed) for b in range(len(SIDS))])
            for d in range(k)
        ]
    )
    torch.testing.assert_close(got, expected)  # float64: rtol = atol = 1e-7
    # the perturbation is visible at all (else the comparison above proves nothing)
    assert (got - posterior_logits(model, batch, posterior_std=0.0, draws=k, seed=seed)).abs().max() > 1e-2


def test_a_std_per_tensor_equals_a_loop_over_copies_perturbed_tensor_by_tensor():
    model, batch = _model(), _batch()
    factors, head = posterior_parameters(model)
    std = {name: 0.05 * (i + 1) for i, name in enumerate([*factors, *head])}  # every tensor its own std
    got = posterior_logits(model, batch, posterior_std=std, draws=2, seed=4)
    expected = torch.stack(
        [torch.stack([_explicit_member(model, batch, b, d, std=std, seed=4) for b in range(len(SIDS))])
         for d in range(2)]
    )
    torch.testing.assert_close(got, expected)
    one = posterior_logits(model, batch, posterior_std=0.05, draws=2, seed=4)
    assert (got - one).abs().max() > 1e-3  # the per-tensor stds are used, not one of them
    with pytest.raises(ValueError, match="no std for"):
        posterior_logits(model, batch, posterior_std={next(iter(std)): 0.1}, draws=1)


def test_the_head_is_perturbed_not_only_the_lora_factors():
    model, batch = _model(), _batch()
    names = set(posterior_parameters(model)[1])
    assert names == {n for n, _ in model.named_parameters() if ".modules_to_save." in n} and names
    got = posterior_logits(model, batch, posterior_std=0.2, draws=2, seed=5)
    lora_only = torch.stack(
        [
            torch.stack(
                [_explicit_member(model, batch, b, d, std=0.2, seed=5, perturb=("lora",)) for b in range(4)]
            )
            for d in range(2)
        ]
    )
    assert (got - lora_only).abs().max() > 1e-3  # the head's eps changes the logits


@pytest.mark.parametrize("cfg", [{}, {"rescale": True}])
def test_zero_std_is_the_lora_dropout_member_under_the_posterior_masks(cfg):
    model, batch = _model(**cfg), _batch()
    got = posterior_logits(model, batch, posterior_std=0.0, draws=4, seed=9)
    handle = get_lora_dropout(model)
    inputs = {k: v for k, v in batch.items() if k not in ("labels", "sample_id")}
    model.eval()
    with torch.no_grad(), handle.use(posterior_masks(handle, torch.tensor(SIDS), draws=4)):
        tiled = {k: v.repeat(4, *([1] * (v.dim() - 1))) for k, v in inputs.items()}  # draw-major rows
        members = model(**tiled).logits.reshape(4, len(SIDS), -1)
    torch.testing.assert_close(got, members, rtol=0, atol=1e-12)
    assert not torch.allclose(members[0], members[1])  # the masks matter, so the keys were matched


def test_posterior_masks_are_example_scope_masks_of_their_own_stream():
    from lora_dropout.method.masks import CERTIFY_STREAM, EVAL_STREAM, TRAIN_STREAM, row_hashes, sample_keep

    handle = get_lora_dropout(_model())
    keys = torch.tensor(SIDS)
    got = posterior_masks(handle, keys, draws=3, first_draw=2)
    # the documented law, computed here: keyed by (seed, stream, sample id, draw), time coordinate 0
    h = row_hashes(seed=handle.config.seed, stream=CERTIFY_STREAM, step=0, keys=keys.repeat(3),
                   instances=torch.arange(2, 5).repeat_interleave(len(SIDS)))
    keep = sample_keep(handle.layout.feature_hash(keys.device), h, handle.config.dropout_rate)
    flat = torch.cat([torch.cat([m.reshape(m.shape[0], -1) for m in got.masks[site]], dim=1) for site in got.masks],
                     dim=1)
    torch.testing.assert_close(flat, keep.to(flat.dtype) * handle.config.mask_value, rtol=0, atol=0)
    # never the masks of training or of its evaluations (the test-time ensemble)
    for stream in (TRAIN_STREAM, EVAL_STREAM):
        assert stream != CERTIFY_STREAM
    ensemble = handle.sample(4, n_instances=3, first_instance=2, keys=keys, train=False)
    assert any(not torch.equal(g, r) for site in got.masks for g, r in zip(got.masks[site], ensemble.masks[site],
                                                                         strict=True))


def test_draws_do_not_depend_on_batch_order_size_or_chunking():
    model, batch = _model(), _batch()
    full = posterior_logits(model, batch, posterior_std=0.1, draws=4, seed=1)
    perm = [2, 0, 3, 1]
    shuffled = posterior_logits(
        model, {k: v[perm] for k, v in batch.items()}, posterior_std=0.1, draws=4, seed=1
    )
    torch.testing.assert_close(shuffled, full[:, perm])
    for b in (1, 3):
        alone = posterior_logits(
            model, {k: v[b : b + 1] for k, v in batch.items()}, posterior_std=0.1, draws=4, seed=1
        )
        torch.testing.assert_close(alone[:, 0], full[:, b])
    chunked = posterior_logits(model, batch, posterior_std=0.1, draws=4, seed=1, max_draws_per_forward=3)
    torch.testing.assert_close(chunked, full)
    tail = posterior_logits(model, batch, posterior_std=0.1, draws=2, seed=1, first_draw=2)
    torch.testing.assert_close(tail, full[2:])
    # the noise itself is bit-identical whatever the other keys
    name = next(iter(posterior_parameters(model)[0]))
    a = posterior_noise(name, (4, 16), keys=[5, 6, 7], draws=2, posterior_std=1.0, seed=0)
    b = posterior_noise(name, (4, 16), keys=[7], draws=2, posterior_std=1.0, seed=0)
    assert torch.equal(a[:, 2], b[:, 0])


def test_a_grid_of_stds_equals_one_call_per_std_and_draws_the_noise_once_per_chunk(monkeypatch):
    import lora_dropout.certify.noise as noise_mod

    model, batch = _model(), _batch()
    grid = (0.0, 0.05, 0.2)
    calls = []
    original = noise_mod.standard_normal
    monkeypatch.setattr(noise_mod, "standard_normal", lambda rows, n: calls.append(n) or original(rows, n))
    got = posterior_logits_over_grid(model, batch, posterior_stds=grid, draws=4, seed=2, max_draws_per_forward=3)
    n_params = len(calls)
    assert n_params == 2 * sum(len(group) for group in posterior_parameters(model))  # 2 chunks, each once
    assert got.shape == (3, 4, len(SIDS), 3)
    for g, sigma in enumerate(grid):  # bit for bit: eps = sigma * z from the same z
        assert torch.equal(got[g], posterior_logits(model, batch, posterior_std=sigma, draws=4, seed=2))
    assert not torch.allclose(got[1], got[2])  # the std matters
    with pytest.raises(ValueError, match="posterior_stds is empty"):
        posterior_logits_over_grid(model, batch, posterior_stds=(), draws=2)


def test_draws_seeds_examples_and_parameters_get_different_noise():
    model = _model(dropout_rate=0.0)  # no masks: any difference between draws comes from eps
    batch = _batch()
    batch["input_ids"][:] = batch["input_ids"][0]  # identical inputs: differences come from the keys
    z = posterior_logits(model, batch, posterior_std=0.1, draws=2, seed=1)
    assert not torch.allclose(z[0], z[1])  # draws differ
    assert not torch.allclose(z[0, 0], z[0, 1])  # examples differ
    assert not torch.allclose(
        z, posterior_logits(model, batch, posterior_std=0.1, draws=2, seed=2)
    )  # seeds differ
    torch.testing.assert_close(
        z, posterior_logits(model, batch, posterior_std=0.1, draws=2, seed=1), rtol=0, atol=0
    )
    names = list(posterior_parameters(model)[0])
    a, b = (posterior_noise(n, (4, 16), keys=[0], draws=1, posterior_std=1.0, seed=0) for n in names[:3:2])
    assert not torch.allclose(a, b)  # parameters differ (two lora_A of the same shape)


def test_noise_is_gaussian_with_std_sigma():
    sigma, shape = 0.3, (7, 13)  # odd entry count: the last Box-Muller pair is cut
    eps = posterior_noise("w", shape, keys=torch.arange(200), draws=5, posterior_std=sigma, seed=4)
    x = eps.reshape(1000, -1).numpy()
    n = x.size
    z_crit = stats.norm.isf(LEVEL / 2)
    assert abs(x.mean()) <= z_crit * sigma / np.sqrt(n)
    # (n - 1) s^2 / sigma^2 ~ chi^2(n - 1)
    chi = (n - 1) * x.var(ddof=1) / sigma**2
    assert stats.chi2.ppf(LEVEL / 2, n - 1) <= chi <= stats.chi2.isf(LEVEL / 2, n - 1), np.sqrt(x.var(ddof=1))
    assert stats.kstest(x.ravel() / sigma, "norm").pvalue > LEVEL
    # independence: neighbouring entries (same and adjacent Box-Muller pair), draws, and examples
    d = eps.reshape(5, 200, -1).numpy()
    for u, v in [(x[:, :-1], x[:, 1:]), (x[:, :-2], x[:, 2:]), (d[:-1], d[1:]), (d[:, :-1], d[:, 1:])]:
        r = np.corrcoef(u.ravel(), v.ravel())[0, 1]
        assert abs(r) <= z_crit / np.sqrt(u.size), r


def test_standard_normal_rows_are_prefix_stable():
    rows = torch.tensor([1, 2, 3], dtype=torch.int64)
    assert torch.equal(standard_normal(rows, 9), standard_normal(rows, 20)[:, :9])


def test_model_is_restored_after_sampling():
    model, batch = _model(), _batch()
    model.train()
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    before = {n: p.clone() for n, p in model.named_parameters()}
    model.eval()
    plain = model(**inputs).logits
    model.train()
    with posterior_sampling(model, batch["sample_id"], posterior_std=0.5, draws=2) as rows:
        assert rows == 8 and not model.training
    assert model.training
    model.eval()
    torch.testing.assert_close(model(**inputs).logits, plain, rtol=0, atol=0)
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())


def test_factor_and_head_sq_dist_against_a_direct_sum():
    model = _model()
    prior_full = {n: p.detach().clone() for n, p in model.state_dict().items()}
    prior_file = {k: v.clone() for k, v in get_peft_model_state_dict(model).items()}
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():  # "training" moves the factors and the head
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=g, dtype=p.dtype))
    params = {n: p.detach() for n, p in model.named_parameters()}
    factor = sum(
        float(((params[n] - prior_full[n]) ** 2).sum()) for n in params if ".lora_A." in n or ".lora_B." in n
    )
    head = sum(float(((params[n] - prior_full[n]) ** 2).sum()) for n in params if ".modules_to_save." in n)
    assert factor > 0 and head > 0
    for prior in (prior_full, prior_file):  # peft's state_dict names and its adapter-file names
        got = factor_and_head_sq_dist(model, prior)
        np.testing.assert_allclose([got.factor, got.head], [factor, head], rtol=1e-12)
    with pytest.raises(KeyError, match="classifier"):
        factor_and_head_sq_dist(model, {k: v for k, v in prior_full.items() if "classifier" not in k})
    bad = dict(prior_full)
    key = next(k for k in bad if ".lora_B." in k)
    bad[key] = bad[key][:, :1]
    with pytest.raises(ValueError, match="shape"):
        factor_and_head_sq_dist(model, bad)


def test_adalora_is_a_clear_error():
    model = tiny_adalora()
    apply_lora_dropout(model)
    batch = _batch()
    with pytest.raises(ValueError, match="AdaLoRA is not supported"):
        posterior_logits(model, batch, posterior_std=0.1, draws=1)


def test_bad_arguments_are_clear_errors():
    model, batch = _model(), _batch()
    with pytest.raises(ValueError, match="sample_id"):
        posterior_logits(
            model, {k: v for k, v in batch.items() if k != "sample_id"}, posterior_std=0.1, draws=1
        )
    with pytest.raises(ValueError, match="posterior_std"):
        posterior_logits(model, batch, posterior_std=-0.1, draws=1)
    with pytest.raises(ValueError, match="draws"):
        posterior_logits(model, batch, posterior_std=0.1, draws=0)
    model.base_model.model.bert.embeddings.word_embeddings.weight.requires_grad_(True)
    with pytest.raises(ValueError, match="word_embeddings"):
        posterior_logits(model, batch, posterior_std=0.1, draws=1)
