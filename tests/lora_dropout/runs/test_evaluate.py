"""The per-sample loss matrix agrees with the model's own loss, and the predictors are what they claim."""

import numpy as np
import torch

from lora_dropout import LoraDropoutConfig, apply_lora_dropout
from lora_dropout.runs.evaluate import run_split, sample_frame, summary_rows
from lora_dropout.tasks.classification import EncodedSplit
from tests.tiny import tiny_batch, tiny_lora


def _split(n=24):
    b = tiny_batch(batch_size=n, seq_len=6)
    return EncodedSplit(tuple({"input_ids": row.tolist()} for row in b["input_ids"]), b["labels"].numpy(),
                        np.arange(500, 500 + n), 0), b


def test_per_sample_losses_average_to_the_models_own_mean_loss():
    model = tiny_lora(b_scale=30.0)
    handle = apply_lora_dropout(model, LoraDropoutConfig(dropout_rate=0.4, n_instances=3))
    data, batch = _split()
    logits = run_split(model, handle, data, "test", batch_size=7, device="cpu", full=True)
    frame = sample_frame(logits)
    model.eval()
    with torch.no_grad():
        for predictor, scale in (("full", 1.0), ("deterministic", 0.6**2)):
            with handle.use_scale(scale):
                own = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                            labels=batch["labels"]).loss  # transformers' own mean cross-entropy
            rows = frame[frame.predictor == predictor]
            np.testing.assert_allclose(rows.loss.mean(), float(own), rtol=1e-5)
    members = frame[frame.predictor == "member"]
    assert sorted(members.instance.unique()) == [0, 1, 2] and len(members) == 3 * 24
    by = {r["predictor"]: r for r in summary_rows(logits)}
    np.testing.assert_allclose(by["member_mean"]["risk"], members.loss.mean(), rtol=1e-6)
    np.testing.assert_allclose(by["ensemble"]["risk"], frame[frame.predictor == "ensemble"].loss.mean(), rtol=1e-6)
    # Thm 4.5 on the table: the ensemble's risk is at most the mean member's
    assert by["ensemble"]["risk"] <= by["member_mean"]["risk"] + 1e-7
