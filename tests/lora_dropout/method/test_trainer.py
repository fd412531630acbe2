"""The transformers Trainer integration: same objective, gradient accumulation normalised once, AdaLoRA."""

import pytest
import torch
from transformers import TrainingArguments, default_data_collator

from lora_dropout import LoraDropoutConfig, apply_lora_dropout
from lora_dropout.method.objective import n_instance_loss
from lora_dropout.method.trainer import LoraDropoutTrainer
from tests.tiny import tiny_adalora, tiny_batch, tiny_lora


def _dataset(n=8, seed=0):
    b = tiny_batch(batch_size=n, seed=seed)
    return [
        {"input_ids": b["input_ids"][i], "attention_mask": b["attention_mask"][i], "labels": b["labels"][i],
         "sample_id": torch.tensor(100 + i)}
        for i in range(n)
    ]


# One SGD step reads the gradient off the parameter change; a large rate keeps float32 cancellation
# in (before - after) / LR far below the tolerance.
LR = 10.0


def _args(tmp_path, **kw):
    base = dict(output_dir=str(tmp_path), max_steps=1, learning_rate=LR, optim="sgd", lr_scheduler_type="constant",
                max_grad_norm=0.0, report_to=[], save_strategy="no", logging_strategy="no", use_cpu=True,
                dataloader_num_workers=0, seed=0, remove_unused_columns=True)
    base.update(kw)
    return TrainingArguments(**base)


def _trainable(model):
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def _one_step(tmp_path, *, batch_size, accumulation, cap=None):
    model = tiny_lora(b_scale=30.0)
    before = _trainable(model)
    cfg = LoraDropoutConfig(dropout_rate=0.4, n_instances=3, max_instances_per_forward=cap)
    trainer = LoraDropoutTrainer(
        model=model, args=_args(tmp_path, per_device_train_batch_size=batch_size,
                                gradient_accumulation_steps=accumulation),
        train_dataset=_dataset(), data_collator=default_data_collator, lora_dropout_config=cfg,
    )
    trainer.train()
    return {n: (before[n] - p.detach()) / LR for n, p in model.named_parameters() if n in before}  # = grad


def test_gradient_accumulation_does_not_double_normalise(tmp_path):
    whole = _one_step(tmp_path, batch_size=8, accumulation=1)
    accumulated = _one_step(tmp_path, batch_size=4, accumulation=2)
    chunked = _one_step(tmp_path, batch_size=4, accumulation=2, cap=1)
    assert whole.keys() == accumulated.keys()
    assert any(float(g.abs().max()) > 1e-4 for g in whole.values())
    for name in whole:
        torch.testing.assert_close(accumulated[name], whole[name], rtol=1e-4, atol=1e-6, msg=name)
        torch.testing.assert_close(chunked[name], whole[name], rtol=1e-4, atol=1e-6, msg=name)


def test_trainer_step_is_the_n_instance_objective(tmp_path):
    grads = _one_step(tmp_path, batch_size=8, accumulation=1)
    model = tiny_lora(b_scale=30.0)
    apply_lora_dropout(model, LoraDropoutConfig(dropout_rate=0.4, n_instances=3))
    model.train()
    data = _dataset()
    # the Trainer's sampler visits the 8 examples in a seeded order; the loss is a mean, so order is irrelevant
    batch = {k: torch.stack([d[k] for d in data]) for k in data[0]}
    n_instance_loss(model, batch, step=0, epoch=0).loss.backward()
    for name, p in model.named_parameters():
        if p.requires_grad:
            torch.testing.assert_close(grads[name], p.grad, rtol=1e-4, atol=1e-6, msg=name)


def test_evaluation_uses_the_ensemble(tmp_path):
    model = tiny_lora(b_scale=30.0)
    trainer = LoraDropoutTrainer(
        model=model, args=_args(tmp_path, per_device_eval_batch_size=4), eval_dataset=_dataset(),
        data_collator=default_data_collator,
        lora_dropout_config=LoraDropoutConfig(dropout_rate=0.5, n_eval_instances=4),
    )
    out = trainer.predict(_dataset())
    from lora_dropout import predict

    data = _dataset()
    batch = {k: torch.stack([d[k] for d in data]) for k in data[0]}
    expected = predict(model, batch)
    torch.testing.assert_close(torch.as_tensor(out.predictions).exp(), expected.probs, rtol=1e-5, atol=1e-6)
    assert out.metrics["test_loss"] == pytest.approx(float(expected.loss(batch["labels"]).mean()), rel=1e-5)


def test_adalora_budget_allocation_runs_through_the_trainer(tmp_path):
    model = tiny_adalora(total_step=6)
    ranks_before = sum(int(m.ranknum["default"]) for m in model.modules() if hasattr(m, "ranknum"))
    trainer = LoraDropoutTrainer(
        model=model, args=_args(tmp_path, max_steps=6, per_device_train_batch_size=4), train_dataset=_dataset(),
        data_collator=default_data_collator, lora_dropout_config=LoraDropoutConfig(dropout_rate=0.3, n_instances=2),
    )
    trainer.train()
    pattern = model.peft_config["default"].rank_pattern
    # after tinit the allocator keeps only the budgeted singular values (target_r=2 of init_r=4 per site)
    assert pattern, "update_and_allocate never produced a rank pattern"
    kept = sum(int(torch.as_tensor(v).sum()) for v in pattern.values())
    assert kept < ranks_before
