"""Realised sparsity per module is consistent with 2p - p^2 (and with the masks' keep rate 1 - p)."""

import numpy as np
import pytest
import torch
from scipy.stats import binomtest

from lora_dropout import LoraDropoutConfig, apply_lora_dropout
from lora_dropout.runs.sparsity import module_sparsity
from tests.tiny import tiny_lora


@pytest.mark.parametrize("p", [0.1, 0.5])
def test_realised_sparsity_is_consistent_with_2p_minus_p2(p):
    handle = apply_lora_dropout(tiny_lora(), LoraDropoutConfig(dropout_rate=p, n_instances=4))
    frame = module_sparsity(handle, torch.arange(250), epoch=0)
    assert len(frame) == len(handle.sites) and (frame.n_masks == 1000).all()
    s = 2 * p - p * p
    for row in frame.itertuples():
        # each mask entry is Bernoulli(1 - p): the kept count is binomial
        kept = round(row.keep_in * row.n_masks * row.in_features)
        ci = binomtest(kept, row.n_masks * row.in_features, 1 - p).proportion_ci(0.999)
        assert ci.low <= 1 - p <= ci.high
        # dW_hat zeros: mean over 1000 independent masks; its spread is far below 0.02 for 16x16 layers
        assert abs(row.dw_zero_fraction - s) < 0.02, (row.module, row.dw_zero_fraction, s)
        assert row.nominal_sparsity == pytest.approx(s) and row.dw_norm > 0
    # the whole dW is dropped only if all 16 columns (or rows) are: (1 - (1-p^16)^2) is tiny here
    assert np.allclose(frame.nominal_all_dropped, 1 - (1 - p**16) ** 2)


def test_zero_rows_of_b_count_as_zeros_of_dw_hat():
    model = tiny_lora()
    handle = apply_lora_dropout(model, LoraDropoutConfig(dropout_rate=0.0))
    with torch.no_grad():
        handle.sites[0].layer.lora_B["default"].weight[:4] = 0.0  # 4 of 16 rows of dW are exactly zero
    frame = module_sparsity(handle, torch.arange(10), epoch=0).set_index("module")
    assert frame.loc[handle.sites[0].name, "dw_zero_fraction"] == pytest.approx(4 / 16)
    assert frame.loc[handle.sites[1].name, "dw_zero_fraction"] == pytest.approx(0.0)
