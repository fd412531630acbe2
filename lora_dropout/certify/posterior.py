"""Posterior sampling for the PAC-Bayes dropout certificate (docs/certificate.md; the toolkit's own).

The posterior ``Q`` of docs/certificate.md is LoRA Dropout plus Gaussian noise: a member draws masks
(columns of ``A``, rows of ``B``, each kept with probability ``1 - p``) and ``eps ~ N(0, sigma^2 I)``
on every trained parameter ``theta`` (``A`` and ``B`` of every adapted module and the trained head,
peft's ``modules_to_save`` copies), and predicts with ``theta + eps`` under those masks:

    z_Q(x) = f(x; W0 + diag(m_B) (B + eps_B) (A + eps_A) diag(m_A) * scaling, head + eps_head)

The Monte Carlo estimate of the Gibbs risk needs ``k`` draws per example whose ``n_b k`` losses are
independent given the data, so every example gets its own masks AND its own ``eps`` in each draw.
`posterior_logits` runs all of them in one forward pass over the batch tiled ``k`` times, without
copying the model: each row ``d * B + b`` (draw ``d``, example ``b``) carries its own factors through
a batched matmul in the LoRA branch (forward hooks add ``h @ eps_A[row]^T`` to ``A h`` and
``u @ eps_B[row]^T`` to ``B u``), and its own head through ``vmap`` of ``functional_call``.

Everything is counter-based, like the masks (`lora_dropout.method.masks`): the noise of an entry is a pure
function of ``(seed, "posterior", sample_id, draw, parameter name, entry)`` (a hash turned into a
normal by Box-Muller, `lora_dropout.certify.noise`), and the masks are example-scope LoRA Dropout masks
keyed by ``(sample_id, draw)`` on the certificate's own stream (`lora_dropout.method.masks.CERTIFY_STREAM`,
never used in training or its evaluations). A draw therefore does not depend on the batch it is computed in
(composition, order, size), on how the draws are chunked, or on the device; at ``posterior_std = 0`` a draw
is a LoRA Dropout member under those masks.

`lora_dropout.certify.prior_distance.factor_and_head_sq_dist` returns the two squared distances that
enter ``KL(Q || P)`` (`bounds.formulas.dropout_kl`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ..method import peft_seam
from ..method.apply import LoraDropout, MaskSet, get_lora_dropout
from ..method.losses import logits_of
from ..method.masks import CERTIFY_STREAM, row_hashes, sample_keep, split_sites
from ..method.objective import KEY_FIELD, instance_chunks, tile, unwrap
from ..method.validation import check_count
from .noise import check_posterior_std, posterior_noise

# -- which parameters are perturbed ---------------------------------------------------------------------


@dataclass(frozen=True)
class _Target:
    """One module whose forward gets per-row parameters: a LoRA factor or a trained head."""

    role: str  # "lora_A", "lora_B" or "head"
    module: torch.nn.Module
    params: dict[str, tuple[str, torch.nn.Parameter]]  # qualified name -> (name within module, parameter)


def _targets(handle: LoraDropout) -> list[_Target]:
    targets: list[_Target] = []
    for site in handle.sites:
        lora_a, lora_b = peft_seam.factor_modules(site)  # raises for AdaLoRA and lora_bias
        if not peft_seam.site_is_active(site):
            continue
        (name_a, param_a), (name_b, param_b) = site.trainable_factors()
        targets.append(_Target("lora_A", lora_a, {name_a: ("weight", param_a)}))
        targets.append(_Target("lora_B", lora_b, {name_b: ("weight", param_b)}))
    for head_name, head in peft_seam.trained_heads(handle.model):
        params = {f"{head_name}.{local}": (local, p) for local, p in head.named_parameters()}
        targets.append(_Target("head", head, params))
    covered = {id(p) for t in targets for _, p in t.params.values()}
    stray = [n for n, p in handle.model.named_parameters() if p.requires_grad and id(p) not in covered]
    if stray:
        raise ValueError(
            "the posterior of docs/certificate.md perturbs the LoRA factors and the modules_to_save heads; these "
            f"trainable parameters are neither (freeze them or train them as modules_to_save): {stray}"
        )
    return targets


def posterior_parameters(
    model: torch.nn.Module,
) -> tuple[dict[str, torch.nn.Parameter], dict[str, torch.nn.Parameter]]:
    """``theta`` of docs/certificate.md: ``(factors, head)``, each ``{qualified name: parameter}``.

    ``factors`` holds ``A`` and ``B`` of every active LoRA adapter of every adapted module; ``head``
    the parameters of peft's ``modules_to_save`` copies in use (empty when no head is trained).
    Names are those of ``model.named_parameters()`` of the model LoRA Dropout was applied to.

    Raises
    ------
    ValueError
        For AdaLoRA or ``lora_bias`` adapters, and when a trainable parameter is neither a LoRA
        factor nor part of a ``modules_to_save`` head.
    """
    factors: dict[str, torch.nn.Parameter] = {}
    head: dict[str, torch.nn.Parameter] = {}
    for target in _targets(get_lora_dropout(unwrap(model))):
        into = head if target.role == "head" else factors
        into.update({name: p for name, (_, p) in target.params.items()})
    return factors, head


# -- masks ---------------------------------------------------------------------------------------------------


def posterior_masks(
    handle: LoraDropout,
    keys: torch.Tensor,
    *,
    draws: int,
    first_draw: int = 0,
    dtype: torch.dtype | None = None,
) -> MaskSet:
    """The masks of posterior draws: per example and draw, whatever ``mask_scope`` training used.

    The law of the ``example``-scope masks of ``handle`` (each column of ``A`` and row of ``B`` kept with
    probability ``1 - p``), keyed by ``(seed, sample_id, draw)`` (time coordinate 0) on the certificate's own
    stream, `lora_dropout.method.masks.CERTIFY_STREAM`: no mask a certificate uses was drawn during training
    or its evaluations. Rows are draw-major (``d * B + b``).
    """
    cfg = handle.config
    b = keys.shape[0]
    draw_ids = torch.arange(first_draw, first_draw + draws, dtype=torch.int64, device=keys.device)
    h = row_hashes(
        seed=cfg.seed,
        stream=CERTIFY_STREAM,
        step=0,
        keys=keys.repeat(draws),
        instances=draw_ids.repeat_interleave(b),
    )
    keep = sample_keep(handle.layout.feature_hash(keys.device), h, cfg.dropout_rate)
    values = keep.to(dtype or handle.sites[0].factors()[0].dtype) * cfg.mask_value
    return MaskSet(split_sites(values, handle.layout), rows=draws * b, n_instances=draws)


#: A posterior std: one for every perturbed parameter, or one per parameter name (`perturbed`).
Std = float | Mapping[str, "float | torch.Tensor"]


def check_std(sigma: Std) -> Std:
    """``sigma`` checked: a finite number >= 0, or a mapping of names to such numbers (floats or 0-d tensors)."""
    if isinstance(sigma, Mapping):
        for name, value in sigma.items():
            number = float(value.detach()) if torch.is_tensor(value) else value
            try:
                check_posterior_std(number)
            except ValueError:
                raise ValueError(f"posterior_std[{name!r}]={number!r} must be a finite number >= 0") from None
        return sigma
    return check_posterior_std(sigma)


# -- per-row parameters in the forward pass ---------------------------------------------------------------


def _factor_hook(eps: torch.Tensor, where: str):
    """Forward hook turning ``W u`` into ``(W + eps[row]) u`` for a bias-free linear layer."""

    def hook(module, args, output):
        u = args[0]
        rows = eps.shape[0]
        if u.shape[0] != rows:
            raise RuntimeError(
                f"posterior noise for {where} was drawn for {rows} rows but the input has {u.shape[0]}"
            )
        flat = u.reshape(rows, -1, u.shape[-1])  # (rows, L, in)
        return output + torch.matmul(flat, eps.transpose(1, 2)).reshape(output.shape)  # + u @ eps^T

    return hook


def _head_hook(eps: dict[str, torch.Tensor], where: str):
    """Forward hook recomputing a head with its own parameters per row: ``vmap`` of ``functional_call``."""
    inside = [False]

    def hook(module, args, kwargs, output):
        if inside[0]:  # the call made by functional_call below
            return None
        rows = next(iter(eps.values())).shape[0]
        if (
            kwargs
            or not args
            or any(not torch.is_tensor(a) or a.dim() == 0 or a.shape[0] != rows for a in args)
        ):
            raise RuntimeError(
                f"posterior head {where}: expected positional tensor inputs with {rows} rows, got "
                f"{[tuple(a.shape) if torch.is_tensor(a) else type(a).__name__ for a in args]} and kwargs {sorted(kwargs)}"
            )
        params = {local: p + eps[local] for local, p in module.named_parameters()}  # (rows, *shape) each

        def one(row_params, *row_args):
            out = torch.func.functional_call(module, row_params, tuple(a.unsqueeze(0) for a in row_args))
            return out.squeeze(0)

        inside[0] = True
        try:
            return torch.func.vmap(one)(params, *args)
        finally:
            inside[0] = False

    return hook


@dataclass(frozen=True)
class SharedDraws:
    """What posterior draws of one batch share whatever ``posterior_std`` is: the targets, the standard normals
    ``z`` of every perturbed parameter (rows ``d * B + b``, float64) and the masks. ``eps = posterior_std * z``,
    so a ``posterior_std`` grid reuses them (the noise was about 40% of a draw's cost, benchmarks/certify_cost.py)."""

    targets: list[_Target]
    normals: dict[str, torch.Tensor]
    masks: MaskSet
    rows: int


def shared_draws(model: torch.nn.Module, keys, *, draws: int, first_draw: int, seed: int | None) -> SharedDraws:
    handle = get_lora_dropout(unwrap(model))
    check_count("draws", draws)
    check_count("first_draw", first_draw, minimum=0)
    seed = handle.config.seed if seed is None else seed
    check_count("seed", seed, minimum=0)
    targets = _targets(handle)
    reference = handle.sites[0].factors()[0]
    keys = torch.as_tensor(keys, dtype=torch.int64, device=reference.device).reshape(-1)
    rows = draws * keys.shape[0]
    normals = {
        name: posterior_noise(name, p.shape, keys=keys, draws=draws, first_draw=first_draw, posterior_std=1.0,
                              seed=seed, dtype=torch.float64, device=p.device).reshape(rows, *p.shape)
        for target in targets for name, (_, p) in target.params.items()
    }  # draw-major rows d * B + b; z * 1.0 == z, so z * sigma below is posterior_noise(..., sigma) exactly
    masks = posterior_masks(handle, keys, draws=draws, first_draw=first_draw, dtype=reference.dtype)
    return SharedDraws(targets, normals, masks, rows)


@contextlib.contextmanager
def perturbed(model: torch.nn.Module, shared: SharedDraws, sigma: Std) -> Iterator[int]:
    """Inside the block the model runs the draws of ``shared`` at ``posterior_std = sigma`` (eval mode).

    ``sigma`` is one std for every perturbed parameter, or a std per parameter name (`posterior_parameters`'
    names; floats or 0-d tensors, which may require grad: ``eps = sigma * z`` is differentiable in both
    ``sigma`` and the parameters, which is how `lora_dropout.certify.learned` learns them).
    """
    inner = unwrap(model)
    handle = get_lora_dropout(inner)
    if isinstance(sigma, Mapping):
        missing = sorted(set(shared.normals) - set(sigma))
        if missing:
            raise ValueError(f"posterior_std has no std for the perturbed parameter(s) {missing[:3]}")

    def eps(name: str, p: torch.Tensor) -> torch.Tensor:
        std = sigma[name] if isinstance(sigma, Mapping) else sigma
        return (shared.normals[name] * std).to(p.dtype)

    hooks = []
    was_training = inner.training
    try:
        for target in shared.targets:
            if target.role == "head":
                head_eps = {local: eps(name, p) for name, (local, p) in target.params.items()}
                hook = _head_hook(head_eps, next(iter(target.params)))
                hooks.append(target.module.register_forward_hook(hook, with_kwargs=True))
            else:
                ((name, (_, p)),) = target.params.items()
                hooks.append(target.module.register_forward_hook(_factor_hook(eps(name, p), name)))
        inner.eval()
        with handle.use(shared.masks):
            yield shared.rows
    finally:
        for hook in hooks:
            hook.remove()
        inner.train(was_training)


@contextlib.contextmanager
def posterior_sampling(
    model: torch.nn.Module,
    keys: torch.Tensor | Sequence[int],
    *,
    posterior_std: Std,
    draws: int,
    first_draw: int = 0,
    seed: int | None = None,
) -> Iterator[int]:
    """Inside the block, a forward pass over the batch tiled ``draws`` times runs posterior draws.

    Row ``d * B + b`` of the tiled batch (`lora_dropout.method.objective.tile`) is the member of ``Q``
    (docs/certificate.md) of example ``keys[b]`` under draw ``first_draw + d``: LoRA Dropout masks
    from `posterior_masks` and factors and head ``theta + eps`` with ``eps`` from `posterior_noise`.
    The model is in ``eval()`` mode inside the block (restored on exit), so nothing else is random;
    gradients are not disabled.

    Parameters
    ----------
    model : peft model with LoRA Dropout applied (`apply_lora_dropout`)
    keys : int tensor or sequence, shape ``(B,)``
        The examples' ``sample_id``: what the draws are keyed by.
    posterior_std : float or mapping
        ``sigma >= 0``; 0 gives the LoRA Dropout members themselves. A mapping gives each perturbed
        parameter (by `posterior_parameters` name) its own std (`perturbed`).
    draws : int
        Draws per example in this pass.
    first_draw : int
        Index of the first draw (draws ``first_draw .. first_draw + draws - 1``).
    seed : int, optional
        Root of the noise stream; default the LoRA Dropout config's seed.

    Yields
    ------
    int
        The number of rows the forward pass must have, ``draws * B``.

    Raises
    ------
    ValueError
        For AdaLoRA or ``lora_bias`` adapters, stray trainable parameters, or a bad argument.
    """
    sigma = check_std(posterior_std)
    with perturbed(model, shared_draws(model, keys, draws=draws, first_draw=first_draw, seed=seed), sigma) as rows:
        yield rows


@torch.no_grad()
def posterior_logits(
    model: torch.nn.Module,
    batch: Mapping[str, Any],
    *,
    posterior_std: Std,
    draws: int,
    seed: int | None = None,
    first_draw: int = 0,
    max_draws_per_forward: int | None = None,
    labels_key: str = "labels",
) -> torch.Tensor:
    """Logits of ``draws`` posterior members per example (docs/certificate.md, Monte Carlo step).

    Every example gets, in every draw, its own LoRA Dropout masks and its own Gaussian perturbation
    ``eps ~ N(0, posterior_std^2 I)`` of every LoRA factor and of the trained head, keyed by
    ``(seed, sample_id, draw)``: the ``n_b k`` member losses are independent given the data, and a
    draw does not depend on the batch it is computed in.

    Parameters
    ----------
    model : peft model with LoRA Dropout applied (`apply_lora_dropout`)
    batch : mapping
        Model inputs and ``sample_id`` (required: the draws are keyed by it); ``labels`` is ignored.
    posterior_std : float or mapping
        ``sigma >= 0`` (or one per parameter name, `perturbed`). At 0 the result is the logits of the LoRA
        Dropout members under `posterior_masks`.
    draws : int
        ``k``, draws per example.
    seed : int, optional
        Root of the noise stream; default the LoRA Dropout config's seed (the masks always come from
        the config's seed, evaluation stream).
    first_draw : int
        Index of the first draw, to extend an estimate with draws ``first_draw ..``.
    max_draws_per_forward : int, optional
        Largest number of draws tiled into one forward pass (memory); default
        ``config.max_instances_per_forward`` (None: all in one). Never changes the result.

    Returns
    -------
    Tensor, shape ``(draws, B, C)`` (``(draws, B, T, V)`` for a causal LM)
    """
    return posterior_logits_over_grid(model, batch, posterior_stds=(posterior_std,), draws=draws, seed=seed,
                                      first_draw=first_draw, max_draws_per_forward=max_draws_per_forward,
                                      labels_key=labels_key)[0]


@torch.no_grad()
def posterior_logits_over_grid(
    model: torch.nn.Module,
    batch: Mapping[str, Any],
    *,
    posterior_stds: Sequence[Std],
    draws: int,
    seed: int | None = None,
    first_draw: int = 0,
    max_draws_per_forward: int | None = None,
    labels_key: str = "labels",
) -> torch.Tensor:
    """`posterior_logits` at every ``posterior_std`` of a grid: ``out[g]`` is
    ``posterior_logits(..., posterior_std=posterior_stds[g])`` exactly.

    The draws of one example at different ``posterior_std`` share their masks and standard normals ``z``
    (``eps = posterior_std * z``, docs/certificate.md); each is still a valid Monte Carlo draw of its own
    posterior (the certificate's union bound over the grid needs no independence across it). The masks and
    ``z`` are computed once per chunk of draws instead of once per grid point.

    Returns
    -------
    Tensor, shape ``(len(posterior_stds), draws, B, C)``
    """
    inner = unwrap(model)
    handle = get_lora_dropout(inner)
    if KEY_FIELD not in batch:
        raise ValueError(
            f"posterior draws are keyed by the examples' {KEY_FIELD!r} (so they do not depend on the batch); "
            f"the batch has only {sorted(batch)}"
        )
    sigmas = [check_std(s) for s in posterior_stds]
    if not sigmas:
        raise ValueError("posterior_stds is empty: give at least one posterior_std")
    check_count("draws", draws)
    keys = torch.as_tensor(batch[KEY_FIELD]).reshape(-1)
    inputs = {k: v for k, v in batch.items() if k not in (labels_key, KEY_FIELD)}
    b = keys.shape[0]
    cap = max_draws_per_forward or handle.config.max_instances_per_forward
    chunks: list[list[torch.Tensor]] = [[] for _ in sigmas]
    for start, count in instance_chunks(draws, cap):
        shared = shared_draws(model, keys, draws=count, first_draw=first_draw + start, seed=seed)
        tiled = tile(inputs, count, b)
        for into, sigma in zip(chunks, sigmas, strict=True):
            with perturbed(model, shared, sigma):
                logits = logits_of(model(**tiled))
            into.append(logits.reshape(count, b, *logits.shape[1:]))
    return torch.stack([torch.cat(c, dim=0) for c in chunks])
