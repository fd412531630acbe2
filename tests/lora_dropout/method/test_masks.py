import torch
from scipy.stats import binomtest

from lora_dropout.method.masks import MaskLayout, Site, combine, hash32, row_hashes, sample_keep, split_sites


def test_hash32_is_a_bijection_on_a_block_and_stays_in_32_bits():
    x = torch.arange(0, 1 << 16, dtype=torch.int64)
    h = hash32(x)
    assert h.unique().numel() == x.numel()
    assert int(h.min()) >= 0 and int(h.max()) < 2**32
    # inputs differing above bit 32 are folded in by `combine`, not lost
    big = torch.tensor([5, 5 + (1 << 40)])
    assert combine(torch.zeros(2, dtype=torch.int64), big).unique().numel() == 2


def _keep(p, seed=0, rows=2000):
    layout = MaskLayout([Site("a", 32, 24), Site("b", 16, 8)])
    keys = torch.arange(rows)
    h = row_hashes(seed=seed, stream=1, step=0, keys=keys, instances=torch.zeros_like(keys))
    return layout, sample_keep(layout.feature_hash(torch.device("cpu")), h, p)


def test_keep_frequency_is_one_minus_p_within_a_binomial_interval():
    for p in (0.1, 0.5, 0.9):
        _, keep = _keep(p)
        ci = binomtest(int(keep.sum()), keep.numel(), 1 - p).proportion_ci(0.999)
        assert ci.low <= 1 - p <= ci.high, (p, keep.float().mean())


def test_entries_are_uncorrelated_across_rows_and_features():
    _, keep = _keep(0.5, rows=4000)
    k = keep.float() - 0.5
    # neighbouring rows and neighbouring features: correlation ~ N(0, 1/sqrt(n)) for independent bits
    row_corr = (k[1:] * k[:-1]).mean() / 0.25
    feat_corr = (k[:, 1:] * k[:, :-1]).mean() / 0.25
    assert abs(float(row_corr)) < 4 / keep[1:].numel() ** 0.5
    assert abs(float(feat_corr)) < 4 / keep[:, 1:].numel() ** 0.5


def test_seed_decides_the_masks():
    _, a = _keep(0.3, seed=1)
    _, b = _keep(0.3, seed=1)
    _, c = _keep(0.3, seed=2)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert 0.4 < (a == c).float().mean() < 0.7  # independent streams agree on ~p^2 + (1-p)^2 = 0.58


def test_split_sites_returns_views_in_layout_order():
    layout, keep = _keep(0.3, rows=3)
    parts = split_sites(keep, layout)
    assert [tuple(t.shape) for t in parts["a"]] == [(3, 32), (3, 24)]
    assert [tuple(t.shape) for t in parts["b"]] == [(3, 16), (3, 8)]
    assert torch.equal(parts["b"][1], keep[:, -8:])


def test_token_scope_has_a_fresh_mask_per_position():
    layout = MaskLayout([Site("a", 64, 64)])
    h = row_hashes(seed=0, stream=1, step=0, keys=torch.arange(4), instances=torch.zeros(4, dtype=torch.int64))
    keep = sample_keep(layout.feature_hash(torch.device("cpu")), h, 0.5, seq_len=6)
    assert keep.shape == (4, 6, 128)
    assert not torch.equal(keep[:, 0], keep[:, 1])
