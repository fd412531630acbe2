"""`apply_lora_dropout`: put the paper's masks (Eq. 2) on every LoRA layer of a peft model.

The returned `LoraDropout` handle decides, for every forward pass, what each LoRA branch is
multiplied by:

- inside ``with handle.use(masks):`` the given per-row masks (how the N-instance objective and the
  ensemble run a batch tiled N times);
- inside ``with handle.use_scale(c):`` the scalar ``c`` (``expected`` eval mode: ``(1-p)^2``;
  ``full``: 1);
- otherwise ("plain" forwards from the user's own loop): in ``train()`` mode a fresh single-instance
  mask per forward pass, so an unmodified training loop trains with LoRA Dropout at ``N = 1``; in
  ``eval()`` mode the deterministic predictor (``expected`` unless ``eval_mode="full"``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from . import peft_seam
from .config import EvalMode, LoraDropoutConfig, MaskScope
from .masks import EVAL_STREAM, TRAIN_STREAM, MaskLayout, Site, row_hashes, sample_keep, split_sites

_HANDLE_ATTR = "_lora_dropout"


@dataclass(frozen=True)
class MaskSet:
    """Masks for one (possibly tiled) batch: ``{site: (m_in, m_out)}``.

    ``m_in`` has shape ``(rows, in)`` (``(rows, T, in)`` in token scope), ``m_out`` likewise with
    ``out``; rows are instance-major: row ``r * B + b`` is example ``b`` under instance ``r``.
    """

    masks: dict[str, tuple[torch.Tensor, torch.Tensor]]
    rows: int
    n_instances: int


def _broadcast(mask: torch.Tensor, x: torch.Tensor, site: str) -> torch.Tensor:
    """Shape a ``(rows, F)`` or ``(rows, T, F)`` mask to multiply ``x`` of shape ``(rows, ..., F)``."""
    if mask.shape[0] != x.shape[0]:
        raise RuntimeError(
            f"LoRA Dropout masks for site {site} were sampled for {mask.shape[0]} rows but the layer input has "
            f"{x.shape[0]}; sample masks for the batch being run (tiled batches need rows = N * batch)"
        )
    if mask.dim() == 2:
        return mask.view(mask.shape[0], *([1] * (x.dim() - 2)), mask.shape[1])
    if x.dim() != 3 or x.shape[1] != mask.shape[1]:
        raise RuntimeError(f"token-scope mask {tuple(mask.shape)} does not match layer input {tuple(x.shape)}")
    return mask


class LoraDropout:
    """Handle returned by `apply_lora_dropout`; owns the sites, the mask layout and the mask state."""

    def __init__(self, model: torch.nn.Module, config: LoraDropoutConfig):
        self.model = model
        self.config = config
        self.sites = peft_seam.find_lora_sites(model)
        self.layout = MaskLayout([Site(s.name, s.in_features, s.out_features) for s in self.sites])
        # site -> (first feature, end feature, input features): its slice of the flat feature axis
        self._slices: dict[str, tuple[int, int, int]] = {}
        start = 0
        for s in self.sites:
            self._slices[s.name] = (start, start + s.in_features + s.out_features, s.in_features)
            start += s.in_features + s.out_features
        self._masks: MaskSet | None = None
        self._scale: float | None = None
        self._plain_step = 0  # counts plain forward passes: the time coordinate of their masks
        self._hook = model.register_forward_pre_hook(self._count_plain_forward)
        for layer in peft_seam.iter_layers(self.sites):
            peft_seam.install(layer, self._site_fn(layer))
        setattr(model, _HANDLE_ATTR, self)

    # -- what each LoRA branch is multiplied by ---------------------------------------------------

    def _site_fn(self, layer: torch.nn.Module):
        prefix = next(s.module_name for s in self.sites if s.layer is layer)

        def site_fn(adapter: str, x: torch.Tensor):
            site = f"{prefix}::{adapter}"
            if self._masks is not None:
                m_in, m_out = self._masks.masks[site]
                return _broadcast(m_in, x, site), _broadcast(m_out, x, site), 1.0
            if self._scale is not None:
                return None, None, self._scale
            if layer.training:
                m_in, m_out = self._plain_masks(site, x)
                return _broadcast(m_in, x, site), _broadcast(m_out, x, site), 1.0
            return None, None, self.deterministic_scale

        return site_fn

    def _count_plain_forward(self, module, args) -> None:
        if self._masks is None and self._scale is None:
            self._plain_step += 1

    def _plain_masks(self, site: str, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # One instance, rows keyed by position within the batch and by the plain-forward counter.
        rows = x.shape[0]
        keys = torch.arange(rows, dtype=torch.int64, device=x.device)
        seq_len = x.shape[1] if self.config.mask_scope == MaskScope.TOKEN and x.dim() == 3 else None
        h = self._row_hashes(TRAIN_STREAM, step=self._plain_step, epoch=self._plain_step, keys=keys, n_instances=1)
        lo, hi, n_in = self._slices[site]
        keep = sample_keep(self.layout.feature_hash(x.device)[lo:hi], h, self.config.dropout_rate, seq_len=seq_len)
        values = keep.to(x.dtype) * self.config.mask_value
        return values[..., :n_in], values[..., n_in:]

    @property
    def deterministic_scale(self) -> float:
        """Scale of ``dW`` in the deterministic predictor: ``E[mask]`` (``expected``), or 1 (``full``)."""
        return 1.0 if self.config.eval_mode == EvalMode.FULL else self.config.expected_scale

    def scale_for(self, mode: EvalMode | str) -> float:
        """Scale of ``dW`` for a single-pass eval mode (``expected`` or ``full``)."""
        mode = EvalMode(mode)
        if mode == EvalMode.ENSEMBLE:
            raise ValueError("eval_mode='ensemble' has no single-pass scale; use predict() for the ensemble")
        return 1.0 if mode == EvalMode.FULL else self.config.expected_scale

    @contextlib.contextmanager
    def use(self, masks: MaskSet) -> Iterator[None]:
        """Run forward passes with explicit per-row masks."""
        previous = self._masks, self._scale
        self._masks, self._scale = masks, None
        try:
            yield
        finally:
            self._masks, self._scale = previous

    @contextlib.contextmanager
    def use_scale(self, scale: float) -> Iterator[None]:
        """Run forward passes with ``dW`` multiplied by ``scale`` (no masks)."""
        previous = self._masks, self._scale
        self._masks, self._scale = None, float(scale)
        try:
            yield
        finally:
            self._masks, self._scale = previous

    # -- sampling -----------------------------------------------------------------------------------

    def _row_hashes(self, stream: int, *, step: int, epoch: int, keys: torch.Tensor, n_instances: int,
                    first_instance: int = 0) -> torch.Tensor:
        b = keys.shape[0]
        instances = torch.arange(first_instance, first_instance + n_instances, device=keys.device)
        instances = instances.repeat_interleave(b)  # (N * B,): instance-major rows
        row_keys = keys.repeat(n_instances)
        if self.config.mask_scope == MaskScope.BATCH:
            # One mask per instance per step, shared by the whole batch: the key is the step alone.
            row_keys = torch.zeros_like(row_keys)
            time = step
        else:
            time = epoch
        return row_hashes(seed=self.config.seed, stream=stream, step=time, keys=row_keys, instances=instances)

    def sample(
        self,
        batch_size: int,
        *,
        n_instances: int,
        keys: torch.Tensor | None = None,
        step: int = 0,
        epoch: int = 0,
        first_instance: int = 0,
        seq_len: int | None = None,
        train: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> MaskSet:
        """Masks for a batch tiled ``n_instances`` times.

        Parameters
        ----------
        batch_size : int
            ``B``, examples in the untiled batch.
        n_instances : int
            Instances to tile; rows are ``n_instances * B``, instance-major.
        keys : Tensor of int, shape ``(B,)``, optional
            A stable identity per example (the dataset's ``sample_id``). With keys, an example's
            masks depend on (seed, epoch, key, instance) only, not on its batch. Default: positions
            ``0 .. B-1``, with ``step`` as the time coordinate instead of ``epoch``.
        step, epoch : int
            Time coordinates: ``batch`` scope always uses ``step``; the other scopes use ``epoch``
            when keys are given and ``step`` otherwise.
        first_instance : int
            Index of the first instance (a chunk of instances ``first .. first + n - 1``).
        seq_len : int, optional
            Sequence length; required for ``token`` scope.
        train : bool
            Training stream (Eq. 7) or evaluation stream (Eq. 8); they never share masks.
        """
        params = self.sites[0].factors()[0]
        device = torch.device(device) if device is not None else params.device
        dtype = dtype or params.dtype
        if keys is None:
            keys = torch.arange(batch_size, dtype=torch.int64, device=device)
            epoch = step
        else:
            keys = torch.as_tensor(keys, dtype=torch.int64, device=device).reshape(-1)
            if keys.shape[0] != batch_size:
                raise ValueError(f"keys has {keys.shape[0]} entries for batch_size={batch_size}")
        if self.config.mask_scope == MaskScope.TOKEN and seq_len is None:
            raise ValueError("mask_scope='token' needs seq_len to sample masks")
        stream = TRAIN_STREAM if train else EVAL_STREAM
        h = self._row_hashes(stream, step=step, epoch=epoch, keys=keys, n_instances=n_instances,
                             first_instance=first_instance)
        token_len = seq_len if self.config.mask_scope == MaskScope.TOKEN else None
        keep = sample_keep(self.layout.feature_hash(device), h, self.config.dropout_rate, seq_len=token_len)
        values = keep.to(dtype) * self.config.mask_value
        return MaskSet(split_sites(values, self.layout), rows=n_instances * batch_size, n_instances=n_instances)

    # -- lifecycle ----------------------------------------------------------------------------------

    def remove(self) -> None:
        """Restore vanilla peft behaviour on every layer (exactly: peft's own forward is used again)."""
        for layer in peft_seam.iter_layers(self.sites):
            peft_seam.uninstall(layer)
        self._hook.remove()
        if getattr(self.model, _HANDLE_ATTR, None) is self:
            delattr(self.model, _HANDLE_ATTR)

    def __repr__(self) -> str:
        return f"LoraDropout({len(self.sites)} sites, {self.config})"


def apply_lora_dropout(model: torch.nn.Module, config: LoraDropoutConfig | None = None) -> LoraDropout:
    """Install LoRA Dropout (Eq. 2) on every LoRA/AdaLoRA linear layer of every adapter of ``model``.

    Input-feature masks multiply the LoRA branch input (the columns of ``A``, or AdaLoRA's ``Q``),
    output-feature masks multiply the branch output (the rows of ``B``, or AdaLoRA's ``P``); AdaLoRA's
    ``Lambda`` is never masked. Masks are shared by the tokens of a sequence (``example`` and
    ``batch`` scope). Applying twice replaces the earlier handle.

    Parameters
    ----------
    model : peft.PeftModel or a module containing peft LoRA layers
    config : LoraDropoutConfig, optional

    Returns
    -------
    LoraDropout
        The handle; ``handle.remove()`` restores vanilla peft exactly.

    Raises
    ------
    ValueError
        If the model has no LoRA layers or has LoRA layers LoRA Dropout does not define.
    """
    existing = get_lora_dropout(model, required=False)
    if existing is not None:
        existing.remove()
    return LoraDropout(model, config or LoraDropoutConfig())


def get_lora_dropout(model: torch.nn.Module, *, required: bool = True) -> LoraDropout | None:
    """The handle `apply_lora_dropout` attached to ``model`` (or None when ``required=False``)."""
    handle = model.__dict__.get(_HANDLE_ATTR)
    if handle is None and required:
        raise ValueError("this model has no LoRA Dropout: call apply_lora_dropout(model, config) first")
    return handle
