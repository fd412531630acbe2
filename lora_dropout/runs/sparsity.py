"""Realised sparsity of the training masks, per adapted module (docs/measurement.md, ``s``).

At an evaluation step the masks that the training stream gives a set of training examples in the
current epoch are drawn again (they are a pure function of seed, epoch, sample id and instance, see
`lora_dropout.method.masks`), and compared with what the paper's analysis assumes:

- keep fraction of the input-feature mask (columns of A) and of the output-feature mask (rows of B),
  nominally ``1 - p``;
- zero fraction of ``dW_hat = diag(m_B) B A diag(m_A)``, nominally ``s = 2p - p^2`` when ``B A`` has no
  zero entries (exact zeros of ``B A`` count as zeros of ``dW_hat`` too, so at initialisation, when
  ``B = 0``, the realised value is 1);
- the fraction of masks that zero the whole ``dW_hat`` (all of ``m_A`` or all of ``m_B`` dropped),
  nominally ``1 - (1 - p^in)(1 - p^out)``;
- ``||dW||_F`` of the unmasked update.
"""

from __future__ import annotations

import pandas as pd
import torch

from ..method.apply import LoraDropout


@torch.no_grad()
def module_sparsity(handle: LoraDropout, keys: torch.Tensor, *, epoch: int, step: int = 0,
                    n_instances: int | None = None) -> pd.DataFrame:
    """One row per site with the columns of the ``modules`` table (without ``step``).

    Parameters
    ----------
    handle : LoraDropout
    keys : Tensor of int, ``(K,)``
        Sample ids whose training masks are examined (``K * n_instances`` masks per site).
    epoch, step : int
        Time coordinates of the training masks (as in `LoraDropout.sample`).
    n_instances : int, optional
        Instances per example; default ``config.n_instances``.
    """
    cfg = handle.config
    n = n_instances or cfg.n_instances
    masks = handle.sample(len(keys), n_instances=n, keys=keys, epoch=epoch, step=step, train=True,
                          seq_len=1 if cfg.mask_scope.value == "token" else None)
    p = cfg.dropout_rate
    rows = []
    for site in handle.sites:
        m_in, m_out = (m.reshape(m.shape[0], -1) != 0 for m in masks.masks[site.name])  # (R, in), (R, out)
        dw = site.delta_weight().detach()
        nonzero = (dw != 0).to(torch.float32)
        # kept entries of dW_hat per mask: m_out^T [dW != 0] m_in
        kept = ((m_out.float() @ nonzero) * m_in.float()).sum(dim=1)  # (R,)
        size = dw.numel()
        all_dropped = (~m_in.any(dim=1)) | (~m_out.any(dim=1))
        rows.append({
            "module": site.name, "in_features": site.in_features, "out_features": site.out_features,
            "n_masks": int(m_in.shape[0]), "nominal_keep": 1.0 - p,
            "keep_in": float(m_in.float().mean()), "keep_out": float(m_out.float().mean()),
            "nominal_sparsity": cfg.sparsity, "dw_zero_fraction": float(1.0 - kept.mean() / size),
            "nominal_all_dropped": 1.0 - (1.0 - p**site.in_features) * (1.0 - p**site.out_features),
            "all_dropped": float(all_dropped.float().mean()), "dw_norm": float(torch.linalg.norm(dw.float())),
        })
    return pd.DataFrame(rows)
