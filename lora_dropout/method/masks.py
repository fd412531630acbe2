"""Counter-based Bernoulli masks for LoRA Dropout (Eq. 2).

A mask entry is a pure function of its coordinates,

    keep[site feature f | seed, stream, step, sample key, instance r, token t]
        = hash(seed, stream, step, key, r, t, f) >= p * 2^32,

rather than the next draw of a stateful generator. Why: the masks an example sees then do not depend
on which other examples share its batch, on how the ``N`` instances are split over forward passes
(``max_instances_per_forward``), on the device, or on the process rank under data parallelism. That
makes the batched and looped objectives (Eq. 7) see identical masks, makes an evaluation
reproducible from its seed alone, and couples leave-one-out retraining: removing example ``i`` leaves
the masks of every other example unchanged (docs/measurement.md, measured ``beta``).

The hash is Wellons' "lowbias32" integer finaliser evaluated in int64 with explicit 32-bit masking,
so it runs unchanged on any torch device. Its output passes the binomial checks in the tests; it is
not a cryptographic generator and needs not be.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

_M32 = 0xFFFFFFFF
# Stream tags keep the training, evaluation and certificate mask streams disjoint for the same seed. The
# certificate's masks (lora_dropout.certify.posterior) are never drawn while training, whose evaluations use
# EVAL_STREAM.
TRAIN_STREAM = 0x7A11
EVAL_STREAM = 0xE7A1
CERTIFY_STREAM = 0xCE27


def hash32(x: torch.Tensor) -> torch.Tensor:
    """Bijective 32-bit integer hash ("lowbias32"), elementwise on an int64 tensor.

    Inputs are reduced to their low 32 bits first; outputs lie in ``[0, 2^32)``. int64 products of
    two 32-bit values wrap on overflow, and masking with ``2^32 - 1`` keeps the low 32 bits exact.
    """
    x = x & _M32
    x = x ^ (x >> 16)
    x = (x * 0x7FEB352D) & _M32
    x = x ^ (x >> 15)
    x = (x * 0x846CA68B) & _M32
    return x ^ (x >> 16)


def combine(h: torch.Tensor, value: torch.Tensor | int) -> torch.Tensor:
    """Fold ``value`` (any int64, also negative or above 2^32) into the running hash ``h``."""
    if isinstance(value, int):
        value = torch.tensor(value, dtype=torch.int64, device=h.device)
    lo = value & _M32
    hi = (value >> 32) & _M32
    return hash32(hash32(h ^ lo) ^ (hi + 0x9E3779B9))


@dataclass(frozen=True)
class Site:
    """One masked LoRA factor pair: ``in_features`` input-side and ``out_features`` output-side entries."""

    name: str
    in_features: int
    out_features: int


class MaskLayout:
    """Where each site's input and output features sit in one flat feature axis.

    All sites are sampled in one vectorised call over a ``(rows, F_total)`` tensor and then split
    into per-site views; the global feature index is part of the hashed coordinate.
    """

    def __init__(self, sites: Sequence[Site]):
        if not sites:
            raise ValueError("MaskLayout needs at least one site")
        self.sites = tuple(sites)
        self.sizes = [n for s in self.sites for n in (s.in_features, s.out_features)]
        self.total = sum(self.sizes)
        self._feature_hash: dict[torch.device, torch.Tensor] = {}

    def feature_hash(self, device: torch.device) -> torch.Tensor:
        """Hashed global feature indices ``(F_total,)``, cached per device."""
        if device not in self._feature_hash:
            idx = torch.arange(self.total, dtype=torch.int64, device=device)
            self._feature_hash[device] = hash32(hash32(idx) + 0x632BE5AB)
        return self._feature_hash[device]


def row_hashes(
    *,
    seed: int,
    stream: int,
    step: int,
    keys: torch.Tensor,
    instances: torch.Tensor,
) -> torch.Tensor:
    """Hash of each row's coordinates ``(seed, stream, step, key, instance)``: shape ``(rows,)``."""
    h = hash32(torch.full_like(keys, seed & _M32) ^ 0x5BD1E995)
    h = combine(h, seed)
    h = combine(h, stream)
    h = combine(h, step)
    h = combine(h, keys)
    return combine(h, instances)


def sample_keep(
    feature_hash: torch.Tensor,
    rows: torch.Tensor,
    dropout_rate: float,
    *,
    seq_len: int | None = None,
) -> torch.Tensor:
    """Boolean keep mask for every row and feature.

    Parameters
    ----------
    feature_hash : Tensor, int64, shape ``(F,)``
        Hashed feature indices, `MaskLayout.feature_hash` or a slice of it (one site).
    rows : Tensor, int64, shape ``(R,)``
        Row hashes from `row_hashes`.
    dropout_rate : float
        ``p``: each entry is dropped with probability ``p`` (to within 2^-32).
    seq_len : int, optional
        Token scope: a fresh mask per token position, output ``(R, T, F)``.

    Returns
    -------
    Tensor, bool, shape ``(R, F)`` or ``(R, T, F)``
    """
    threshold = int(round(dropout_rate * 2**32))
    f = feature_hash
    if seq_len is None:
        h = hash32(rows[:, None] ^ f[None, :])  # (R, F)
    else:
        t = hash32(torch.arange(seq_len, dtype=torch.int64, device=rows.device) + 0x27D4EB2F)
        tok = hash32(rows[:, None] ^ t[None, :])  # (R, T)
        h = hash32(tok[:, :, None] ^ f[None, None, :])  # (R, T, F)
    return h >= threshold


def split_sites(values: torch.Tensor, layout: MaskLayout) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Split a ``(..., F_total)`` tensor into ``{site: (input-side, output-side)}`` views."""
    parts = torch.split(values, layout.sizes, dim=-1)
    return {s.name: (parts[2 * k], parts[2 * k + 1]) for k, s in enumerate(layout.sites)}
