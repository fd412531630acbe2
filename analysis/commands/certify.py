"""``certify``: the PAC-Bayes dropout certificate of a finished run (the toolkit's own, docs/certificate.md).

`add_certify(sub)` adds the parser; `cmd_certify(args)` measures, prints and records the certificate, importing
its heavy dependencies only then.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from .common import friendly, guarded, positive_int, quiet_libraries


def _format_certificates(table, reports) -> str:
    """One line per posterior_std (KL, empirical Gibbs error, its Monte Carlo upper value, certificate,
    measured test Gibbs error, ensemble bound), then the best of each report."""
    lines = [f"  {'posterior_std':>13} {'KL':>11} {'gibbs_err':>9} {'MC upper':>9} {'certificate':>11} "
             f"{'test_err':>8} {'lin_cert':>8} {'ens_0-1':>7}"]
    for r in table.itertuples():
        lines.append(f"  {r.posterior_std:>13.6g} {r.kl:>11.5g} {r.train_gibbs_error:>9.4f} {r.gibbs_upper:>9.4f} "
                     f"{r.certificate:>11.4f}{'*' if r.vacuous else ' '}{r.test_gibbs_error:>8.4f} "
                     f"{r.linear_certificate:>8.4f} {r.ensemble_zero_one:>7.4f}")
    lines.append("  (* vacuous: certificate >= 1)")
    for report in reports:
        sigma = {q.name: q.value for q in report.inputs}.get("posterior_std", float("nan"))
        lines.append(f"best {report.name} [{report.status}]: {report.value:.4f} at posterior_std={sigma:g}; "
                     f"measured {report.measured_name} = {report.measured:.4f}")
        failing = [a.name for a in report.assumptions if a.holds is False]
        if failing:
            lines.append(f"  audit FAILS: {', '.join(failing)} (see bounds.json)")
    return "\n".join(lines)


def cmd_certify(args: argparse.Namespace) -> int:
    import pandas as pd

    from bounds.report import (
        certificate_reports,
        certificate_table,
        learned_certificate_reports,
        write_certificate_entries,
    )
    from bounds.runlog import (
        CERTIFY_LOG,
        DEFAULT_POSTERIOR_STD_GRID,
        LEARNED_DIR,
        TABLES,
        read_learned_record,
    )
    from bounds.settings import CertificateSettings
    from lora_dropout.certify.learned import LearnSettings

    from ..pipeline import certify_and_learn

    quiet_libraries()
    grid = tuple(args.posterior_std_grid or DEFAULT_POSTERIOR_STD_GRID)
    wanted = CertificateSettings(posterior_std_grid=grid, posterior_draws=args.posterior_draws, delta=args.delta,
                                 delta_mc=args.delta_mc, prior=args.prior, seed=args.seed)
    learn = (LearnSettings(epochs=args.learn_epochs, lr=args.learn_lr, std_lr=args.learn_std_lr,
                           batch_size=args.batch_size, surrogate=args.learn_surrogate) if args.learn_posterior else None)
    outcome = guarded(lambda: certify_and_learn(args.run_dir, wanted, assume_iid_rows=args.assume_iid_rows, learn=learn,
                                                batch_size=args.batch_size, device=args.device, force=args.force,
                                                progress=not args.quiet),
                      "every table finished before it was kept (certify_log.jsonl lists them); the rest was not "
                      "written")
    if isinstance(outcome, int):
        return outcome
    measured, learned = outcome
    path = args.run_dir / TABLES["certificates"].filename
    if not measured:
        print(f"{path} already holds this grid, k, delta, delta_mc, prior, seed and level: not measured again "
              "(--force measures it again, and counts as one more certificate tried on the run)")
    table = pd.read_parquet(path)
    reports = certificate_reports(args.run_dir, posterior_std_grid=grid)
    row = table.iloc[0]
    d = {q.name: q.value for q in reports[0].inputs}
    print(f"certify {reports[0].run_id}: prior={row.prior}, level {row.level} ({row.premise}), n_b={int(row.n_bound)} "
          f"{'groups' if row.level == 'group' else 'rows'} ({int(row.n_bound_rows)} rows), k={int(row.draws)}, "
          f"n_test={int(row.n_test)}, delta={row.delta:g} + delta_mc={row.delta_mc:g} over {len(grid)} "
          f"posterior_std and {int(d['certificates_tried'])} certificate(s) tried on the run, {int(row.passes)} "
          "passes (grid x k) over the certified and test splits")
    print(_format_certificates(certificate_table(table, delta=d["delta"], delta_mc=d["delta_mc"]), reports))
    for report in reports:  # the hold-out baseline beside each Gibbs certificate
        diag = {q.name: q.value for q in report.diagnostics}
        if "holdout_bound" in diag:
            print(f"  hold-out baseline ({report.name}): the prior's own Gibbs error {diag['holdout_gibbs_error']:.4f} "
                  f"on the certified units -> test-set bound {diag['holdout_bound']:.4f} (measured on test "
                  f"{diag['holdout_test_gibbs_error']:.4f}); certificate / hold-out = "
                  f"{diag['certificate_over_holdout']:.3f}")
    settings = dataclasses.replace(wanted, prior=str(row.prior), seed=int(row.seed))
    rows = path.with_name(TABLES["certificates_iid_rows"].filename)
    written = [path, *([rows] if rows.is_file() else []), args.run_dir / CERTIFY_LOG]
    if args.learn_posterior:
        if learned:
            record = read_learned_record(args.run_dir)
            print(f"learned posterior: bound objective per epoch {[round(v, 4) for v in record['objective']]}")
        else:
            print("the learned posterior is current (same grid, draws and prior): not learned again")
        written += [args.run_dir / LEARNED_DIR, args.run_dir / TABLES["learned_certificates"].filename]
        reports += learned_certificate_reports(args.run_dir, prior_std_grid=grid)
        best = reports[-1]
        sp = {q.name: q.value for q in best.inputs}["prior_std"]
        print(f"best {best.name} [{best.status}]: {best.value:.4f} at prior_std={sp:g}; measured "
              f"{best.measured_name} = {best.measured:.4f}")
    target = write_certificate_entries(args.run_dir, reports, settings)
    print("\n".join(f"wrote {path}" for path in [*written, target]))
    return 0


def add_certify(sub) -> None:
    """The ``certify`` parser."""
    cert = sub.add_parser("certify", help="PAC-Bayes dropout certificate of a finished run (toolkit's own)",
                          description="Measure the PAC-Bayes dropout certificate (docs/certificate.md) of a finished "
                                      "run against its prior (RUN_DIR/prior/): KL and empirical Gibbs errors per "
                                      "posterior_std, written to certificates.parquet; the certificates go into "
                                      "bounds.json.")
    cert.add_argument("run_dir", type=Path, metavar="RUN_DIR")
    cert.add_argument("--posterior-std-grid", type=float, nargs="+", default=None, metavar="SIGMA",
                      help="posterior_std values, fixed before looking at the data (default: 0.001 0.003 0.01 "
                           "0.03 0.1)")
    cert.add_argument("--posterior-draws", type=positive_int, default=4, metavar="K",
                      help="posterior draws per example (default: 4)")
    cert.add_argument("--delta", type=float, default=0.05, help="PAC-Bayes failure probability (default: 0.05)")
    cert.add_argument("--delta-mc", type=float, default=0.01,
                      help="Monte Carlo failure probability (default: 0.01)")
    cert.add_argument("--prior", choices=["init", "trained"], default=None,
                      help="prior mean: the seeded initialisation or the prior trained on the first prior_fraction "
                           "of the data (default: trained if present, else init)")
    cert.add_argument("--assume-iid-rows", action="store_true",
                      help="declare the rows of grouped data i.i.d. and also certify at row level "
                           "(certificates_iid_rows.parquet; by default grouped data are certified per group: "
                           "docs/certificate.md, Premises)")
    cert.add_argument("--batch-size", type=positive_int, default=None,
                      help="examples per forward pass before tiling by K (default: the run's eval batch size)")
    cert.add_argument("--seed", type=int, default=None,
                      help="root of the posterior noise (default: the run's mask seed)")
    cert.add_argument("--device", default=None, help="device (default: the run's)")
    cert.add_argument("--learn-posterior", action="store_true",
                      help="also learn the posterior's mean and one std per tensor by minimising the bound over the "
                           "grid (prior_std) and certify it: posterior/, learned_certificates.parquet")
    cert.add_argument("--learn-epochs", type=positive_int, default=1, help="epochs of that learning (default: 1)")
    cert.add_argument("--learn-lr", type=float, default=1e-4,
                      help="Adam learning rate of the learned mean (default: 1e-4)")
    cert.add_argument("--learn-std-lr", type=float, default=0.05,
                      help="Adam learning rate of the log stds (default: 0.05)")
    cert.add_argument("--learn-surrogate", choices=["linear", "bounded_ce"], default="linear",
                      help="the [0, 1] loss the learning objective averages: 1 - prob_y (default) or the bounded "
                           "cross-entropy of Perez-Ortiz et al. 2021")
    cert.add_argument("--force", action="store_true",
                      help="measure the grid certificate again even when certificates.parquet already holds one "
                           "with these settings (by default it is reused, e.g. when adding --learn-posterior)")
    cert.add_argument("--quiet", action="store_true", help="no progress bar")
    cert.set_defaults(func=friendly(cmd_certify))
