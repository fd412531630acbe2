"""``lora-dropout reproduce``: the study over p and N, probes, bounds, figures and a report, in one command.

Profiles
--------
quick
    What ``make demo`` runs: meant for about 15 minutes on a 2-core CPU (about 20-25 measured with the
    certificate and eta over every training example: to be trimmed). One seed, a small training
    set, five runs (plain LoRA; p = 0.3 at N = 1, 2, 4; p = 0.6 at N = 2), curvature probes (32
    examples, Lanczos to 1e-2) and the PAC-Bayes dropout certificate (data-free prior, posterior_std
    0.01 only, k = 2 draws: forward passes only) on the three runs of the p panel, and
    leave-one-out stability (coupled retraining and warm starts, k = 2) on the main one.
full
    The CPU study behind the committed ``figures/``: three seeds, 500 training examples, p in
    {0, 0.1, 0.3, 0.5} at N = 2, N in {1, 2, 4} at p = 0.3, AdaLoRA with and without LoRA Dropout
    (p = 0.3, N = 2), curvature probes on the LoRA p panel, and all three stability estimators on the
    main configuration (seed 0). The two runs drawn in Figures 1 and 3 evaluate every 6 steps (12
    points per curve). About 70 minutes on 2 CPU cores before the AdaLoRA arms and the denser curves
    were added; about 100 minutes estimated with them.
lm
    Instruction tuning (the paper's third setting at toy size): the embedded SmolLM2-135M-Instruct
    (converted from its GGUF wheel) on instruction-formatted Rotten Tomatoes examples, response-only
    loss, scored as two-option multiple choice with the test-time ensemble; plain LoRA against LoRA
    Dropout. Runs on a CPU, slowly (minutes per step); meant for a GPU.
certify
    The PAC-Bayes dropout certificate (the toolkit's own, theory.md section 6) over p: every training
    and test example of the default data (``n_train`` and ``n_test`` None), a prior trained on the
    first half of the seeded order (``prior_fraction`` 0.5, one epoch at lr 5e-4), the posterior
    continued from it on all examples for one epoch at lr 1e-4; p in {0.1, 0.3, 0.5} at N = 2 and
    plain LoRA as p = 0 (N = 1: at p = 0 the N instances are identical; no 1 - p discount); every run certified against the trained prior on the examples it did not see, with the
    default posterior_std grid and k = 4 draws. One seed (``--seeds`` for more). Long on a CPU (an hour
    or more); minutes on a GPU.
paper
    The GPU configuration: a larger model (``--model``, e.g. ``microsoft/deberta-v3-base``), GLUE-sized
    data (``--data hf:<dataset>`` where available; MRPC is the paper's Figure 5 task), the paper's p and
    N grid, AdaLoRA next to LoRA, three seeds.
"""

from __future__ import annotations

import dataclasses
import os
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from bounds.runlog import RunLogError, read_meta, run_state, write_atomic
from lora_dropout.runs.config import RunConfig
from lora_dropout.runs.provenance import git_info, utc_now, versions

from .claims import DISAGREEMENT_FACTOR, VERDICT_RULE, Claim, check_all, estimator_disagreement
from .collect import collect
from .figures import Focus, save_figures, study_figures
from .study import PostTraining, StudySpec, run_study

PROFILES = ("quick", "full", "paper", "lm", "certify")
#: The quick profile's posterior_std grid: one point, since a posterior draw of MiniLM costs a few times a
#: plain forward pass (per-example noise on every LoRA factor) and the demo has a 15-minute budget. The demo
#: shows the machinery: a data-free prior at n = 256 certifies little (theory.md section 6 measured 0.67 on
#: the whole data set; the `certify` profile is the one meant to be non-vacuous).
QUICK_POSTERIOR_STD_GRID = (0.01,)


@dataclass(frozen=True)
class Profile:
    name: str
    spec: StudySpec
    focus: Focus
    description: str


def make_profile(name: str, *, model: str | None = None, data: str | None = None, seeds: int | None = None
                 ) -> Profile:
    """The study of a profile (see the module docstring); ``model``/``data``/``seeds`` override it."""
    if name not in PROFILES:
        raise ValueError(f"profile={name!r} is not one of {PROFILES}")
    train: dict = {"model": model} if model else {}
    if data:
        train["data"] = data
    if name == "quick":
        base = RunConfig().replace(
            train={"n_train": 256, "n_test": 400, "epochs": 4, "lr": 2e-3, "eval_every": 16,
                   "eval_train_size": 128, "batch_size": 32, **train},
            lora_dropout={"dropout_rate": 0.3, "n_instances": 2})
        focus = Focus(0.3, 2)
        points = ({"dropout_rate": 0.0, "n_instances": 1}, {"dropout_rate": 0.3, "n_instances": 1},
                  {"dropout_rate": 0.3, "n_instances": 2}, {"dropout_rate": 0.3, "n_instances": 4},
                  {"dropout_rate": 0.6, "n_instances": 2})
        post = PostTraining(curvature=False, probe_examples=32, lanczos_tol=1e-2,
                            posterior_std_grid=QUICK_POSTERIOR_STD_GRID, posterior_draws=2, certify_prior="init")
        # the p panel: curvature probes and the PAC-Bayes dropout certificate (data-free prior, k = 2)
        panel = {"curvature": True, "certify": True}
        post_for = (({"dropout_rate": 0.0, "n_instances": 1}, panel),
                    ({"dropout_rate": 0.3, "n_instances": 2},
                     {**panel, "stability_k": 2, "stability_methods": ("retrain", "warm_start")}),
                    ({"dropout_rate": 0.6, "n_instances": 2}, panel))
        n_seeds = seeds or 1
        description = "quick: 1 seed, n_train 256, 4 epochs, 5 runs (about 20-25 minutes on a 2-core CPU)"
    elif name == "certify":
        # theory.md section 6, measured feasibility: a prior trained on half the data, the posterior
        # continued from it on all of it at a fifth of the learning rate for one epoch
        base = RunConfig().replace(
            train={"n_train": None, "n_test": None, "epochs": 1, "lr": 5e-4, "prior_fraction": 0.5, "posterior_lr": 1e-4,
                   "posterior_epochs": 1, "eval_every": 0, **train},
            lora_dropout={"dropout_rate": 0.3, "n_instances": 2})
        focus = Focus(0.3, 2)
        points = ({"dropout_rate": 0.0, "n_instances": 1},
                  *({"dropout_rate": p, "n_instances": 2} for p in (0.1, 0.3, 0.5)))
        post = PostTraining(certify=True, posterior_draws=4, certify_prior="trained")
        post_for = ()
        n_seeds = seeds or 1
        description = ("certify: the PAC-Bayes dropout certificate (the toolkit's own, theory.md section 6) over p; "
                       "all training examples, a prior trained on half of them, 1 seed (long on a CPU)")
    elif name == "full":
        base = RunConfig().replace(
            train={"n_train": 500, "n_test": 600, "epochs": 4, "lr": 2e-3, "eval_every": 32,
                   "eval_train_size": 300, **train},
            lora_dropout={"dropout_rate": 0.3, "n_instances": 2})
        focus = Focus(0.3, 2)
        # the two runs of Figures 1 and 3 evaluate every 6 of their 64 steps (12 points with step 0)
        dense = {"eval_every": 6}
        points = ({"dropout_rate": 0.0, "n_instances": 1, **dense},
                  {"dropout_rate": 0.1, "n_instances": 2}, {"dropout_rate": 0.3, "n_instances": 2, **dense},
                  {"dropout_rate": 0.5, "n_instances": 2},
                  {"dropout_rate": 0.3, "n_instances": 1}, {"dropout_rate": 0.3, "n_instances": 4},
                  # the paper's second headline claim: AdaLoRA + Dropout against AdaLoRA, same seeds
                  {"method": "adalora", "dropout_rate": 0.0, "n_instances": 1},
                  {"method": "adalora", "dropout_rate": 0.3, "n_instances": 2})
        post = PostTraining(curvature=False, probe_examples=32, lanczos_tol=1e-2)
        post_for = (({"method": "lora", "n_instances": 2}, {"curvature": True}),
                    ({"method": "lora", "dropout_rate": 0.0}, {"curvature": True}),
                    ({"dropout_rate": 0.3, "n_instances": 2, "seed": 0},
                     {"curvature": True, "stability_k": 4,
                      "stability_methods": ("influence", "warm_start", "retrain")}))
        n_seeds = seeds or 3
        description = ("full: 3 seeds, n_train 500, p and N grids, AdaLoRA with and without LoRA Dropout, probes on "
                       "the p panel (about 100 minutes on 2 CPU cores)")
    elif name == "lm":
        # instruction tuning of the embedded causal LM; batch x length stays near 1k tokens per instance
        base = RunConfig().replace(
            train={"task": "instruction", "n_train": 64, "n_test": 64, "epochs": 2, "lr": 1e-3, "batch_size": 8,
                   "max_length": 128, "eval_every": 0, "eval_train_size": 64, "eval_batch_size": 8, **train},
            lora_dropout={"dropout_rate": 0.3, "n_instances": 2})
        focus = Focus(0.3, 2)
        points = ({"dropout_rate": 0.0, "n_instances": 1}, {"dropout_rate": 0.3, "n_instances": 2})
        post, post_for = PostTraining(), ()
        n_seeds = seeds or 1
        description = ("lm: instruction tuning of SmolLM2-135M-Instruct on sentiment instructions, scored as "
                       "multiple choice; 2 runs (slow on CPU: use a GPU)")
    else:
        base = RunConfig().replace(
            train={"n_train": None, "n_test": None, "epochs": 10, "lr": 5e-4, "batch_size": 32,
                   "eval_every": 0, "eval_train_size": None, "max_length": 128, "base_dropout": None, **train},
            lora_dropout={"dropout_rate": 0.5, "n_instances": 4})
        focus = Focus(0.5, 4)
        points = ({"dropout_rate": 0.0, "n_instances": 1},
                  *({"dropout_rate": p, "n_instances": 4} for p in (0.1, 0.3, 0.5, 0.7, 0.9)),
                  *({"dropout_rate": 0.5, "n_instances": n} for n in (1, 2, 8)),
                  {"method": "adalora", "dropout_rate": 0.0, "n_instances": 1},
                  {"method": "adalora", "dropout_rate": 0.5, "n_instances": 4})
        post = PostTraining(curvature=True, probe_examples=512, lanczos_tol=1e-3)
        post_for = (({"method": "lora", "dropout_rate": 0.5, "n_instances": 4}, {"stability_k": 16}),)
        n_seeds = seeds or 3
        description = "paper: GPU configuration (larger model and data via --model/--data), 3 seeds"
    seeded = tuple({**pt, "seed": s} for s in range(n_seeds) for pt in points)
    spec = StudySpec(name=name, base=base, points=seeded, post=post, post_for=post_for)
    return Profile(name, spec, focus, description)


def lora_runs(study_dir: Path, spec: StudySpec) -> list[tuple[str, int]]:
    """``(run id, seed)`` of the successful plain-LoRA runs of a study (the Drop_test / NoDrop arms)."""
    out = []
    for point in spec.expand():
        ld = point.config.lora_dropout
        if point.config.adapter.method == "lora" and ld.dropout_rate == 0 and ld.n_instances == 1:
            try:
                if run_state(read_meta(study_dir / point.run_id)) == "success":
                    out.append((point.run_id, point.config.train.seed))
            except RunLogError:
                continue
    return out


def drop_test(study_dir: Path, spec: StudySpec, focus: Focus, cache: Path) -> pd.DataFrame:
    """Drop_test arm of the ablation: plain LoRA runs evaluated with a LoRA Dropout ensemble at ``p``.

    The ensemble has ``focus.n_instances`` members drawn from the evaluation stream. Cached in
    ``cache`` (one row per run), so a resumed reproduction does not repeat it.
    """
    from lora_dropout.method.apply import apply_lora_dropout
    from lora_dropout.runs.evaluate import run_split, summary_rows
    from lora_dropout.runs.run import load_run

    done = pd.read_parquet(cache) if cache.exists() else pd.DataFrame(columns=["run_id", "seed", "dropout_rate",
                                                                               "accuracy", "risk"])
    rows = [r for r in done.to_dict("records") if r["dropout_rate"] == focus.dropout_rate]
    have = {r["run_id"] for r in rows}
    for run_id, seed in lora_runs(study_dir, spec):
        if run_id in have:
            continue
        loaded = load_run(study_dir / run_id)
        cfg = loaded.handle.config.replace(dropout_rate=focus.dropout_rate, n_instances=focus.n_instances,
                                           n_eval_instances=focus.n_instances)
        handle = apply_lora_dropout(loaded.model, cfg)
        logits = run_split(loaded.model, handle, loaded.prepared.test, "test",
                           batch_size=loaded.config.train.eval_batch_size, device=loaded.model.device)
        ens = next(r for r in summary_rows(logits) if r["predictor"] == "ensemble")
        rows.append({"run_id": run_id, "seed": seed, "dropout_rate": focus.dropout_rate,
                     "accuracy": ens["accuracy"], "risk": ens["risk"]})
    frame = pd.DataFrame(rows, columns=["run_id", "seed", "dropout_rate", "accuracy", "risk"])
    write_atomic(cache, lambda tmp: frame.to_parquet(tmp, index=False))
    return frame


def write_report(path: Path, profile: Profile, claims: list[Claim], figures: list[Path], skipped, wall_s: float,
                 runs_wall_s: float, provenance: dict, disagreements=()) -> Path:
    lines = [
        f"# LoRA Dropout reproduction: profile `{profile.name}`",
        "",
        f"{profile.description}. Generated {provenance['date']} from commit "
        f"`{provenance['commit']}`{' (dirty checkout)' if provenance['dirty'] else ''}; "
        f"regenerate with `{provenance['command']}`.",
        "",
        "## Claims",
        "",
        "Each claim of the paper (theory.md section 5) and of its theory, checked on this study's "
        "measurements. At this scale a claim may fail; the numbers say by how much.",
        "",
        f"Verdicts: {VERDICT_RULE}",
        "",
        "| claim | result | evidence |",
        "|---|---|---|",
    ]
    lines += [f"| {c.statement} | **{c.verdict.value}** | {c.evidence} |" for c in claims]
    if disagreements:  # `estimator_disagreement`: (run_id, (largest, smallest method), ratio)
        lines += ["", f"**Flag:** leave-one-out estimators of beta that disagree by more than "
                  f"{DISAGREEMENT_FACTOR:g}x (see the README's note on the three estimators):", ""]
        lines += [f"- `{run}`: beta_hat of {high} is {ratio:.3g} times that of {low}"
                  for run, (high, low), ratio in disagreements]
    lines += ["", "## Figures", ""]
    lines += [f"![{p.stem}]({os.path.relpath(p, path.parent)})" for p in figures]
    if skipped:
        lines += ["", "## Skipped runs", ""] + [f"- `{run}`: {reason}" for run, reason in skipped]
    # a resumed invocation is short; the summed run times say what the study itself cost
    lines += ["", f"Wall time of this invocation: {wall_s / 60:.1f} minutes (finished runs are kept, not redone); "
              f"training and evaluation of all runs: {runs_wall_s / 60:.1f} minutes in total.", ""]
    text = "\n".join(lines)
    return write_atomic(path, lambda tmp: tmp.write_text(text))


@dataclass(frozen=True)
class ReproduceResult:
    out: Path
    report: Path
    figures: list[Path]
    claims: list[Claim]
    failed: dict[str, str]
    wall_s: float


def reproduce(profile: str | Profile, out: str | Path, *, executor: str = "local", address: str | None = None,
              model: str | None = None, data: str | None = None, seeds: int | None = None,
              progress: bool = True, figures_dir: str | Path | None = None) -> ReproduceResult:
    """Run (or resume) a profile's study into ``out`` and write ``collected/``, figures and ``report.md``."""
    t0 = time.monotonic()
    prof = profile if isinstance(profile, Profile) else make_profile(profile, model=model, data=data, seeds=seeds)
    out = Path(out)
    runs_dir = out / "runs"
    study = run_study(prof.spec, runs_dir, executor=executor, address=address, progress=progress)
    ablation_arm = drop_test(runs_dir, prof.spec, prof.focus, out / "drop_test.parquet")
    coll = collect(runs_dir)
    coll.save(out / "collected")
    git = git_info()
    command = f"lora-dropout reproduce --profile {prof.name} --out {out}"
    for flag, value in (("--figures-dir", figures_dir), ("--model", model), ("--data", data), ("--seeds", seeds)):
        if value is not None:
            command += f" {flag} {value}"
    provenance = {
        "commit": git["commit"], "dirty": git["dirty"], "profile": prof.name, "date": utc_now(),
        "command": command,
        "config": prof.spec.to_dict(), "run_ids": sorted(coll.runs["run_id"]) if len(coll.runs) else [],
        "versions": versions(),
    }
    figure_list = study_figures(coll, ablation_arm, prof.focus)
    figures = save_figures(figure_list, figures_dir or out / "figures", provenance)
    claims = check_all(coll, ablation_arm, prof.focus)
    wall = time.monotonic() - t0
    runs_wall = float(coll.runs["wall_s"].sum()) if "wall_s" in coll.runs else float("nan")
    report = write_report(out / "report.md", prof, claims, figures, coll.skipped, wall, runs_wall, provenance,
                          disagreements=estimator_disagreement(coll.summary))
    return ReproduceResult(out, report, figures, claims, study.failed, wall)


def profile_with(profile: Profile, **train_changes) -> Profile:
    """A copy of a profile with training settings changed for every point (tests use tiny models)."""
    spec = dataclasses.replace(profile.spec, base=profile.spec.base.replace(train=train_changes))
    return dataclasses.replace(profile, spec=spec)
