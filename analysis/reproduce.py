"""``lora-dropout reproduce``: the study over p and N, probes, bounds, figures and a report, in one command.

The profiles (named studies) are `analysis.presets`.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from bounds.runlog import RunLogError, read_meta, run_state, write_atomic
from lora_dropout.runs.provenance import git_info, utc_now, versions

from .claims import DISAGREEMENT_FACTOR, check_all, estimator_disagreement
from .collect import collect
from .figures import save_figures, study_figures
from .presets import Focus, Profile, make_profile
from .spec import StudySpec
from .study import run_study
from .verdicts import VERDICT_RULE, Claim


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


def _one_line(error: str) -> str:
    """The last line of an error (a remote traceback's exception), for a report bullet."""
    lines = [ln.strip() for ln in str(error).strip().splitlines() if ln.strip()]
    return lines[-1] if lines else "unknown error"


def run_commits(runs: pd.DataFrame) -> dict[str, list[str]]:
    """Run ids by the commit each was trained at (``unknown`` when its meta.json has none)."""
    out: dict[str, list[str]] = {}
    if "commit" in runs:
        for run_id, commit in zip(runs["run_id"], runs["commit"], strict=True):
            out.setdefault(commit if isinstance(commit, str) and commit else "unknown", []).append(run_id)
    return {commit: sorted(ids) for commit, ids in sorted(out.items())}


def _run_commit_lines(provenance: dict) -> list[str]:
    # finished runs are kept when a study resumes, so they may come from an older commit than the report
    commits = provenance.get("run_commits") or {}
    if not commits or set(commits) == {provenance["commit"]}:
        return []
    parts = [f"`{c}` ({len(ids)} run{'s' if len(ids) > 1 else ''}: {', '.join(ids)})" for c, ids in commits.items()]
    return [f"Runs by the commit they were trained at (a resumed study keeps finished runs, so not all of them "
            f"come from this report's commit): {'; '.join(parts)}.", ""]


def write_report(path: Path, profile: Profile, claims: list[Claim], figures: list[Path], skipped, wall_s: float,
                 runs_wall_s: float, provenance: dict, disagreements=(), failed: dict[str, str] | None = None) -> Path:
    lines = [
        f"# LoRA Dropout reproduction: profile `{profile.name}`",
        "",
        f"{profile.description}. Generated {provenance['date']} from commit "
        f"`{provenance['commit']}`{' (dirty checkout)' if provenance['dirty'] else ''}; "
        f"regenerate with `{provenance['command']}`.",
        "",
        *_run_commit_lines(provenance),
        "## Claims",
        "",
        "Each claim of the paper (docs/experiments.md) and of its theory, checked on this study's "
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
    if failed:  # the run's training record (if any) is collected above; its failed step is named here
        lines += ["", "## Failed runs", ""] + [f"- `{run}`: {_one_line(error)}" for run, error in failed.items()]
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
    for flag, value in (("--figures-dir", figures_dir), ("--model", model), ("--data", data), ("--n-seeds", seeds)):
        if value is not None:
            command += f" {flag} {value}"
    provenance = {
        "commit": git["commit"], "dirty": git["dirty"], "profile": prof.name, "date": utc_now(),
        "command": command,
        "config": prof.spec.to_dict(), "run_ids": sorted(coll.runs["run_id"]) if len(coll.runs) else [],
        "run_commits": run_commits(coll.runs),
        "versions": versions(),
    }
    figure_list = study_figures(coll, ablation_arm, prof.focus)
    figures = save_figures(figure_list, figures_dir or out / "figures", provenance)
    claims = check_all(coll, ablation_arm, prof.focus)
    wall = time.monotonic() - t0
    runs_wall = float(coll.runs["wall_s"].sum()) if "wall_s" in coll.runs else float("nan")
    report = write_report(out / "report.md", prof, claims, figures, coll.skipped, wall, runs_wall, provenance,
                          disagreements=estimator_disagreement(coll.summary), failed=study.failed)
    return ReproduceResult(out, report, figures, claims, study.failed, wall)
