"""Tiny in-code models for fast tests (a few thousand parameters; never used outside tests)."""

from __future__ import annotations

import torch
from peft import AdaLoraConfig, LoraConfig, get_peft_model
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
)

from lora_dropout.tasks.alpaca import PROMPT_NO_INPUT, PROMPT_WITH_INPUT, Instruction
from lora_dropout.tasks.instruction import SENTIMENT_INSTRUCTION

VOCAB = 50


def tiny_bert(num_labels: int = 3, dropout: float = 0.0, seed: int = 0) -> BertForSequenceClassification:
    torch.manual_seed(seed)
    cfg = BertConfig(
        vocab_size=VOCAB, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
        max_position_embeddings=32, hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout,
        num_labels=num_labels, initializer_range=0.3,  # large weights: outputs far from uniform
    )
    return BertForSequenceClassification(cfg)


def tiny_lora(r: int = 4, lora_dropout: float = 0.0, seed: int = 0, dropout: float = 0.0, b_scale: float = 1.0, **kw):
    """A tiny BERT with LoRA on query/value; ``init_lora_weights=False`` makes B non-zero.

    ``b_scale`` multiplies B so that the LoRA update dominates the random base model and masks
    change the output visibly (tests of differences between instances need that).
    """
    model = tiny_bert(dropout=dropout, seed=seed)
    torch.manual_seed(seed + 1)
    config = LoraConfig(
        r=r, lora_alpha=2 * r, target_modules=["query", "value"], lora_dropout=lora_dropout,
        init_lora_weights=False, modules_to_save=["classifier"], **kw,
    )
    peft_model = get_peft_model(model, config)
    if b_scale != 1.0:
        with torch.no_grad():
            for name, param in peft_model.named_parameters():
                if "lora_B" in name:
                    param.mul_(b_scale)
    return peft_model


def tiny_adalora(seed: int = 0, total_step: int = 20):
    model = tiny_bert(seed=seed)
    torch.manual_seed(seed + 1)
    config = AdaLoraConfig(
        init_r=4, target_r=2, target_modules=["query", "value"], total_step=total_step, tinit=2, tfinal=2,
        deltaT=1, modules_to_save=["classifier"],
    )
    peft_model = get_peft_model(model, config)
    with torch.no_grad():  # AdaLoRA starts with Lambda = 0; give it values so masks are observable
        for name, param in peft_model.named_parameters():
            if "lora_E" in name:
                param.uniform_(5.0, 15.0)
    return peft_model


def tiny_batch(batch_size: int = 5, seq_len: int = 7, num_labels: int = 3, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, VOCAB, (batch_size, seq_len), generator=g)
    return {
        "input_ids": ids,
        "attention_mask": torch.ones_like(ids),
        "labels": torch.randint(0, num_labels, (batch_size,), generator=g),
    }


def save_tiny_classifier(path, num_labels: int = 2, seed: int = 0):
    """A tiny random BERT saved with the embedded MiniLM tokenizer: a local model for CLI tests."""
    from lora_dropout.runs.models import load_tokenizer

    tokenizer = load_tokenizer(None)
    torch.manual_seed(seed)
    cfg = BertConfig(
        vocab_size=tokenizer.vocab_size, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=32, max_position_embeddings=64, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
        num_labels=num_labels,
    )
    BertForSequenceClassification(cfg).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


POSITIVE = ("good", "great", "fine", "lovely", "superb")
NEGATIVE = ("bad", "awful", "poor", "dull", "weak")
FILLER = ("the", "movie", "was", "plot", "actors", "really", "quite", "story", "film", "scenes")


def write_tiny_csv(path, n: int = 80, seed: int = 0, groups: int = 10):
    """A learnable sentiment CSV (label = which word list the text draws from), with a group column."""
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        label = i % 2
        words = list(rng.choice(FILLER, size=4)) + [str(rng.choice(POSITIVE if label else NEGATIVE)), f"w{i}"]
        rng.shuffle(words)
        rows.append({"text": " ".join(words), "label": ["neg", "pos"][label], "group": f"g{(i // 2) % groups}"})
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


# -- causal LM ------------------------------------------------------------------------------------------

_SPECIAL = ["<pad>", "<unk>", "<s>", "</s>"]


def tiny_tokenizer():
    """Word-level tokenizer over the Alpaca template, the sentiment words and the tiny review words."""
    split = pre_tokenizers.Whitespace()
    texts = [PROMPT_WITH_INPUT, PROMPT_NO_INPUT, SENTIMENT_INSTRUCTION, "positive negative",
             " ".join(FILLER + POSITIVE + NEGATIVE)]
    words = list(dict.fromkeys(w for text in texts for w, _ in split.pre_tokenize_str(text)))
    core = Tokenizer(models.WordLevel({w: i for i, w in enumerate(_SPECIAL + words)}, unk_token="<unk>"))
    core.pre_tokenizer = split
    return PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", unk_token="<unk>",
                                   bos_token="<s>", eos_token="</s>")


def tiny_causal_lm(tokenizer, seed: int = 0, b_scale: float = 1.0):
    """A 2-layer Llama with LoRA on q_proj/v_proj; ``init_lora_weights=False`` makes B non-zero.

    ``b_scale`` multiplies B so that masks change the output visibly.
    """
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=128, initializer_range=0.3,
        pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    torch.manual_seed(seed + 1)
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False,
                      task_type="CAUSAL_LM")
    model = get_peft_model(LlamaForCausalLM(config), lora)
    if b_scale != 1.0:
        with torch.no_grad():
            for name, param in model.named_parameters():
                if "lora_B" in name:
                    param.mul_(b_scale)
    return model


def reviews(words=("good", "bad", "superb", "awful"), first_id=0) -> list[Instruction]:
    """Sentiment records whose input varies in length (so batches need padding)."""
    return [
        Instruction(SENTIMENT_INSTRUCTION, " ".join(["the", "film", "was", "really"][: 1 + i % 4] + [w]),
                    "positive" if w in POSITIVE else "negative", first_id + i)
        for i, w in enumerate(words)
    ]


