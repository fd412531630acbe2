# %% [markdown]
# # 01 · What the masks do (Eq. 2) and the sparsity they induce (Eqs. 9-11)
#
# **Claim.** LoRA Dropout drops whole columns of `A` (input features of the LoRA branch) and whole rows
# of `B` (output features), each with probability `p`, shared by all tokens of a sequence. An entry of
# `dW_hat = diag(m_B) B A diag(m_A)` is therefore zero with probability `s = 2p - p^2` (Prop. A.2).
# This is not peft's `lora_dropout`, which zeroes independent (token, feature) entries of the branch
# input and rescales by `1/(1-p)`.
#
# We measure both on a real forward pass: the realised zero fraction of `dW_hat` per module against
# `2p - p^2`, and whether the dropped input features are the same for every token of an example.

# %% tags=["parameters"]
from pathlib import Path

from analysis import scales

scale = scales.scale_from_env()  # LORA_DROPOUT_SCALE: tiny (tests), quick, full
figures_dir = scales.figures_dir_from_env(Path("figures") / "notebooks" / scale)
rates = [0.1, 0.3, 0.5, 0.7]

# %%
import pandas as pd
import torch
from peft import LoraConfig, get_peft_model

from analysis import plots, tables
from analysis.inspect import branch_input_zeros, token_constant_fraction
from lora_dropout import LoraDropoutConfig, apply_lora_dropout
from lora_dropout.runs.models import load_classifier, load_tokenizer
from lora_dropout.runs.sparsity import module_sparsity
from lora_dropout.tasks.data import load_rotten_tomatoes

model_name = scales.profile_for(scale).spec.base.train.model  # None = the embedded MiniLM
tokenizer = load_tokenizer(model_name)
texts = list(load_rotten_tomatoes(n_train=16).train.text)
inputs = tokenizer(texts, padding=True, truncation=True, max_length=48, return_tensors="pt")


def lora_model(peft_dropout=0.0):
    # init_lora_weights=False: B is non-zero, so zeros of dW_hat come from the masks only
    base = load_classifier(model_name, num_labels=2, seed=0, base_dropout=0.0)
    config = LoraConfig(r=8, target_modules=["query", "value"], lora_dropout=peft_dropout,
                        init_lora_weights=False, task_type="SEQ_CLS")
    return get_peft_model(base, config)


# %% [markdown]
# ## Realised sparsity of `dW_hat` against `2p - p^2`

# %%
model = lora_model()
frames = []
for p in rates:
    handle = apply_lora_dropout(model, LoraDropoutConfig(dropout_rate=p, n_instances=4))
    frames.append(module_sparsity(handle, torch.arange(256), epoch=0).assign(dropout_rate=p))
    handle.remove()
modules = pd.concat(frames, ignore_index=True)
sparsity = tables.sparsity(modules)
ax = plots.plot_sparsity(sparsity)
figures_dir.mkdir(parents=True, exist_ok=True)
ax.figure.savefig(figures_dir / "01_sparsity.png", dpi=120)
modules.groupby("dropout_rate")[["nominal_sparsity", "dw_zero_fraction", "keep_in", "keep_out"]].mean()

# %% [markdown]
# ## Shared across tokens, unlike peft's `lora_dropout`
#
# The input of every `lora_A` is captured during one training-mode forward pass; a dropped feature is an
# exact zero. For each example we ask whether the set of dropped features is the same for all its tokens.

# %%
p = 0.3
ours = lora_model()
apply_lora_dropout(ours, LoraDropoutConfig(dropout_rate=p, n_instances=1)).model.train()
peft_dropout = lora_model(peft_dropout=p).train()
rows = []
for name, m in (("LoRA Dropout", ours), ("peft lora_dropout", peft_dropout)):
    zeros = branch_input_zeros(m, dict(inputs))
    for module, z in zeros.items():
        rows.append({"method": name, "module": module, "zero_fraction": float(z[inputs["attention_mask"].bool()]
                                                                               .float().mean()),
                     "token_constant": token_constant_fraction(z, inputs["attention_mask"])})
sharing = pd.DataFrame(rows)
sharing.groupby("method")[["zero_fraction", "token_constant"]].mean()

# %% [markdown]
# Both drop about a fraction `p` of the branch input, but only LoRA Dropout drops the same features for
# every token of an example (a column of `A`); peft's element-wise dropout almost never does.

# %%
by_method = sharing.groupby("method")[["zero_fraction", "token_constant"]].mean()
assert (abs(sparsity["realised"] - sparsity["nominal"]) < 0.03).all(), sparsity
assert by_method.loc["LoRA Dropout", "token_constant"] == 1.0
assert by_method.loc["peft lora_dropout", "token_constant"] < 0.05
assert abs(by_method.loc["LoRA Dropout", "zero_fraction"] - p) < 0.05
assert abs(by_method.loc["peft lora_dropout", "zero_fraction"] - p) < 0.05
