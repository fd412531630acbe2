"""Measurements on a finished run that need its model: curvature/Lipschitz probes and stability.

``lora-dropout probe RUN_DIR --curvature --stability-k 16`` rebuilds theta(S) from the run directory
(`lora_dropout.runs.run.load_run`), measures, and adds ``probes.parquet`` / ``stability.parquet`` to it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from bounds.runlog import Space, StabilityMethod, read_run

from ..runs.run import load_run
from ..runs.writer import write_table
from .measure import run_probes
from .stability import LoraLooProblem, choose_indices, estimate_stability


def _keep_other_hypotheses(run_dir: str | Path, frame: pd.DataFrame, hypothesis: str) -> pd.DataFrame:
    """``frame`` plus the rows of the run's probes.parquet measured at another hypothesis."""
    run = read_run(run_dir)
    if not run.has("probes"):
        return frame
    old = run.table("probes")  # a table from before the hypothesis column reads as unmasked
    old = old[old["hypothesis"] != hypothesis]
    return pd.concat([old.reindex(columns=frame.columns), frame], ignore_index=True) if len(old) else frame


@dataclass(frozen=True)
class ProbeResult:
    probes: Path | None
    stability: Path | None
    skipped: dict[str, str]


def probe_run(
    run_dir: str | Path,
    *,
    curvature: bool = True,
    spaces: tuple[Space | str, ...] = (Space.DELTA_W,),
    stability_k: int = 0,
    methods: tuple[StabilityMethod | str, ...] = tuple(StabilityMethod),
    lam: float = 1.0,
    probe_examples: int | None = 128,
    lipschitz_examples: int | None = None,
    tol: float = 1e-3,
    warm_epochs: int = 1,
    seed: int = 0,
    device: str | None = None,
    progress: bool = True,
    hypothesis: str = "unmasked",
) -> ProbeResult:
    """Measure ``run_dir``'s theta(S) and write the tables into it.

    Parameters
    ----------
    curvature : Lipschitz constants, Hessian extremes (Lanczos) and stationarity, per space.
    stability_k : leave-one-out indices (0 = none), drawn with ``seed`` from the training set.
    methods : stability estimators among ``retrain``, ``warm_start``, ``influence``.
    probe_examples : the first k training examples (of the seeded order) the Hessian probes (Lanczos)
        and the influence Hessian use; None = all. The Hessian of the mean loss is estimated on this
        subset.
    lipschitz_examples : the first k training examples the Lipschitz and stationarity probes use;
        None (default) = all ``n``, so ``eta`` is the maximum over every training example, as the
        bound needs (one per-sample-gradient pass). A subset is recorded in probes.parquet's ``n`` and
        labelled so in the bound reports.
    hypothesis : {"unmasked", "expected"}
        The predictor the curvature probes measure (`lora_dropout.probes.space`, "Hypotheses"): the unmasked
        model (default) or the expected predictor (every ``dW`` times its training mean, the ``expected``
        eval mode's scale). probes.parquet keeps the rows of the other hypothesis and replaces this one's.
        Leave-one-out stability is always of the unmasked model.
    """
    loaded = load_run(run_dir, device=device)
    if loaded.config.train.task != "classification":
        raise ValueError(
            f"{run_dir} is an {loaded.config.train.task} run: curvature probes and leave-one-out stability are "
            "implemented for classification runs (their loss is the cross-entropy of class logits)"
        )
    if stability_k and loaded.config.adapter.method == "adalora":
        raise ValueError(
            f"{run_dir} is an AdaLoRA run: leave-one-out retraining would also need AdaLoRA's rank-allocator "
            "state, which is not part of the saved adapter; stability is implemented for LoRA runs"
        )
    if stability_k and loaded.config.train.prior_fraction > 0:
        raise ValueError(
            f"{run_dir} trained a data-dependent prior (prior_fraction={loaded.config.train.prior_fraction!r}) "
            "before its posterior: leave-one-out retraining is implemented for runs without one"
        )
    train = loaded.prepared.train
    data = train if probe_examples is None else train.subset(range(min(probe_examples, len(train))))
    lipschitz_data = (train if lipschitz_examples is None
                      else train.subset(range(min(lipschitz_examples, len(train)))))
    probes_path = stability_path = None
    skipped: dict[str, str] = {}
    if curvature:
        frame = run_probes(loaded.model, loaded.handle, lipschitz_data, lam=lam, spaces=spaces, tol=tol,
                           hessian_data=data, hypothesis=hypothesis)
        probes_path = write_table(run_dir, "probes", _keep_other_hypotheses(run_dir, frame, hypothesis))
    if stability_k:
        problem = LoraLooProblem(loaded, lam=lam, warm_epochs=warm_epochs, probe_data=data)
        frame = estimate_stability(problem, choose_indices(len(train), stability_k, seed), methods,
                                   progress=progress)
        skipped = dict(frame.attrs.get("skipped", {}))
        if len(frame):
            stability_path = write_table(run_dir, "stability", frame)
    return ProbeResult(probes_path, stability_path, skipped)
