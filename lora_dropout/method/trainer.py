"""`LoraDropoutTrainer`: a ``transformers.Trainer`` that trains with Eq. 7 and evaluates with Eq. 8.

An existing Trainer script switches to LoRA Dropout by changing one class::

    trainer = LoraDropoutTrainer(model=peft_model, args=args, train_dataset=train, eval_dataset=test,
                                 lora_dropout_config=LoraDropoutConfig(dropout_rate=0.3, n_instances=4))

- Training: the batch is tiled ``n_instances`` times, each row with its own mask (keyed by the
  dataset's ``sample_id`` column when present, which the Trainer then keeps), and the loss is the
  mean of the per-example losses over instances and examples. That mean is a per-batch mean, so
  the Trainer divides it by the gradient-accumulation steps exactly once (``loss_is_scaled_for_ga =
  False``): accumulating two batches of 4 gives the gradient of one batch of 8, not half of it.
- ``max_instances_per_forward`` below ``n_instances``: forward and backward run per chunk of
  instances (same gradients, less activation memory). With gradient checkpointing, backward runs
  while each chunk's masks are in force, so the recomputed forward sees the same masks.
- Evaluation: ``predict`` with the configured ``eval_mode``; the returned "logits" are the log of the
  aggregate predictive, so argmax metrics and the loss refer to the ensemble (or the deterministic
  predictor in the single-pass modes).
- AdaLoRA: the rank-budget allocation (``update_and_allocate``) runs after every optimizer step,
  before gradients are zeroed, as peft requires; its orthogonality regulariser is part of the loss.
"""

from __future__ import annotations

import torch
from transformers import Trainer, TrainerCallback

from .apply import apply_lora_dropout, get_lora_dropout
from .config import LoraDropoutConfig
from .ensemble import predict
from .objective import KEY_FIELD, gradient_checkpointing, n_instance_backward, n_instance_loss, unwrap
from .peft_seam import adalora_update_and_allocate, is_adalora


class _AdaLoraAllocation(TrainerCallback):
    def on_optimizer_step(self, args, state, control, model=None, **kwargs):
        adalora_update_and_allocate(unwrap(model), state.global_step)


class LoraDropoutTrainer(Trainer):
    """``transformers.Trainer`` with LoRA Dropout's training objective and test-time ensemble."""

    # compute_loss returns a per-batch mean: the Trainer divides it by the accumulation steps once.
    loss_is_scaled_for_ga = False

    def __init__(self, *args, lora_dropout_config: LoraDropoutConfig | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        inner = unwrap(self.model)
        if lora_dropout_config is not None or get_lora_dropout(inner, required=False) is None:
            apply_lora_dropout(inner, lora_dropout_config or LoraDropoutConfig())
        if is_adalora(inner):
            self.add_callback(_AdaLoraAllocation())

    @property
    def lora_dropout(self):
        return get_lora_dropout(unwrap(self.model))

    def _set_signature_columns_if_needed(self) -> None:
        super()._set_signature_columns_if_needed()
        if KEY_FIELD not in self._signature_columns:
            self._signature_columns.append(KEY_FIELD)  # keep the example keys the masks are keyed by

    def _mask_time(self) -> dict[str, int]:
        return {"step": int(self.state.global_step), "epoch": int(self.state.epoch or 0)}

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        result = n_instance_loss(model, inputs, **self._mask_time())
        return (result.loss, {"per_example": result.per_example}) if return_outputs else result.loss

    def training_step(self, model, inputs, num_items_in_batch=None):
        cfg = self.lora_dropout.config
        cap = cfg.max_instances_per_forward
        chunked = cap is not None and cap < cfg.n_instances
        if not chunked and not gradient_checkpointing(model):
            return super().training_step(model, inputs, num_items_in_batch)
        # chunks, or checkpointing (its recompute must run while the masks are in force): backward here
        model.train()
        inputs = self._prepare_inputs(inputs)
        scale = 1.0 / self.current_gradient_accumulation_steps
        with self.compute_loss_context_manager():
            result = n_instance_backward(model, inputs, **self._mask_time(), loss_scale=scale,
                                         backward=self.accelerator.backward)
        return (result.loss * scale).to(self.args.device)

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        inputs = self._prepare_inputs(inputs)
        labels = inputs.get("labels")
        pred = predict(model, inputs)
        loss = pred.loss(labels).mean().detach() if labels is not None else None
        # A causal LM's (B, T, V) ensemble distributions are too large to gather over an eval set:
        # the Trainer gets its loss only (multiple-choice accuracy: lora_dropout.tasks.choices.score_choices).
        if prediction_loss_only or pred.probs.dim() == 3:
            return loss, None, None
        return loss, pred.probs.clamp_min(torch.finfo(pred.probs.dtype).tiny).log(), labels
