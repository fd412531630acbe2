import json

import pytest
import torch
from peft import PeftModel

from lora_dropout import LoraDropoutConfig, apply_lora_dropout, load_lora_dropout, predict, save_lora_dropout
from lora_dropout.method.objective import n_instance_loss
from lora_dropout.method.persist import CONFIG_NAME, read_lora_dropout_config
from tests.tiny import tiny_batch, tiny_bert, tiny_lora


def test_save_load_restores_ensemble_and_training_behaviour(tmp_path):
    model = tiny_lora()
    config = LoraDropoutConfig(dropout_rate=0.4, n_instances=3, n_eval_instances=5, seed=11, mask_scope="batch")
    apply_lora_dropout(model, config)
    batch = tiny_batch()
    before = predict(model, batch)
    model.train()
    loss_before = n_instance_loss(model, batch, step=4).loss.detach()
    save_lora_dropout(model, tmp_path / "adapter")
    assert json.loads((tmp_path / "adapter" / CONFIG_NAME).read_text())["mask_scope"] == "batch"

    reloaded, handle = load_lora_dropout(tiny_bert(), tmp_path / "adapter", is_trainable=True)
    assert handle.config == config
    after = predict(reloaded, batch)
    torch.testing.assert_close(after.member_logits, before.member_logits)
    reloaded.train()
    torch.testing.assert_close(n_instance_loss(reloaded, batch, step=4).loss.detach(), loss_before)


def test_stock_peft_still_loads_the_adapter_weights(tmp_path):
    model = tiny_lora()
    apply_lora_dropout(model, LoraDropoutConfig(dropout_rate=0.4))
    save_lora_dropout(model, tmp_path)
    stock = PeftModel.from_pretrained(tiny_bert(), str(tmp_path))
    ours = dict(model.named_parameters())
    loaded = dict(stock.named_parameters())
    lora_names = [n for n in ours if "lora_" in n]
    assert lora_names
    for name in lora_names:
        torch.testing.assert_close(loaded[name], ours[name])


def test_missing_config_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a LoRA Dropout adapter"):
        read_lora_dropout_config(tmp_path)
