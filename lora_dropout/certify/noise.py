"""Counter-based Gaussian noise of the PAC-Bayes posterior (docs/certificate.md).

The noise of an entry is a pure function of ``(seed, "posterior", sample_id, draw, parameter name,
entry)``: a hash (`lora_dropout.method.masks.hash32`, like the masks) turned into a normal by
Box-Muller. A draw therefore depends neither on the batch it is computed in nor on the device;
`lora_dropout.certify.posterior` adds it to the parameters of every posterior member.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence

import torch

from ..method.masks import combine, hash32
from ..method.validation import check_count

#: Stream tag of the posterior noise (the masks stay on the evaluation stream, `lora_dropout.method.masks.EVAL_STREAM`).
POSTERIOR_STREAM = 0x9057E1
_M32 = 0xFFFFFFFF


def _name_hash(name: str) -> int:
    """A stable 63-bit integer for a parameter name (independent of Python's per-process hash seed)."""
    digest = hashlib.blake2b(name.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "little") & 0x7FFF_FFFF_FFFF_FFFF


def standard_normal(rows: torch.Tensor, n: int) -> torch.Tensor:
    """Counter-based standard normals: entry ``(i, j)`` is a pure function of ``(rows[i], j)``.

    Box-Muller on hashed uniforms: entries ``2q`` and ``2q + 1`` are ``R cos(theta)`` and
    ``R sin(theta)`` of pair ``q``, with ``R = sqrt(-2 ln u1)`` from a 53-bit uniform ``u1`` in
    ``(0, 1]`` (two 32-bit hashes) and ``theta = 2 pi u2`` from a 32-bit uniform. Entries of one row
    do not depend on ``n`` (the first ``n`` entries of a longer row are the same numbers).

    Parameters
    ----------
    rows : Tensor, int64, shape ``(R,)``
        One hash per row (e.g. per (example, draw, parameter)).
    n : int
        Entries per row.

    Returns
    -------
    Tensor, float64, shape ``(R, n)``
    """
    pairs = (n + 1) // 2
    idx = torch.arange(3 * pairs, dtype=torch.int64, device=rows.device)
    entry = hash32(hash32(idx) + 0x165667B1)  # (3 P,)
    salt = hash32(rows ^ 0x3C6EF372)  # (R,)
    h = hash32(hash32(rows[:, None] ^ entry[None, :]) + salt[:, None]).view(-1, pairs, 3)  # (R, P, 3)
    bits53 = (h[..., 0] << 21) | (h[..., 1] >> 11)  # < 2^53: exact in float64
    u1 = (bits53.to(torch.float64) + 0.5) * 2.0**-53  # (0, 1]
    theta = h[..., 2].to(torch.float64) * (2.0 * math.pi * 2.0**-32)  # [0, 2 pi)
    radius = torch.sqrt(-2.0 * torch.log(u1))
    z = torch.stack([radius * torch.cos(theta), radius * torch.sin(theta)], dim=-1)  # (R, P, 2)
    return z.reshape(rows.shape[0], 2 * pairs)[:, :n]


def _noise_rows(seed: int, name: str, keys: torch.Tensor, draw_ids: torch.Tensor) -> torch.Tensor:
    """Row hashes of ``(seed, POSTERIOR_STREAM, name, sample_id, draw)``, draw-major: ``(D * B,)``."""
    b = keys.shape[0]
    row_keys = keys.repeat(draw_ids.shape[0])
    draws = draw_ids.repeat_interleave(b)
    h = hash32(torch.full_like(row_keys, seed & _M32) ^ 0x2545F491)
    h = combine(h, seed)
    h = combine(h, POSTERIOR_STREAM)
    h = combine(h, _name_hash(name))
    h = combine(h, row_keys)
    return combine(h, draws)


def posterior_noise(
    name: str,
    shape: Sequence[int] | torch.Size,
    *,
    keys: torch.Tensor | Sequence[int],
    draws: int,
    posterior_std: float,
    seed: int,
    first_draw: int = 0,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """The Gaussian part ``eps`` of posterior draws (docs/certificate.md), for one parameter.

    ``eps[d, b]`` is ``posterior_std`` times standard normals that depend only on
    ``(seed, "posterior", keys[b], first_draw + d, name)``: never on the other keys, their order or
    their number.

    Parameters
    ----------
    name : str
        The parameter's qualified name in the model LoRA Dropout was applied to
        (``model.named_parameters()``), e.g. ``"...query.lora_A.default.weight"``.
    shape : sequence of int
        The parameter's shape.
    keys : int tensor or sequence, shape ``(B,)``
        The examples' ``sample_id``.
    draws : int
        ``k``: draws ``first_draw .. first_draw + k - 1``.
    posterior_std : float
        ``sigma >= 0``.
    seed : int
        Root of the noise stream.
    first_draw : int
        Index of the first draw.
    dtype, device
        Of the result (the normals are computed in float64 on ``device``).

    Returns
    -------
    Tensor, shape ``(draws, B, *shape)``
    """
    sigma = check_posterior_std(posterior_std)
    check_count("draws", draws)
    keys = torch.as_tensor(keys, dtype=torch.int64, device=device).reshape(-1)
    draw_ids = torch.arange(first_draw, first_draw + draws, dtype=torch.int64, device=keys.device)
    shape = tuple(shape)
    numel = math.prod(shape)
    z = standard_normal(_noise_rows(seed, name, keys, draw_ids), numel)  # (D * B, numel)
    return (z * sigma).to(dtype).view(draws, keys.shape[0], *shape)


def check_posterior_std(posterior_std: float) -> float:
    """``posterior_std`` as a float, or ValueError unless it is a finite number >= 0."""
    if (
        isinstance(posterior_std, bool)
        or not isinstance(posterior_std, (int, float))
        or not (math.isfinite(posterior_std) and posterior_std >= 0)
    ):
        raise ValueError(f"posterior_std={posterior_std!r} must be a finite number >= 0")
    return float(posterior_std)
