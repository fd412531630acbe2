"""The certificate's KL bound against the mask law the posterior sampling implements (docs/certificate.md).

``KL(Q || P) <= E_m [ sum over kept entries (theta - theta_P)^2 ] / (2 sigma^2) + ||head - head_P||^2 / (2 sigma^2)``
by joint convexity over the mask distribution that Q and P share. The test draws many masks with the
posterior's own sampling (`posterior_masks`), reads which columns of ``A`` and rows of ``B`` each draw keeps
off the LoRA layers' forward pass (the masked update ``dW_hat`` itself, not the mask tensors), averages the
kept squared differences, and compares with `bounds.formulas.dropout_kl` of the distances certify uses
(`factor_and_head_sq_dist`), at a tolerance of five Monte Carlo standard errors.

It fails when the KL's discount is not the keep probability of the implemented law (``(1 - p)^2``,
``2p - p^2``, ``p``), when the KL is scaled, when the head is left out of the distances, and when the
masks act on anything but the columns of ``A`` and the rows of ``B`` (the masked update is then not
``diag(m_B) B A diag(m_A)``).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from peft import get_peft_model_state_dict

from bounds.formulas import dropout_kl
from lora_dropout import LoraDropoutConfig, apply_lora_dropout
from lora_dropout.certify.posterior import posterior_masks
from lora_dropout.certify.prior_distance import factor_and_head_sq_dist
from lora_dropout.method.peft_seam import adapter_file_names
from tests.tiny import tiny_lora

KEYS, DRAWS, SIGMA = 250, 8, 0.05


def _kept_from_forward(site, masks) -> tuple[torch.Tensor, torch.Tensor]:
    """``(m_A, m_B)`` per row, read off the layer's masked update on the input basis vectors.

    Row ``r``'s LoRA branch on ``e_j`` is ``scaling * diag(m_B) B A diag(m_A) e_j``; divided entrywise by
    ``scaling * (B A)`` it is the 0/1 matrix ``m_A[j] m_B[i]``, which must be exactly an outer product.
    """
    layer = site.layer
    eye = torch.eye(site.in_features, dtype=torch.float64).expand(masks.rows, -1, -1)  # (rows, in, in)
    delta = layer(eye) - layer.base_layer(eye)  # (rows, in: token j, out: i)
    dense = site.delta_weight().T  # (in, out): peft's scaling (B A)^T
    ratio = delta / dense
    kept_a, kept_b = ratio.abs().amax(dim=2).round(), ratio.abs().amax(dim=1).round()  # (rows, in), (rows, out)
    torch.testing.assert_close(ratio, kept_a[:, :, None] * kept_b[:, None, :], rtol=1e-9, atol=1e-9,
                               msg=f"{site.name}: the masked update is not diag(m_B) B A diag(m_A)")
    return kept_a, kept_b


@pytest.mark.parametrize("p", [0.3, 0.6])
def test_kl_bound_is_the_mean_kept_distance_under_the_implemented_mask_law(p):
    model = tiny_lora(seed=3).double()
    handle = apply_lora_dropout(model, LoraDropoutConfig(dropout_rate=p, n_instances=1, seed=7))
    model.eval()
    state = get_peft_model_state_dict(model)
    g = torch.Generator().manual_seed(11)
    prior = {k: v + 0.1 * torch.randn(v.shape, generator=g, dtype=v.dtype) for k, v in state.items()}
    dist = factor_and_head_sq_dist(model, prior)
    masks = posterior_masks(handle, torch.arange(KEYS), draws=DRAWS, dtype=torch.float64)
    sample = torch.zeros(masks.rows, dtype=torch.float64)  # sum over kept entries of (theta - theta_P)^2, per draw
    names = {id(p): n for n, p in model.named_parameters()}
    file_name = adapter_file_names(model)
    with torch.no_grad(), handle.use(masks):
        for site in handle.sites:
            a, b = site.factors()
            da = a - prior[file_name[names[id(a)]]]  # (r, in)
            db = b - prior[file_name[names[id(b)]]]  # (out, r)
            kept_a, kept_b = _kept_from_forward(site, masks)
            sample += kept_a @ (da**2).sum(dim=0) + kept_b @ (db**2).sum(dim=1)
    head = sum(float(((t - prior[k]) ** 2).sum()) for k, t in state.items() if ".lora_" not in k)
    assert head > 0 and dist.head == pytest.approx(head, rel=1e-12)
    two_var = 2.0 * SIGMA**2
    monte_carlo = (float(sample.mean()) + head) / two_var
    stderr = float(sample.std()) / np.sqrt(masks.rows) / two_var
    expected = float(dropout_kl(p, dist.factor, dist.head, SIGMA).total)
    assert abs(monte_carlo - expected) <= 5.0 * stderr, (monte_carlo, expected, stderr)
    # the test decides: the discounts a mistaken KL would use are many standard errors away
    for wrong in ((1 - p) ** 2, 2 * p - p**2, p):
        assert abs((wrong * dist.factor + head) / two_var - monte_carlo) > 20.0 * stderr, wrong
