"""Regenerate the small example run shipped with ``bounds`` (``bounds/data/example_run``).

    python -m analysis.example_run [--out bounds/data/example_run]

A tiny-scale run (`analysis.scales`: a 2-layer random BERT on the synthetic sentiment file) with every
table a bound report needs (samples, modules, probes, stability) and its ``bounds.json``. The test
suite evaluates the bounds on it and compares them with the stored ``bounds.json``, so the package
carries a worked example that needs neither torch nor a model. The adapter weights are left out.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

from bounds.report import write_bounds

DEFAULT_OUT = Path(__file__).resolve().parents[1] / "bounds" / "data" / "example_run"


def make_example_run(out: Path = DEFAULT_OUT) -> Path:
    from lora_dropout.probes.on_run import probe_run
    from lora_dropout.runs.run import train_run

    from .scales import profile_for

    base = profile_for("tiny").spec.base
    config = base.replace(train={"n_train": 48, "epochs": 3, "eval_train_size": 48},
                          lora_dropout={"dropout_rate": 0.3, "n_instances": 2})
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = train_run(config, tmp, run_id="example_run", progress=False).run_dir
        probe_run(run_dir, curvature=True, stability_k=3, probe_examples=32, tol=1e-6, progress=False)
        write_bounds(run_dir)  # the default BoundSettings
        shutil.rmtree(run_dir / "adapter")
        if out.exists():
            shutil.rmtree(out)
        shutil.copytree(run_dir, out)
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    print(f"wrote {make_example_run(args.out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
