"""Named presets: the studies ``lora-dropout reproduce --profile NAME`` runs, as data.

`PRESETS` maps each name to a `Preset` (the profile's configuration, points, post-training work, seeds,
focus and description); `make_profile` builds its `Profile` (a `analysis.spec.StudySpec` and the
`Focus` its figures and claims single out); `PROFILES` are the names.

Profiles
--------
quick
    What ``make demo`` runs, within its 15-minute budget on a 2-core CPU (docs/architecture.md): one seed, 192
    training and 200 test examples, three evaluations per run, five runs (plain LoRA; p = 0.3 at N = 1, 2, 4; p = 0.6 at N = 2), curvature probes (32
    examples, Lanczos to 1e-2) and the PAC-Bayes dropout certificate (data-free prior, posterior_std
    0.01 only, k = 2 draws: forward passes only) on the three runs of the p panel, and
    leave-one-out stability (coupled retraining and warm starts, k = 2) on the main one.
full
    The CPU study behind the committed ``figures/``: three seeds, 500 training examples, p in
    {0, 0.1, 0.3, 0.5} at N = 2, N in {1, 2, 4} at p = 0.3, AdaLoRA with and without LoRA Dropout
    (p = 0.3, N = 2, at its own learning rate: see `ADALORA_LR`), curvature probes on the LoRA p
    panel, and all three stability estimators on the main configuration (seed 0). The two runs drawn
    in Figures 1 and 3 evaluate every 6 steps (12 points per curve); eta on a labelled subset of 128
    training examples, evaluation of the training split on 200. Measured on 2026-12-02 with ``make
    figures`` (Ray, one run per core) on 2 CPU cores: 150 minutes wall; 239 CPU-minutes of training
    and evaluation with the AdaLoRA arms at ``ADALORA_LR`` (they were retrained at it, 24 minutes).
lm
    Instruction tuning (the paper's third setting at toy size): the embedded SmolLM2-135M-Instruct
    (converted from its GGUF wheel) on instruction-formatted Rotten Tomatoes examples, response-only
    loss, scored as two-option multiple choice with the test-time ensemble; plain LoRA against LoRA
    Dropout. Runs on a CPU, slowly (minutes per step); meant for a GPU.
certify
    The PAC-Bayes dropout certificate (the toolkit's own, docs/certificate.md) over p: every training
    and test example of the default data (``n_train`` and ``n_test`` None), a prior trained on the
    first half of the seeded order (``prior_fraction`` 0.5, one epoch at lr 5e-4), the posterior
    continued from it on all examples for one epoch at lr 1e-4; p in {0.1, 0.3, 0.5} at N = 2 and
    plain LoRA as p = 0 (N = 1: at p = 0 the N instances are identical; no 1 - p discount); every run certified
    against the trained prior on the examples it did not see, with the default posterior_std grid and k = 4
    draws, and a posterior learned by minimising the certificate (one epoch) certified beside it. One seed (``--n-seeds`` for more). Long on a CPU (an hour
    or more); minutes on a GPU.
paper
    The GPU configuration: a larger model (``--model``, e.g. ``microsoft/deberta-v3-base``), GLUE-sized
    data (``--data hf:<dataset>`` where available; MRPC is the paper's Figure 5 task), the paper's p and
    N grid, AdaLoRA next to LoRA, three seeds.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from lora_dropout.runs.config import RunConfig

from .spec import PostTraining, StudySpec

#: The quick profile's posterior_std grid: one point, since a posterior draw of MiniLM costs a few times a
#: plain forward pass (per-example noise on every LoRA factor) and the demo has a 15-minute budget. The demo
#: shows the machinery: a data-free prior at n = 192 certifies little (docs/certificate.md measured 0.67 on
#: the whole data set; the `certify` profile is the one meant to be non-vacuous).
QUICK_POSTERIOR_STD_GRID = (0.01,)


@dataclass(frozen=True)
class Focus:
    """Which configurations a study's figures single out."""

    dropout_rate: float  # the main LoRA Dropout rate (loss curves, ablation, N panel)
    n_instances: int  # the main instance count (p panel, loss curves, ablation)


@dataclass(frozen=True)
class Profile:
    name: str
    spec: StudySpec
    focus: Focus
    description: str


@dataclass(frozen=True, kw_only=True)
class Preset:
    """A profile as data: ``train`` and ``lora_dropout`` override the default `RunConfig`; every point (a dict
    of grid overrides) runs once per seed ``0 .. seeds - 1``; ``post`` and ``post_for`` are the
    `analysis.spec.StudySpec` fields of the same name."""

    description: str
    focus: Focus
    train: Mapping[str, Any]
    lora_dropout: Mapping[str, Any]
    points: tuple[Mapping[str, Any], ...]
    post: PostTraining = field(default_factory=PostTraining)
    post_for: tuple[tuple[dict[str, Any], dict[str, Any]], ...] = ()
    seeds: int = 1

    def profile(self, name: str, *, model: str | None = None, data: str | None = None, seeds: int | None = None
                ) -> Profile:
        """The profile ``name`` of this preset; ``model``/``data``/``seeds`` override it."""
        train = dict(self.train)
        if model:
            train["model"] = model
        if data:
            train["data"] = data
        base = RunConfig().replace(train=train, lora_dropout=dict(self.lora_dropout))
        seeded = tuple({**pt, "seed": s} for s in range(seeds or self.seeds) for pt in self.points)
        spec = StudySpec(name=name, base=base, points=seeded, post=self.post, post_for=self.post_for)
        return Profile(name, spec, self.focus, self.description)


_PANEL = {"curvature": True, "certify": True}  # quick's p panel: curvature probes and the certificate
#: The full profile's runs of Figures 1 and 3 evaluate every 6 of their 64 steps (12 points with step 0).
_DENSE = {"eval_every": 6}
#: The full profile's AdaLoRA learning rate. peft starts AdaLoRA at Lambda = 0 with P and Q drawn at std
#: 0.02, so in 64 steps its update P Lambda Q stays far smaller than LoRA's B A at the same rate: at LoRA's
#: 2e-3 both AdaLoRA arms predicted the majority class on every seed. Of 2e-3, 1e-2, 2e-2 and 4e-2 (seed
#: 0, no dropout, 2026-12-02), 1e-2 is the smallest at which it learns (test accuracy 0.695 against a
#: majority class of 0.547). Both AdaLoRA arms use it, so their comparison stays paired.
ADALORA_LR = 1e-2

PRESETS: dict[str, Preset] = {
    "quick": Preset(
        description="quick: 1 seed, n_train 192, 4 epochs, 5 runs (about 15 minutes on a 2-core CPU)",
        focus=Focus(0.3, 2),
        # sized to the demo's budget: evaluations (every member on every test example) were 40% of a run
        train={"n_train": 192, "n_test": 200, "epochs": 4, "lr": 2e-3, "eval_every": 12, "eval_train_size": 64,
               "batch_size": 32},
        lora_dropout={"dropout_rate": 0.3, "n_instances": 2},
        points=({"dropout_rate": 0.0, "n_instances": 1}, {"dropout_rate": 0.3, "n_instances": 1},
                {"dropout_rate": 0.3, "n_instances": 2}, {"dropout_rate": 0.3, "n_instances": 4},
                {"dropout_rate": 0.6, "n_instances": 2}),
        # eta on the first 64 training examples (a labelled subset): per-sample gradients of all of them in the
        # delta_w space were the largest single cost of the demo
        post=PostTraining(curvature=False, probe_examples=32, lipschitz_examples=64, lanczos_tol=1e-2,
                          posterior_std_grid=QUICK_POSTERIOR_STD_GRID, posterior_draws=2, certify_prior="init"),
        # the p panel: curvature probes and the PAC-Bayes dropout certificate (data-free prior, k = 2)
        post_for=(({"dropout_rate": 0.0, "n_instances": 1}, _PANEL),
                  ({"dropout_rate": 0.3, "n_instances": 2},
                   {**_PANEL, "stability_k": 2, "stability_methods": ("retrain", "warm_start")}),
                  ({"dropout_rate": 0.6, "n_instances": 2}, _PANEL)),
    ),
    "full": Preset(
        description=("full: 3 seeds, n_train 500, p and N grids, AdaLoRA with and without LoRA Dropout, probes on "
                     "the p panel (about 2.5 hours on 2 CPU cores)"),
        focus=Focus(0.3, 2),
        # eval_train_size 200: the two dense runs evaluate 12 times, and evaluation (every member on every
        # example) is most of their cost
        train={"n_train": 500, "n_test": 600, "epochs": 4, "lr": 2e-3, "eval_every": 32, "eval_train_size": 200},
        lora_dropout={"dropout_rate": 0.3, "n_instances": 2},
        points=({"dropout_rate": 0.0, "n_instances": 1, **_DENSE},
                {"dropout_rate": 0.1, "n_instances": 2}, {"dropout_rate": 0.3, "n_instances": 2, **_DENSE},
                {"dropout_rate": 0.5, "n_instances": 2},
                {"dropout_rate": 0.3, "n_instances": 1}, {"dropout_rate": 0.3, "n_instances": 4},
                # the paper's second headline claim: AdaLoRA + Dropout against AdaLoRA, same seeds
                {"method": "adalora", "lr": ADALORA_LR, "dropout_rate": 0.0, "n_instances": 1},
                {"method": "adalora", "lr": ADALORA_LR, "dropout_rate": 0.3, "n_instances": 2}),
        # eta on the first 128 training examples, a subset the report labels: per-sample gradients of all 500
        # in the delta_w space took most of the 44 minutes of the first dense run
        post=PostTraining(curvature=False, probe_examples=32, lipschitz_examples=128, lanczos_tol=1e-2),
        post_for=(({"method": "lora", "n_instances": 2}, {"curvature": True}),
                  ({"method": "lora", "dropout_rate": 0.0}, {"curvature": True}),
                  ({"method": "lora", "dropout_rate": 0.3, "n_instances": 2, "seed": 0},
                   {"curvature": True, "stability_k": 4, "stability_methods": ("influence", "warm_start", "retrain")})),
        seeds=3,
    ),
    "paper": Preset(
        description="paper: GPU configuration (larger model and data via --model/--data), 3 seeds",
        focus=Focus(0.5, 4),
        train={"n_train": None, "n_test": None, "epochs": 10, "lr": 5e-4, "batch_size": 32, "eval_every": 0,
               "eval_train_size": None, "max_length": 128, "base_dropout": None},
        lora_dropout={"dropout_rate": 0.5, "n_instances": 4},
        points=({"dropout_rate": 0.0, "n_instances": 1},
                *({"dropout_rate": p, "n_instances": 4} for p in (0.1, 0.3, 0.5, 0.7, 0.9)),
                *({"dropout_rate": 0.5, "n_instances": n} for n in (1, 2, 8)),
                {"method": "adalora", "dropout_rate": 0.0, "n_instances": 1},
                {"method": "adalora", "dropout_rate": 0.5, "n_instances": 4}),
        post=PostTraining(curvature=True, probe_examples=512, lanczos_tol=1e-3),
        post_for=(({"method": "lora", "dropout_rate": 0.5, "n_instances": 4}, {"stability_k": 16}),),
        seeds=3,
    ),
    # instruction tuning of the embedded causal LM; batch x length stays near 1k tokens per instance
    "lm": Preset(
        description=("lm: instruction tuning of SmolLM2-135M-Instruct on sentiment instructions, scored as "
                     "multiple choice; 2 runs (slow on CPU: use a GPU)"),
        focus=Focus(0.3, 2),
        train={"task": "instruction", "n_train": 64, "n_test": 64, "epochs": 2, "lr": 1e-3, "batch_size": 8,
               "max_length": 128, "eval_every": 0, "eval_train_size": 64, "eval_batch_size": 8},
        lora_dropout={"dropout_rate": 0.3, "n_instances": 2},
        points=({"dropout_rate": 0.0, "n_instances": 1}, {"dropout_rate": 0.3, "n_instances": 2}),
    ),
    # docs/certificate.md, measured feasibility: a prior trained on half the data, the posterior continued
    # from it on all of it at a fifth of the learning rate for one epoch
    "certify": Preset(
        description=("certify: the PAC-Bayes dropout certificate (the toolkit's own, docs/certificate.md) over p; "
                     "all training examples, a prior trained on half of them, 1 seed (long on a CPU)"),
        focus=Focus(0.3, 2),
        train={"n_train": None, "n_test": None, "epochs": 1, "lr": 5e-4, "prior_fraction": 0.5, "posterior_lr": 1e-4,
               "posterior_epochs": 1, "eval_every": 0},
        lora_dropout={"dropout_rate": 0.3, "n_instances": 2},
        points=({"dropout_rate": 0.0, "n_instances": 1},
                *({"dropout_rate": p, "n_instances": 2} for p in (0.1, 0.3, 0.5))),
        post=PostTraining(certify=True, posterior_draws=4, certify_prior="trained", learn_posterior=True),
    ),
}
#: The preset names, in the order the command line lists them.
PROFILES = tuple(PRESETS)


def make_profile(name: str, *, model: str | None = None, data: str | None = None, seeds: int | None = None
                 ) -> Profile:
    """The study of a profile (see the module docstring); ``model``/``data``/``seeds`` override it."""
    if name not in PRESETS:
        raise ValueError(f"profile={name!r} is not one of {PROFILES}")
    return PRESETS[name].profile(name, model=model, data=data, seeds=seeds)


def profile_with(profile: Profile, **train_changes) -> Profile:
    """A copy of a profile with training settings changed for every point (tests use tiny models)."""
    spec = dataclasses.replace(profile.spec, base=profile.spec.base.replace(train=train_changes))
    return dataclasses.replace(profile, spec=spec)
