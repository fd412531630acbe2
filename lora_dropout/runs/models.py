"""Model loading: the embedded default (all-MiniLM-L6-v2 from its wheel), any transformers model, and
the peft adapters LoRA Dropout is applied to.

Nothing here reaches a model hub unless the user names a hub model and the network allows it.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch

from ..tasks.assets import MINILM, asset_file
from ..tasks.base import Task, task_for
from .config import AdapterConfig

DEFAULT_MODEL = "all-MiniLM-L6-v2"


def resolve_model(name_or_path: str | None, task: Task | str = "classification") -> str:
    """A local folder for the embedded defaults, otherwise the name or path as given.

    ``None`` is the task's embedded default (`lora_dropout.tasks.base.Task.default_model`): all-MiniLM-L6-v2
    for classification; for instruction tuning SmolLM2-135M-Instruct, converted once from the GGUF file
    of its wheel (`lora_dropout.tasks.gguf.default_causal_lm_dir`).
    """
    if name_or_path is None:
        return task_for(task).default_model()
    if name_or_path in (DEFAULT_MODEL, f"sentence-transformers/{DEFAULT_MODEL}"):
        return str(asset_file(MINILM, "model"))
    return check_model_source(str(name_or_path))


_MODEL_HOW = "--model (TrainConfig.model) takes a local transformers model folder or a hub model name"


def _looks_like_path(name: str) -> bool:
    """True for what can only be a file-system path (a hub name is ``name`` or ``owner/name``)."""
    return (Path(name).is_absolute() or name.startswith((".", "~")) or name.endswith(("/", "\\"))
            or name.count("/") > 1 or "\\" in name)


def check_model_source(name_or_path: str) -> str:
    """``name_or_path`` if it can name a model: an existing model folder, or a hub-style name.

    Raises
    ------
    FileNotFoundError
        One line naming the path and what is wrong with it: a path that does not exist, a file, or a
        folder without ``config.json``.
    """
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"model {name_or_path!r} is a folder without config.json, so not a "
                                    f"transformers model; {_MODEL_HOW}")
        return str(path)
    if path.exists():
        raise FileNotFoundError(f"model {name_or_path!r} is a file, not a model folder; {_MODEL_HOW}")
    if _looks_like_path(name_or_path):
        raise FileNotFoundError(f"model {name_or_path!r}: no such folder; {_MODEL_HOW}")
    return name_or_path


@contextlib.contextmanager
def _loading(name_or_path: str):
    """Turn transformers' failure to find a model (a multi-line OSError) into one line naming it."""
    try:
        yield
    except OSError as exc:
        lines = str(exc).strip().splitlines()
        reason = lines[0] if lines else type(exc).__name__
        raise FileNotFoundError(
            f"model {name_or_path!r} could not be loaded: {reason.rstrip('.')}; {_MODEL_HOW}") from exc


def load_tokenizer(name_or_path: str | None = None, task: Task | str = "classification"):
    """The tokenizer of the model ``name_or_path`` (default: ``task``'s embedded model), with a pad token."""
    from transformers import AutoTokenizer

    path = resolve_model(name_or_path, task)
    with _loading(path):
        tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token_id is None:  # causal LMs often have none; padding is masked anyway
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(task: Task | str, name_or_path: str | None = None, *, num_labels: int = 2, seed: int = 0,
               base_dropout: float | None = None, attn_implementation: str | None = None,
               dtype: torch.dtype | None = None):
    """The pretrained model ``task`` trains: its transformers auto class (`Task.auto_model`), its default
    model and the config arguments of its head (`Task.config_kwargs`); the other arguments as in
    `load_classifier`."""
    import transformers

    task = task_for(task)
    return _load(getattr(transformers, task.auto_model), resolve_model(name_or_path, task),
                 task.config_kwargs(num_labels), seed=seed, base_dropout=base_dropout,
                 attn_implementation=attn_implementation, dtype=dtype)


def load_causal_lm(name_or_path: str | None = None, *, seed: int = 0, base_dropout: float | None = None,
                   attn_implementation: str | None = None, dtype: torch.dtype | None = None):
    """A causal LM for instruction tuning (default: SmolLM2-135M-Instruct, see `resolve_model`)."""
    return load_model("instruction", name_or_path, seed=seed, base_dropout=base_dropout,
                      attn_implementation=attn_implementation, dtype=dtype)


def load_classifier(
    name_or_path: str | None = None,
    *,
    num_labels: int = 2,
    seed: int = 0,
    base_dropout: float | None = None,
    attn_implementation: str | None = None,
    dtype: torch.dtype | None = None,
):
    """A sequence classifier on a pretrained encoder; the classification head is freshly initialised.

    Parameters
    ----------
    name_or_path : str, optional
        Default: the embedded all-MiniLM-L6-v2. Any transformers model name or local folder.
    num_labels : int
    seed : int
        Seeds the random initialisation of the new head (the ``init`` generator of a run).
    base_dropout : float, optional
        Overrides the pretrained model's own dropout (None keeps it). LoRA Dropout studies often set 0
        so that the method under study is the only source of noise.
    attn_implementation : str, optional
        transformers' default (fused ``sdpa``) when None; the curvature probes switch to ``"eager"``
        while they run, because Hessian-vector products need double backward.
    """
    return load_model("classification", name_or_path, num_labels=num_labels, seed=seed, base_dropout=base_dropout,
                      attn_implementation=attn_implementation, dtype=dtype)


#: Config fields that hold a model's own dropout rates, across architectures (BERT, Llama, GPT-2, ...).
_DROPOUT_KEYS = ("hidden_dropout_prob", "attention_probs_dropout_prob", "attention_dropout", "hidden_dropout",
                 "resid_pdrop", "embd_pdrop", "dropout")


def _load(auto_class, path: str, config_kwargs: dict, *, seed, base_dropout, attn_implementation, dtype):
    from transformers import AutoConfig

    with _loading(path):
        config = AutoConfig.from_pretrained(path, **config_kwargs)
    if base_dropout is not None:
        for key in _DROPOUT_KEYS:
            if hasattr(config, key):
                setattr(config, key, base_dropout)
    torch.manual_seed(seed)  # whatever the checkpoint lacks (a new head) is initialised from here
    kwargs = {"config": config}
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    if dtype is not None:
        kwargs["dtype"] = dtype
    return auto_class.from_pretrained(path, **kwargs)


def default_target_modules(model: torch.nn.Module) -> list[str]:
    """Query and value projections under the names the architecture uses (BERT or Llama-style)."""
    names = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    for candidates in (["query", "value"], ["q_proj", "v_proj"], ["q_lin", "v_lin"], ["query_proj", "value_proj"]):
        if set(candidates) <= names:
            return candidates
    raise ValueError("cannot guess the attention projections of this model: pass target_modules explicitly")


def make_peft_model(model, adapter: AdapterConfig, *, task_type: str = "SEQ_CLS", total_step: int | None = None,
                    seed: int = 0):
    """Wrap ``model`` in a peft LoRA or AdaLoRA adapter (classifier head trained and saved with it).

    AdaLoRA needs ``total_step`` (its rank-budget schedule spans the whole run).
    """
    from peft import AdaLoraConfig, LoraConfig, get_peft_model

    targets = list(adapter.target_modules or default_target_modules(model))
    common = dict(target_modules=targets, lora_alpha=adapter.lora_alpha, lora_dropout=adapter.peft_lora_dropout,
                  task_type=task_type)
    if adapter.method == "adalora":
        if not total_step:
            raise ValueError("AdaLoRA needs total_step (the number of optimizer steps of the run)")
        # AdaLoRA's budget schedule: warm-up tinit, then pruning, then tfinal steps at the target rank.
        tinit, tfinal = max(1, total_step // 10), max(1, total_step // 5)
        if tinit + tfinal >= total_step:
            raise ValueError(f"AdaLoRA needs more steps than {total_step} for its warm-up and final phases")
        config = AdaLoraConfig(init_r=adapter.r, target_r=adapter.target_r, total_step=total_step, tinit=tinit,
                               tfinal=tfinal, deltaT=max(1, total_step // 50), **common)
    else:
        config = LoraConfig(r=adapter.r, **common)
    torch.manual_seed(seed)  # A's random initialisation (B starts at zero in LoRA)
    return get_peft_model(model, config)
