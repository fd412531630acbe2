"""One study point from start to finish: train (unless done), probe, measure stability, certify, write
bounds.json.

Each step checks what the run directory already holds, so an interrupted point resumes where it
stopped: a successful training is never repeated; probes, stability and certificates are added when missing
(certificates and a learned posterior also when measured with other settings than the point's).
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from bounds.report import recorded_certificate, write_bounds
from bounds.runlog import PRIOR_DIR, TABLES, read_learned_record, read_meta, run_state
from bounds.settings import BoundSettings, CertificateSettings

from .spec import Point, PostTraining


def certificates_current(run_dir: str | Path, post: PostTraining) -> bool:
    """Whether ``run_dir/certificates.parquet`` was measured with ``post``'s grid, ``posterior_draws`` and
    prior (`certificates_match`)."""
    return certificates_match(run_dir, CertificateSettings(posterior_std_grid=post.posterior_std_grid,
                                                           posterior_draws=post.posterior_draws,
                                                           prior=post.certify_prior))


def certificates_match(run_dir: str | Path, wanted: CertificateSettings) -> bool:
    """Whether ``run_dir/certificates.parquet`` was measured with ``wanted``: the same ``posterior_std`` grid (in
    any order) and, for each other field that is not None, the same value; the prior always, None meaning the
    one ``certify_run`` would pick (``trained`` when ``prior/prior.safetensors`` exists, else ``init``). A
    missing or unreadable table does not match."""
    path = Path(run_dir) / TABLES["certificates"].filename
    if not path.is_file():
        return False
    try:
        table = pd.read_parquet(path)
    except Exception:  # unreadable: measure again
        return False
    prior = wanted.prior or ("trained" if (Path(run_dir) / PRIOR_DIR / "prior.safetensors").is_file() else "init")
    grid = sorted(wanted.posterior_std_grid)
    found = sorted(float(v) for v in table["posterior_std"])
    fields = {"draws": wanted.posterior_draws, "delta": wanted.delta, "delta_mc": wanted.delta_mc,
              "seed": wanted.seed, "prior": prior, "grid_size": len(grid)}
    return (len(found) == len(grid) and all(math.isclose(a, b, rel_tol=1e-9) for a, b in zip(found, grid, strict=True))
            and all(column in table and set(table[column]) == {value}
                    for column, value in fields.items() if value is not None))


def learned_current(run_dir: str | Path, post: PostTraining) -> bool:
    """Whether ``run_dir/learned_certificates.parquet`` was measured over ``post``'s grid with its draws, from a
    posterior learned against the prior the grid certificate used."""
    return learned_matches(run_dir, post.posterior_std_grid, post.posterior_draws)


def learned_matches(run_dir: str | Path, grid, draws: int) -> bool:
    """`learned_current` for a grid and a number of draws."""
    path = Path(run_dir) / TABLES["learned_certificates"].filename
    try:
        record = read_learned_record(run_dir)
        table = pd.read_parquet(path, columns=["prior_std", "draws", "prior"]) if path.is_file() else None
        measured = pd.read_parquet(Path(run_dir) / TABLES["certificates"].filename, columns=["prior"])
    except Exception:  # unreadable: learn again
        return False
    if record is None or table is None:
        return False
    same_grid = sorted(record["prior_std_grid"]) == sorted(grid) == sorted(table["prior_std"])
    return (same_grid and set(table["draws"]) == {draws}
            and set(table["prior"]) == {record["prior"]} == set(measured["prior"]))


def certify_and_learn(run_dir: str | Path, wanted: CertificateSettings, *, assume_iid_rows: bool = False,
                      learn=None, batch_size: int | None = None, device: str | None = None, force: bool = False,
                      progress: bool = True) -> tuple[bool, bool]:
    """The one certify -> learn sequence, for ``lora-dropout certify`` and a study point alike; returns
    ``(measured, learned)``.

    The grid certificate is measured unless ``certificates.parquet`` already holds one with ``wanted``'s settings
    and level (`certificates_match`; the draws are a function of the seed and the sample ids, so measuring again
    would repeat them) or ``force``. With ``learn`` (`lora_dropout.certify.learned.LearnSettings`) a posterior is
    then learned against the grid's prior and certified, unless a current one is there (`learned_matches`) and the
    grid was not measured again. Each measurement is one more certificate tried on the run (certify_log.jsonl);
    recording the reports is the caller's (bounds.json).
    """
    from lora_dropout.certify.measure import (
        DEFAULT_DELTA,
        DEFAULT_DELTA_MC,
        DEFAULT_POSTERIOR_DRAWS,
        certify_run,
    )

    run_dir = Path(run_dir)
    draws = wanted.posterior_draws or DEFAULT_POSTERIOR_DRAWS
    delta = DEFAULT_DELTA if wanted.delta is None else wanted.delta
    delta_mc = DEFAULT_DELTA_MC if wanted.delta_mc is None else wanted.delta_mc
    rows_level = (run_dir / TABLES["certificates_iid_rows"].filename).is_file()
    measured = force or not certificates_match(run_dir, wanted) or rows_level != assume_iid_rows
    if measured:
        certify_run(run_dir, posterior_std_grid=wanted.posterior_std_grid, posterior_draws=draws, delta=delta,
                    delta_mc=delta_mc, prior=wanted.prior, assume_iid_rows=assume_iid_rows, batch_size=batch_size,
                    seed=wanted.seed, device=device, progress=progress)
    learned = learn is not None and (measured or not learned_matches(run_dir, wanted.posterior_std_grid, draws))
    if learned:
        from lora_dropout.certify.learned import certify_learned, learn_posterior

        prior = pd.read_parquet(run_dir / TABLES["certificates"].filename, columns=["prior"])["prior"].iloc[0]
        learn_posterior(run_dir, prior_std_grid=wanted.posterior_std_grid, settings=learn, delta=delta,
                        prior=str(prior), device=device, progress=progress)
        certify_learned(run_dir, posterior_draws=draws, delta_mc=delta_mc, batch_size=batch_size, device=device,
                        progress=progress)
    return measured, learned


def certificate_settings(run_dir: Path, post: PostTraining) -> CertificateSettings | None:
    """What the run's ``certificates.parquet`` was measured with, for bounds.json's ``settings["certificate"]``
    (the grid there is the one the certificate's ``grid_fixed_in_advance`` audit is held against): the
    point's settings when it certifies, else those a ``lora-dropout certify`` recorded in bounds.json;
    None without certificates."""
    if not (run_dir / TABLES["certificates"].filename).is_file():
        return None
    if post.certify:
        table = pd.read_parquet(run_dir / TABLES["certificates"].filename, columns=["prior", "delta", "delta_mc",
                                                                                     "seed"])
        first = table.iloc[0]
        return CertificateSettings(posterior_std_grid=tuple(post.posterior_std_grid),
                                   posterior_draws=post.posterior_draws, delta=float(first["delta"]),
                                   delta_mc=float(first["delta_mc"]), prior=str(first["prior"]),
                                   seed=int(first["seed"]))
    return recorded_certificate(run_dir)


def run_point(study_dir: Path, point: Point, *, progress: bool = False) -> Path:
    """Bring ``study_dir / point.run_id`` to completion and return it."""
    from lora_dropout.probes.on_run import probe_run
    from lora_dropout.runs.run import train_run

    run_dir = study_dir / point.run_id
    trained = (run_dir / "meta.json").exists() and run_state(read_meta(run_dir)) == "success"
    if not trained:
        train_run(point.config, study_dir, run_id=point.run_id, progress=progress)
    post = point.post
    need_probes = post.curvature and not (run_dir / "probes.parquet").exists()
    need_stability = post.stability_k > 0 and not (run_dir / "stability.parquet").exists()
    if need_probes or need_stability:
        probe_run(run_dir, curvature=need_probes, spaces=post.spaces, stability_k=post.stability_k if
                  need_stability else 0, methods=post.stability_methods, lam=post.lam,
                  probe_examples=post.probe_examples, lipschitz_examples=post.lipschitz_examples,
                  tol=post.lanczos_tol, progress=progress)
    if post.certify:
        from lora_dropout.certify.learned import LearnSettings

        certify_and_learn(run_dir, CertificateSettings(posterior_std_grid=post.posterior_std_grid,
                                                       posterior_draws=post.posterior_draws, prior=post.certify_prior),
                          learn=LearnSettings() if post.learn_posterior else None, progress=progress)
    write_bounds(run_dir, BoundSettings(lam=post.lam, certificate=certificate_settings(run_dir, post)))
    return run_dir
