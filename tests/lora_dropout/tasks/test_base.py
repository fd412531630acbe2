"""The `Task` protocol and its registry: both implementations conform, names resolve, the config uses the keys."""

import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch

from lora_dropout.method.losses import causal_lm_loss, classification_loss
from lora_dropout.runs.config import TrainConfig
from lora_dropout.tasks.base import TASKS, EvalSplit, Task, TrainSplit, check_task, task_for
from lora_dropout.tasks.choices import ChoiceItem, ChoiceSplit
from lora_dropout.tasks.classification import CLASSIFICATION, EncodedSplit
from lora_dropout.tasks.instruction import INSTRUCTION, InstructionSplit

PROTOCOL_MEMBERS = ("name", "auto_model", "peft_task_type", "evaluates_files", "default_model", "config_kwargs",
                    "per_example_loss", "prepare", "score_split", "encode_frame")


@pytest.mark.parametrize("name", sorted(TASKS))
def test_every_registered_task_resolves_to_an_implementation_of_the_protocol(name):
    task = task_for(name)
    assert task.name == name
    missing = [m for m in PROTOCOL_MEMBERS if not hasattr(task, m)]
    assert not missing, missing
    assert task_for(task) is task  # a task object passes through


def test_the_registry_holds_the_two_tasks_and_names_them_in_its_errors():
    assert task_for("classification") is CLASSIFICATION and task_for("instruction") is INSTRUCTION
    message = "task='regression' must be one of 'classification', 'instruction'"
    with pytest.raises(ValueError, match=message):
        task_for("regression")
    with pytest.raises(ValueError, match=message):
        check_task("regression")
    with pytest.raises(ValueError, match=message):  # the config validates with the registry's keys
        TrainConfig(task="regression")


def test_what_the_tasks_tell_the_model_loader():
    assert (CLASSIFICATION.auto_model, CLASSIFICATION.peft_task_type) == (
        "AutoModelForSequenceClassification", "SEQ_CLS")
    assert (INSTRUCTION.auto_model, INSTRUCTION.peft_task_type) == ("AutoModelForCausalLM", "CAUSAL_LM")
    assert CLASSIFICATION.config_kwargs(3) == {"num_labels": 3}
    assert INSTRUCTION.config_kwargs(3) == {}  # the LM head scores the options


def test_the_per_example_losses_are_the_defaults_for_their_logits():
    g = torch.Generator().manual_seed(0)
    logits, labels = torch.randn(5, 3, generator=g), torch.tensor([0, 2, 1, 1, 0])
    torch.testing.assert_close(CLASSIFICATION.per_example_loss({"logits": logits}, labels),
                               classification_loss(logits, labels), rtol=0, atol=0)
    lm_logits, lm_labels = torch.randn(2, 4, 7, generator=g), torch.tensor([[-100, 1, 2, 3], [-100, -100, 5, 6]])
    torch.testing.assert_close(INSTRUCTION.per_example_loss({"logits": lm_logits}, lm_labels),
                               causal_lm_loss(lm_logits, lm_labels), rtol=0, atol=0)


def test_the_splits_follow_the_split_protocols():
    encoded = EncodedSplit(({"input_ids": [1, 2]}, {"input_ids": [3]}), np.array([0, 1]), np.array([7, 8]), 0)
    instructions = InstructionSplit(({"input_ids": [1], "attention_mask": [1], "labels": [1]},), np.array([4]), 0)
    choices = ChoiceSplit((ChoiceItem("p", ("a", "b"), 1, 9),))
    for split, protocol in ((encoded, TrainSplit), (encoded, EvalSplit), (instructions, TrainSplit),
                            (choices, EvalSplit)):
        members = [m for m in vars(protocol) if not m.startswith("_")]
        assert all(hasattr(split, m) for m in members), (type(split).__name__, protocol.__name__)
    assert choices.labels.tolist() == [1] and choices.sample_ids.tolist() == [9]
    assert "score_split" in vars(Task)


def test_only_classification_runs_are_scored_on_other_files():
    assert CLASSIFICATION.evaluates_files and not INSTRUCTION.evaluates_files
    with pytest.raises(NotImplementedError, match="not implemented yet"):
        INSTRUCTION.encode_frame(pd.DataFrame({"sample_id": [0], "text": ["x"], "label": [0]}), None, 8)


def test_validating_a_task_name_imports_neither_torch_nor_an_implementation():
    code = ("import sys; from lora_dropout.runs.config import TrainConfig; TrainConfig(task='instruction'); "
            "print(sorted(m for m in ('torch', 'lora_dropout.tasks.classification', "
            "'lora_dropout.tasks.instruction') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
