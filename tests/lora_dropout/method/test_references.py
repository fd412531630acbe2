"""Independent references for the numbers the toolkit publishes (issue 11).

Each test recomputes a quantity by a different route (numpy in float64, an explicit loop, transformers'
own loss, vanilla peft, an exact enumeration of every mask) and compares. Tolerances follow from the
dtype the guarded code computes in, never from one machine's result.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from peft import LoraConfig, get_peft_model
from transformers.loss.loss_utils import ForCausalLMLoss

from lora_dropout import LoraDropoutConfig, apply_lora_dropout
from lora_dropout.method.apply import MaskSet
from lora_dropout.method.losses import IGNORE_INDEX, causal_lm_loss
from lora_dropout.method.objective import mean_loss, n_instance_backward
from lora_dropout.runs.config import TrainConfig
from lora_dropout.runs.evaluate import SplitLogits, sample_frame, summary_rows
from lora_dropout.runs.metrics import N_BINS
from lora_dropout.runs.train import make_optimizer, trainable_parameters
from tests.tiny import tiny_batch, tiny_lora

EPS32 = float(np.finfo(np.float32).eps)
EPS64 = float(np.finfo(np.float64).eps)


# -- a. the test-time ensemble (Eq. 8) and the rows derived from it ------------------------------------


def _np_softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def _asymmetric_split(average: str, dtype=torch.float64) -> SplitLogits:
    """N=3 members, n=4 examples, C=5 classes (all sizes distinct, so an averaged axis mix-up shows);
    members differ strongly and the class distributions are far from uniform."""
    g = torch.Generator().manual_seed(11)
    n_members, n, c = 3, 4, 5
    base = torch.randn(n, c, generator=g, dtype=torch.float64) * 2.0
    member = base + torch.randn(n_members, n, c, generator=g, dtype=torch.float64) * 3.0
    member[1, :, 0] += 4.0  # one member prefers class 0 everywhere
    det = base + 0.5 * torch.randn(n, c, generator=g, dtype=torch.float64)
    labels = np.array([0, 3, 4, 2])
    return SplitLogits("test", np.array([10, 11, 12, 13]), labels, member.to(dtype), det.to(dtype), average)


def _tol(logits: torch.Tensor) -> float:
    """Absolute error of a log-softmax / log-mean-exp of these values: a few ulps of their magnitude."""
    eps = torch.finfo(logits.dtype).eps
    return 32 * eps * (1.0 + float(logits.abs().max()))


def _reference_ensemble_probs(split: SplitLogits) -> np.ndarray:
    """``o(x)`` (n, C) by an explicit loop over members, in float64 numpy."""
    z = split.member_logits.double().numpy()
    if split.average == "probs":
        total = np.zeros(z.shape[1:])
        for r in range(z.shape[0]):
            total += _np_softmax(z[r])
        return total / z.shape[0]
    mean = np.zeros(z.shape[1:])
    for r in range(z.shape[0]):
        mean += z[r]
    return _np_softmax(mean / z.shape[0])


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("average", ["probs", "logits"])
def test_ensemble_log_probs_against_an_explicit_loop_over_members(average, dtype):
    split = _asymmetric_split(average, dtype)
    ref = np.log(_reference_ensemble_probs(split))
    got = split.ensemble_log_probs()
    assert got.shape == (4, 5)
    np.testing.assert_allclose(got.double().numpy(), ref, rtol=0, atol=_tol(split.member_logits))
    # the two averages really differ on this case (the check above can tell them apart)
    other = _asymmetric_split("logits" if average == "probs" else "probs", dtype)
    assert np.abs(np.log(_reference_ensemble_probs(other)) - ref).max() > 1e-2


def _ece(q: np.ndarray, labels: np.ndarray) -> float:
    """ECE by a plain loop over 15 equal-width bins (lo, hi], confidence 0 in the first bin."""
    conf, correct = q.max(axis=1), (q.argmax(axis=1) == labels).astype(float)
    total = 0.0
    for b in range(N_BINS):
        lo, hi = b / N_BINS, (b + 1) / N_BINS
        members = [i for i in range(len(conf)) if (lo < conf[i] <= hi) or (b == 0 and conf[i] == 0.0)]
        if members:
            total += len(members) / len(conf) * abs(correct[members].mean() - conf[members].mean())
    return total


def _reference_metrics(q: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    n = len(labels)
    nll = float(np.mean([-math.log(q[i, labels[i]]) for i in range(n)]))
    brier = float(np.mean([sum((q[i, k] - (k == labels[i])) ** 2 for k in range(q.shape[1])) for i in range(n)]))
    return {"risk": nll, "nll": nll, "accuracy": float(np.mean(q.argmax(axis=1) == labels)), "brier": brier,
            "ece": _ece(q, labels)}


@pytest.mark.parametrize("average", ["probs", "logits"])
def test_summary_and_per_sample_rows_against_direct_computation(average):
    split = _asymmetric_split(average)
    labels = split.labels
    z = split.member_logits.numpy()
    q_ens = _reference_ensemble_probs(split)
    members = [_reference_metrics(_np_softmax(z[r]), labels) for r in range(z.shape[0])]
    expected = {
        "deterministic": _reference_metrics(_np_softmax(split.deterministic_logits.numpy()), labels),
        "member_mean": {k: float(np.mean([m[k] for m in members])) for k in members[0]},
        "ensemble": _reference_metrics(q_ens, labels),
    }
    rows = {row["predictor"]: row for row in summary_rows(split)}
    assert set(rows) == set(expected)
    tol = _tol(split.member_logits)
    for predictor, ref in expected.items():
        assert rows[predictor]["n"] == 4 and rows[predictor]["split"] == "test"
        for key, value in ref.items():
            np.testing.assert_allclose(rows[predictor][key], value, rtol=0, atol=tol, err_msg=f"{predictor} {key}")
    # not vacuous: the ensemble is not the average member, and accuracy is not all-or-nothing
    assert rows["member_mean"]["nll"] - rows["ensemble"]["nll"] > 1e-2
    assert 0 < rows["ensemble"]["accuracy"] < 1

    frame = sample_frame(split).set_index(["predictor", "instance", "sample_id"]).sort_index()
    for i, sid in enumerate(split.sample_ids):
        ens = frame.loc[("ensemble", -1, sid)]
        np.testing.assert_allclose(ens["loss"], -math.log(q_ens[i, labels[i]]), rtol=0, atol=tol)
        np.testing.assert_allclose(ens["confidence"], q_ens[i].max(), rtol=0, atol=tol)
        assert bool(ens["correct"]) == bool(q_ens[i].argmax() == labels[i])
        for r in range(z.shape[0]):
            q_r = _np_softmax(z[r, i])
            row = frame.loc[("member", r, sid)]
            np.testing.assert_allclose(row["loss"], -math.log(q_r[labels[i]]), rtol=0, atol=tol)
            assert bool(row["correct"]) == bool(q_r.argmax() == labels[i])


# -- b. the per-example causal-LM loss ------------------------------------------------------------------


def _lm_case(seed=0, vocab=7):
    """Logits (4, 6, V) and labels with 1, 2, 3 and 5 supervised next tokens (after the shift)."""
    g = torch.Generator().manual_seed(seed)
    b, t = 4, 6
    logits = torch.randn(b, t, vocab, generator=g) * 3.0
    labels = torch.randint(0, vocab, (b, t), generator=g)
    supervised = [[5], [1, 4], [2, 3, 5], [1, 2, 3, 4, 5]]  # positions t >= 1 that carry a target
    mask = torch.ones(b, t, dtype=torch.bool)
    for i, pos in enumerate(supervised):
        mask[i, pos] = False
    mask[:, 0] = False  # position 0 has a label, but no position predicts it: never counted
    labels = labels.masked_fill(mask, IGNORE_INDEX)
    return logits, labels, [len(p) for p in supervised]


def test_causal_lm_loss_is_the_per_example_mean_of_transformers_token_loss():
    logits, labels, counts = _lm_case()
    got = causal_lm_loss(logits, labels)
    assert got.shape == (4,) and got.dtype == torch.float32
    for i in range(4):
        # transformers' own causal-LM loss on example i alone: the mean over its supervised tokens
        hf = ForCausalLMLoss(logits[i:i + 1], labels[i:i + 1], vocab_size=logits.shape[-1])
        # the token losses as LlamaForCausalLM computes them (shifted, ignore_index=-100), averaged by hand
        tok = F.cross_entropy(logits[i, :-1].double(), labels[i, 1:], ignore_index=IGNORE_INDEX, reduction="none")
        assert int((labels[i, 1:] != IGNORE_INDEX).sum()) == counts[i]
        by_hand = tok.sum() / counts[i]
        # float32 log-softmax of values up to |z|: error a few ulps of |z|
        tol = 32 * EPS32 * (1.0 + float(logits[i].abs().max()))
        torch.testing.assert_close(got[i], hf, rtol=0, atol=tol)
        torch.testing.assert_close(got[i].double(), by_hand, rtol=0, atol=tol)
    # not vacuous: the batch-level token mean (transformers' reduction) is a different number
    batch_mean = ForCausalLMLoss(logits, labels, vocab_size=logits.shape[-1])
    assert abs(float(got.mean() - batch_mean)) > 1e-2


def test_causal_lm_loss_matches_the_models_own_loss_per_example():
    from tests.tiny import tiny_causal_lm, tiny_tokenizer

    tok = tiny_tokenizer()
    model = tiny_causal_lm(tok, b_scale=5.0).double().eval()
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(4, len(tok), (3, 8), generator=g)
    labels = ids.clone()
    labels[0, :5] = IGNORE_INDEX  # 3 supervised tokens
    labels[1, :7] = IGNORE_INDEX  # 1
    labels[2, :2] = IGNORE_INDEX  # 6
    with torch.no_grad():
        got = causal_lm_loss(model(input_ids=ids), labels)
        own = torch.stack([model(input_ids=ids[i:i + 1], labels=labels[i:i + 1]).loss for i in range(3)])
    # both upcast float64 logits to float32 before the cross-entropy
    torch.testing.assert_close(got, own.float(), rtol=8 * EPS32, atol=8 * EPS32)


def test_causal_lm_loss_without_supervised_tokens_is_an_error():
    logits, labels, _ = _lm_case()
    labels[2] = IGNORE_INDEX
    with pytest.raises(ValueError, match="no supervised tokens"):
        causal_lm_loss(logits, labels)
    # a label only at position 0 is no supervised token either: nothing predicts it
    logits, labels, _ = _lm_case()
    labels[1] = IGNORE_INDEX
    labels[1, 0] = 3
    with pytest.raises(ValueError, match="no supervised tokens"):
        causal_lm_loss(logits, labels)


# -- c. dropout_rate = 0, N = 1 is vanilla peft, bit for bit --------------------------------------------


def _vanilla_step(model, batch, tc, seed):
    optimizer, _ = make_optimizer(model, tc)
    torch.manual_seed(seed)  # the base model's dropout draws from the global RNG
    loss = model(**batch).loss  # transformers' own classification loss (mean cross-entropy)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    torch.nn.utils.clip_grad_norm_(trainable_parameters(model), tc.max_grad_norm)
    optimizer.step()
    return loss.detach(), grads


def _lora_dropout_step(model, batch, tc, seed):
    """One step as `lora_dropout.runs.train.fit` does it."""
    optimizer, _ = make_optimizer(model, tc)
    torch.manual_seed(seed)
    result = n_instance_backward(model, batch, step=0, epoch=0)
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    torch.nn.utils.clip_grad_norm_(trainable_parameters(model), tc.max_grad_norm)
    optimizer.step()
    return result.loss, grads


@pytest.mark.parametrize("batch_size, seed", [(5, 2), (8, 0), (13, 4), (16, 1)])
def test_rate_zero_single_instance_is_vanilla_peft_bit_for_bit(batch_size, seed):
    """Loss, gradients and one clipped AdamW step of `fit` at p = 0, N = 1 against transformers' own loss.

    The batches are ones where summing the per-example losses in another order than torch's
    ``cross_entropy(reduction="mean")`` changes the last bit of the loss.
    """
    tc = TrainConfig(lr=1e-2, weight_decay=0.01, max_grad_norm=0.5)
    batch = {**tiny_batch(batch_size=batch_size, seed=seed), "sample_id": torch.arange(batch_size)}
    # rsLoRA with r = 3: scaling 6 / sqrt(3) is no power of two, so every reordering of it rounds differently
    vanilla = tiny_lora(r=3, use_rslora=True, dropout=0.1, b_scale=3.0)
    masked = tiny_lora(r=3, use_rslora=True, dropout=0.1, b_scale=3.0)
    assert vanilla.base_model.model.bert.encoder.layer[0].attention.self.query.scaling["default"] == 6 / math.sqrt(3)
    before = {n: p.detach().clone() for n, p in vanilla.named_parameters()}
    assert all(torch.equal(p, q) for p, q in zip(vanilla.parameters(), masked.parameters(), strict=True))
    apply_lora_dropout(masked, LoraDropoutConfig(dropout_rate=0.0, n_instances=1))
    vanilla.train()
    masked.train()
    loss_v, grads_v = _vanilla_step(vanilla, {k: v for k, v in batch.items() if k != "sample_id"}, tc, seed=5)
    loss_m, grads_m = _lora_dropout_step(masked, batch, tc, seed=5)
    assert loss_m.dtype == loss_v.dtype and torch.equal(loss_m, loss_v), (float(loss_m), float(loss_v))
    assert grads_v.keys() == grads_m.keys() and any("lora_A" in n for n in grads_v)
    for name in grads_v:
        assert torch.equal(grads_m[name], grads_v[name]), name
    for (name, p), q in zip(vanilla.named_parameters(), masked.parameters(), strict=True):
        assert torch.equal(p, q), name
    # not vacuous: the step moved every adapter factor
    assert all(not torch.equal(p, before[n]) for n, p in vanilla.named_parameters() if "lora_" in n)


def test_mean_loss_reduces_like_torchs_own_mean_cross_entropy():
    for n in (1, 2, 3, 5, 16, 17, 64, 257, 1000):
        g = torch.Generator().manual_seed(n)
        z = (torch.randn(n, 7, generator=g) * 3).requires_grad_()
        y = torch.randint(0, 7, (n,), generator=g)
        ours, theirs = mean_loss(F.cross_entropy(z, y, reduction="none")), F.cross_entropy(z, y)
        assert torch.equal(ours, theirs), n
        assert torch.equal(torch.autograd.grad(ours, z)[0], torch.autograd.grad(theirs, z)[0]), n


# -- d. rescale=True: the mean over every mask is the unmasked branch -----------------------------------


class _Tiny(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(3, 2)

    def forward(self, x):
        return self.lin(x)


def _tiny_linear_lora(seed=0):
    torch.manual_seed(seed)
    model = get_peft_model(_Tiny(), LoraConfig(r=2, lora_alpha=4, target_modules=["lin"], init_lora_weights=False))
    return model.double()


@pytest.mark.parametrize("rescale", [True, False])
def test_exact_mask_expectation_through_a_real_peft_layer(rescale):
    p = 0.3
    model = _tiny_linear_lora()
    handle = apply_lora_dropout(model, LoraDropoutConfig(dropout_rate=p, rescale=rescale))
    (site,) = handle.sites
    n_in, n_out = site.in_features, site.out_features
    assert (n_in, n_out) == (3, 2)
    # The values of a kept entry, as the sampler produces them, separately for each side.
    drawn = handle.sample(4096, n_instances=1, dtype=torch.float64)
    m_in, m_out = drawn.masks[site.name]
    kept_in, kept_out = m_in[m_in != 0].unique(), m_out[m_out != 0].unique()
    assert kept_in.numel() == 1 and kept_out.numel() == 1
    # ... and each entry is dropped with probability p (binomial: within 5 standard deviations)
    drops = torch.cat([m_in, m_out], dim=1) == 0
    assert abs(float(drops.double().mean()) - p) < 5 * math.sqrt(p * (1 - p) / drops.numel())
    # Every one of the 2^(in+out) masks, with its probability p^dropped (1-p)^kept.
    keeps = torch.tensor(list(itertools.product([0.0, 1.0], repeat=n_in + n_out)), dtype=torch.float64)
    dropped = (keeps == 0).sum(dim=1).double()
    weights = p ** dropped * (1 - p) ** (n_in + n_out - dropped)  # (32,)
    assert math.isclose(float(weights.sum()), 1.0, rel_tol=0, abs_tol=64 * EPS64)
    masks = MaskSet({site.name: (keeps[:, :n_in] * kept_in, keeps[:, n_in:] * kept_out)}, rows=len(keeps),
                    n_instances=len(keeps))
    x = torch.randn(4, n_in, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    layer = site.layer
    with torch.no_grad():
        base = layer.base_layer(x)  # (4, out)
        unmasked = x @ site.delta_weight().T  # the unmasked LoRA branch, dW as peft merges it
        branch = []
        for i in range(x.shape[0]):
            with handle.use(masks):
                branch.append(layer(x[i].expand(len(keeps), n_in)) - base[i])  # (32, out)
        mean = torch.stack([(weights[:, None] * b).sum(dim=0) for b in branch])  # (4, out)
        with handle.use_scale(handle.scale_for("expected")):
            expected_mode = layer(x) - base
    tol = 64 * EPS64 * float(base.abs().max() + unmasked.abs().max() / (1 - p) ** 2)
    target = unmasked if rescale else (1 - p) ** 2 * unmasked
    torch.testing.assert_close(mean, target, rtol=0, atol=tol)
    # the deterministic "expected" predictor is that same mean (scale 1 with rescale, (1-p)^2 without)
    torch.testing.assert_close(expected_mode, mean, rtol=0, atol=tol)
    assert unmasked.abs().min() > 1e-3  # not vacuous
