"""Instruction tuning: Alpaca data, response-only labels, causal-LM training, multiple-choice ensemble.

The model is a 2-layer Llama (hidden size 16) with a word-level tokenizer built in code over the
Alpaca template and a few review words, so a forward pass takes milliseconds.
"""

import functools
import json

import pandas as pd
import pytest
import torch
from transformers import TrainingArguments

from lora_dropout import LoraDropoutConfig, apply_lora_dropout, get_lora_dropout
from lora_dropout.method.objective import n_instance_backward, n_instance_loss
from lora_dropout.method.trainer import LoraDropoutTrainer
from lora_dropout.tasks.alpaca import (
    Instruction,
    collate_instructions,
    encode_instruction,
    format_prompt,
    load_alpaca,
)
from lora_dropout.tasks.choices import ChoiceItem, score_choices, score_items
from lora_dropout.tasks.instruction import SENTIMENT_INSTRUCTION, sentiment_instructions
from lora_dropout.tasks.splits import TextSplits
from tests.tiny import reviews, tiny_causal_lm, tiny_tokenizer


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


# -- data ---------------------------------------------------------------------------------------------


def test_load_alpaca_reads_json_lists_and_json_lines(tmp_path):
    records = [{"instruction": "Add.", "input": "2 and 3", "output": "5"},
               {"instruction": "Greet.", "output": "Hello"},
               {"instruction": "Say no.", "input": None, "output": "No"}]
    (tmp_path / "a.json").write_text(json.dumps(records))
    (tmp_path / "a.jsonl").write_text("\n".join(json.dumps(r) for r in records) + "\n\n")
    as_list = load_alpaca(tmp_path / "a.json")
    assert as_list == load_alpaca(tmp_path / "a.jsonl")
    assert as_list == [Instruction("Add.", "2 and 3", "5", 0), Instruction("Greet.", "", "Hello", 1),
                       Instruction("Say no.", "", "No", 2)]
    assert load_alpaca(tmp_path / "a.json", n=2) == as_list[:2]


def test_load_alpaca_errors_name_the_file_record_and_field(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.json"):
        load_alpaca(tmp_path / "missing.json")
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps({"instruction": "a", "output": "b"}) + "\n" + json.dumps({"instruction": "c"}))
    with pytest.raises(ValueError, match="record 1 has no 'output' field"):
        load_alpaca(path)
    path.write_text(json.dumps([{"output": "b"}]))
    with pytest.raises(ValueError, match="record 0 has no 'instruction' field"):
        load_alpaca(path)
    path.write_text(json.dumps([{"instruction": "a", "output": 3}]))
    with pytest.raises(ValueError, match="field 'output' must be a string"):
        load_alpaca(path)
    path.write_text('{"instruction": "a", "output": "b"}\n{oops')
    with pytest.raises(ValueError, match="line 2"):
        load_alpaca(path)


def test_prompt_template_is_alpaca_with_and_without_input():
    with_input = format_prompt(Instruction("Classify.", "a text", "x"))
    assert with_input.startswith("Below is an instruction that describes a task, paired with an input")
    assert with_input.endswith("### Instruction:\nClassify.\n\n### Input:\na text\n\n### Response:\n")
    without = format_prompt({"instruction": "Classify.", "output": "x"})
    assert "### Input:" not in without and without.endswith("### Instruction:\nClassify.\n\n### Response:\n")


def test_sentiment_instructions_map_fresh_to_positive():
    frame = lambda ids, texts, labels: pd.DataFrame(  # noqa: E731
        {"sample_id": pd.Series(ids, dtype="int64"), "text": texts, "label": pd.Series(labels, dtype="int64"),
         "group": pd.Series([None] * len(ids), dtype=object)})
    splits = TextSplits(train=frame([4, 9], ["great fun", "a bore"], [1, 0]),
                        test=frame([2], ["dull"], [0]), label_names=("rotten", "fresh"), source="test")
    train, test = sentiment_instructions(splits)
    assert train == [Instruction(SENTIMENT_INSTRUCTION, "great fun", "positive", 4),
                     Instruction(SENTIMENT_INSTRUCTION, "a bore", "negative", 9)]
    assert test == [ChoiceItem(format_prompt(Instruction(SENTIMENT_INSTRUCTION, "dull", "")),
                               ("negative", "positive"), 0, 2)]
    with pytest.raises(ValueError, match="fresh"):
        sentiment_instructions(splits, words={"rotten": "negative"})


# -- encoding -----------------------------------------------------------------------------------------


def test_labels_mask_exactly_the_prompt_and_the_padding(tok):
    records = reviews()
    encoded = [encode_instruction(tok, r, max_length=64) for r in records]
    for record, enc in zip(records, encoded, strict=True):
        prompt = tok(format_prompt(record))["input_ids"]
        response = tok(record.output, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        assert enc["input_ids"] == prompt + response
        assert enc["labels"] == [-100] * len(prompt) + response
        assert enc["sample_id"] == record.sample_id
    batch = collate_instructions(encoded, pad_token_id=tok.pad_token_id)
    lengths = [len(e["input_ids"]) for e in encoded]
    assert len(set(lengths)) > 1  # some rows are padded
    for i, enc in enumerate(encoded):
        n = lengths[i]
        assert batch["input_ids"][i, :n].tolist() == enc["input_ids"]
        assert batch["labels"][i, :n].tolist() == enc["labels"]
        assert (batch["labels"][i, n:] == -100).all() and (batch["attention_mask"][i, n:] == 0).all()
        assert (batch["attention_mask"][i, :n] == 1).all()
        assert (batch["input_ids"][i, n:] == tok.pad_token_id).all()
    assert batch["sample_id"].tolist() == [r.sample_id for r in records]


def test_truncation_keeps_a_response_token_or_raises(tok):
    record = Instruction(SENTIMENT_INSTRUCTION, "the film", "really good movie")
    full = encode_instruction(tok, record, max_length=128)
    n_prompt = full["labels"].count(-100)
    cut = encode_instruction(tok, record, max_length=n_prompt + 1)
    assert cut["input_ids"] == full["input_ids"][: n_prompt + 1]
    assert cut["labels"][-1] == full["input_ids"][n_prompt] and cut["labels"][:-1] == [-100] * n_prompt
    assert "sample_id" not in cut
    with pytest.raises(ValueError, match="no room for a response token"):
        encode_instruction(tok, record, max_length=n_prompt)


def test_collate_rejects_partly_keyed_examples(tok):
    keyed, unkeyed = (encode_instruction(tok, r, 64) for r in (reviews()[0], Instruction("a", "", "good")))
    with pytest.raises(ValueError, match="sample_id"):
        collate_instructions([keyed, unkeyed])


# -- training -----------------------------------------------------------------------------------------


def _batch(tok, records):
    encoded = [encode_instruction(tok, r, 64) for r in records]
    return collate_instructions(encoded, pad_token_id=tok.pad_token_id)


def test_causal_lm_trains_with_the_n_instance_objective(tok):
    model = tiny_causal_lm(tok)
    apply_lora_dropout(model, LoraDropoutConfig(dropout_rate=0.3, n_instances=2))
    batch = _batch(tok, reviews())
    model.train()
    with torch.no_grad():
        before = n_instance_loss(model, batch, epoch=0).loss
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-2)
    for step in range(20):
        optimizer.zero_grad()
        n_instance_backward(model, batch, step=step, epoch=step)
        optimizer.step()
    with torch.no_grad():
        after = n_instance_loss(model, batch, epoch=0).loss
    assert float(after) < 0.6 * float(before), (float(before), float(after))


def test_trainer_step_on_a_causal_lm_is_the_n_instance_objective(tok, tmp_path):
    lr = 10.0  # one SGD step: gradient = (before - after) / lr, with little float32 cancellation
    model = tiny_causal_lm(tok, b_scale=5.0)
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    data = [encode_instruction(tok, r, 64) for r in reviews()]
    args = TrainingArguments(
        output_dir=str(tmp_path), max_steps=1, learning_rate=lr, optim="sgd", lr_scheduler_type="constant",
        max_grad_norm=0.0, report_to=[], save_strategy="no", logging_strategy="no", use_cpu=True,
        dataloader_num_workers=0, seed=0, per_device_train_batch_size=len(data),
    )
    config = LoraDropoutConfig(dropout_rate=0.4, n_instances=3)
    collator = functools.partial(collate_instructions, pad_token_id=tok.pad_token_id)
    trainer = LoraDropoutTrainer(model=model, args=args, train_dataset=data, lora_dropout_config=config,
                                 data_collator=collator)
    trainer.train()
    stepped = {n: (before[n] - p.detach()) / lr for n, p in model.named_parameters() if n in before}

    reference = tiny_causal_lm(tok, b_scale=5.0)
    apply_lora_dropout(reference, config)
    reference.train()
    # the whole dataset is the one batch; its order does not change a mean loss
    n_instance_loss(reference, _batch(tok, reviews()), step=0, epoch=0).loss.backward()
    grads = {n: p.grad for n, p in reference.named_parameters() if p.requires_grad}
    assert stepped.keys() == grads.keys() and any(float(g.abs().max()) > 1e-4 for g in grads.values())
    for name, grad in grads.items():
        torch.testing.assert_close(stepped[name], grad, rtol=1e-4, atol=1e-6, msg=name)


# -- multiple choice ----------------------------------------------------------------------------------

CHOICES = ("negative", "positive", "good movie")  # a multi-token option too


def _reference_loglik(model, tok, prompt, option, *, key=None, instance=None):
    """Log-likelihood of ``option`` after ``prompt``: one unpadded sequence, instance ``r`` alone."""
    head = tok(prompt)["input_ids"]
    ids = head + tok(option, add_special_tokens=False)["input_ids"]
    x = torch.tensor([ids])
    with torch.no_grad():
        if instance is None:
            logits = model(input_ids=x).logits[0]
        else:
            handle = get_lora_dropout(model)
            masks = handle.sample(1, n_instances=1, first_instance=instance, keys=torch.tensor([key]),
                                  train=False)
            with handle.use(masks):
                logits = model(input_ids=x).logits[0]
    logp = logits.float().log_softmax(dim=-1)
    return sum(float(logp[len(head) - 1 + j, ids[len(head) + j]]) for j in range(len(ids) - len(head)))


def _prompts(records):
    return [format_prompt(r) for r in records]


# single-token options take the one-pass-per-prompt path, a multi-token option the one-row-per-option path
@pytest.mark.parametrize("choices", [CHOICES, ("negative", "positive")], ids=["multi_token", "one_token"])
def test_ensemble_choice_probs_are_the_mean_of_per_instance_choice_probs(tok, choices):
    model = tiny_causal_lm(tok, b_scale=5.0)
    config = LoraDropoutConfig(dropout_rate=0.4, n_eval_instances=3, max_instances_per_forward=2)
    apply_lora_dropout(model, config)
    prompts = _prompts(reviews())
    keys = [7, 3, 1_000_003, 11]
    labels = torch.tensor([0, 1, 1, 0])
    scores = score_choices(model, tok, prompts, choices, labels=labels, sample_ids=keys, batch_size=3)
    assert scores.member_loglik.shape == (3, 4, len(choices)) and scores.mode == "ensemble"
    model.eval()
    loglik = torch.tensor([[[_reference_loglik(model, tok, p, c, key=key, instance=r) for c in choices]
                            for p, key in zip(prompts, keys, strict=True)] for r in range(3)])
    torch.testing.assert_close(scores.member_loglik, loglik, rtol=1e-5, atol=1e-5)
    per_instance = loglik.softmax(dim=-1)
    torch.testing.assert_close(scores.member_probs, per_instance, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(scores.probs, per_instance.mean(dim=0), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(scores.loss, -scores.probs[torch.arange(4), labels].log())
    assert scores.prediction.tolist() == scores.probs.argmax(dim=-1).tolist()
    assert scores.accuracy == float((scores.prediction == labels).float().mean())
    assert float(per_instance.std(dim=0).max()) > 1e-2  # the instances really differ


def test_options_of_an_example_share_its_masks(tok):
    model = tiny_causal_lm(tok, b_scale=5.0)
    apply_lora_dropout(model, LoraDropoutConfig(dropout_rate=0.4, n_eval_instances=4))
    prompts = _prompts(reviews())
    keys = [5, 6, 7, 8]
    base = score_choices(model, tok, prompts, CHOICES, sample_ids=keys, batch_size=4)
    # Option k's score under instance r depends on the example's key and r only: not on the other options,
    # on its row in the batch, or on the batch's composition.
    reversed_ = score_choices(model, tok, prompts, CHOICES[::-1], sample_ids=keys, batch_size=1)
    torch.testing.assert_close(reversed_.member_loglik, base.member_loglik.flip(-1), rtol=1e-5, atol=1e-5)
    for k, option in enumerate(CHOICES):
        alone = score_choices(model, tok, prompts[::-1], [option], sample_ids=keys[::-1], batch_size=3)
        torch.testing.assert_close(alone.member_loglik[:, :, 0].flip(-1), base.member_loglik[:, :, k],
                                   rtol=1e-5, atol=1e-5)
    # the key matters: other keys give other members
    other = score_choices(model, tok, prompts, CHOICES, sample_ids=[105, 106, 107, 108])
    assert float((other.member_loglik - base.member_loglik).abs().max()) > 1e-2


def test_single_pass_modes_scale_the_update(tok):
    p = 0.4
    model = tiny_causal_lm(tok, b_scale=5.0)
    handle = apply_lora_dropout(model, LoraDropoutConfig(dropout_rate=p, n_eval_instances=3))
    records = reviews()
    items = [ChoiceItem(format_prompt(r), ("negative", "positive"), int(r.output == "positive"), r.sample_id)
             for r in records]
    expected = score_items(model, tok, items, mode="expected")
    full = score_items(model, tok, items, mode="full")
    assert expected.member_loglik.shape == (1, 4, 2) and expected.mode == "expected"
    assert expected.labels.tolist() == [it.answer for it in items]
    model.eval()
    with handle.use_scale((1 - p) ** 2):
        scaled = torch.tensor([[_reference_loglik(model, tok, it.prompt, c) for c in it.choices]
                               for it in items])
    torch.testing.assert_close(expected.member_loglik[0], scaled, rtol=1e-5, atol=1e-5)
    handle.remove()  # vanilla peft: the full update
    plain = torch.tensor([[_reference_loglik(model, tok, it.prompt, c) for c in it.choices] for it in items])
    torch.testing.assert_close(full.member_loglik[0], plain, rtol=1e-5, atol=1e-5)
    assert float((expected.member_loglik - full.member_loglik).abs().max()) > 1e-2


def test_score_choices_restores_the_training_mode_and_checks_shapes(tok):
    model = tiny_causal_lm(tok)
    apply_lora_dropout(model, LoraDropoutConfig())
    model.train()
    prompts = _prompts(reviews())
    score_choices(model, tok, prompts, [("negative", "positive")] * 4, n_instances=2)
    assert model.training
    with pytest.raises(ValueError, match="same, non-zero number of choices"):
        score_choices(model, tok, prompts[:2], [("negative", "positive"), ("negative",)])
    with pytest.raises(ValueError, match="3 option lists for 4 prompts"):
        score_choices(model, tok, prompts, [("a", "b")] * 3)
    with pytest.raises(ValueError, match="sample_ids has 2 entries"):
        score_choices(model, tok, prompts, CHOICES, sample_ids=[1, 2])


# -- the run directory path (task="instruction") --------------------------------------------------------


def test_instruction_run_writes_a_valid_run_directory(tmp_path):
    from bounds.runlog import validate_run
    from lora_dropout.probes.on_run import probe_run
    from lora_dropout.runs.config import RunConfig
    from lora_dropout.runs.run import train_run
    from tests.tiny import write_tiny_csv

    tok = tiny_tokenizer()
    model_dir = tmp_path / "llama"
    tiny_causal_lm(tok).unload().save_pretrained(model_dir)  # the plain Llama, without LoRA layers
    tok.save_pretrained(model_dir)
    data = write_tiny_csv(tmp_path / "d.csv", n=40)
    frame = pd.read_csv(data)  # sentiment labels, so the prompts use the tokenizer's words
    frame.assign(label=frame.label.map({"neg": "rotten", "pos": "fresh"})).to_csv(data, index=False)
    config = RunConfig().replace(
        train={"task": "instruction", "model": str(model_dir), "data": str(data), "group_column": "group",
               "n_train": 16, "n_test": None, "epochs": 1, "batch_size": 4, "eval_batch_size": 8, "lr": 1e-3,
               "max_length": 64},
        lora_dropout={"dropout_rate": 0.3, "n_instances": 2},
    )
    run = validate_run(train_run(config, tmp_path / "runs", run_id="lm", progress=False).run_dir,
                       require=("samples", "calibration", "modules"))
    samples = run.table("samples")
    final = samples[samples.step == samples.step.max()]
    # members, deterministic, ensemble and full rows for every train and test item
    assert set(final.predictor) == {"member", "deterministic", "ensemble", "full"}
    assert sorted(final[final.predictor == "member"].instance.unique()) == [0, 1]
    assert set(run.steps.split) == {"train", "test"} and run.steps["risk"].notna().all()
    with pytest.raises(ValueError, match="classification runs"):
        probe_run(run.path, curvature=True)
