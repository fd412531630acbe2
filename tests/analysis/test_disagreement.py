"""The flag for runs whose leave-one-out estimators of beta disagree by more than 10x, and its report line."""

import math

import pandas as pd

from analysis.claims import estimator_disagreement
from analysis.presets import make_profile
from analysis.reproduce import write_report
from analysis.summary import row
from analysis.verdicts import Claim, Verdict


def _summary(rows):
    return pd.DataFrame(
        [{"run_id": run, **row("beta_hat", value, report=f"prop42[{method}]", estimator=method, hypothesis="unmasked")}
         for run, method, value in rows]
        + [{"run_id": "agree", **row("test_risk_full", 900.0, 0.0)}]  # not an estimate
    )


SUMMARY = _summary([
    # the shipped example run's values: retrain 0.011, warm start 0.0065, influence 1.5e-6
    ("example", "retrain", 0.011), ("example", "warm_start", 0.0065), ("example", "influence", 1.5e-6),
    ("agree", "retrain", 0.02), ("agree", "warm_start", 0.004), ("agree", "influence", 0.0021),  # 9.5x
    ("edge", "retrain", 0.1), ("edge", "influence", 0.01),  # exactly 10x: not more than 10x
    ("zero", "warm_start", 0.003), ("zero", "influence", 0.0),
    ("all_zero", "retrain", 0.0), ("all_zero", "warm_start", 0.0),
    ("alone", "retrain", 0.5),  # one estimator: nothing to compare
    ("nan", "retrain", 0.01), ("nan", "influence", math.nan),  # a missing estimate is not a disagreement
    ("inf", "retrain", 0.01), ("inf", "warm_start", math.inf),
])


def test_flags_exactly_the_runs_whose_estimators_differ_by_more_than_10x():
    flags = estimator_disagreement(SUMMARY)
    assert [run for run, _, _ in flags] == ["example", "zero"]
    run, methods, ratio = flags[0]
    assert methods == ("retrain", "influence")
    assert ratio == 0.011 / 1.5e-6
    assert flags[1] == ("zero", ("warm_start", "influence"), math.inf)


def test_the_factor_is_a_parameter_and_the_ratio_is_largest_over_smallest():
    flags = dict((run, (methods, ratio)) for run, methods, ratio in estimator_disagreement(SUMMARY, factor=5.0))
    assert set(flags) == {"example", "zero", "agree", "edge"}
    assert flags["agree"] == (("retrain", "influence"), 0.02 / 0.0021)
    assert estimator_disagreement(SUMMARY.iloc[:0]) == []  # empty summary


def test_the_report_prints_one_flag_line_per_run(tmp_path):
    claims = [Claim("stability", "measured beta_hat <= Prop. 4.2's beta", Verdict.INCONCLUSIVE, "...")]
    provenance = {"date": "today", "commit": "abc", "dirty": False, "command": "lora-dropout reproduce"}
    path = write_report(tmp_path / "report.md", make_profile("quick"), claims, [], [], 1.0, 2.0, provenance,
                        disagreements=estimator_disagreement(SUMMARY))
    text = path.read_text()
    assert "disagree by more than 10x" in text
    assert "- `example`: beta_hat of retrain is 7.33e+03 times that of influence" in text
    assert "- `zero`: beta_hat of warm_start is inf times that of influence" in text
    quiet = write_report(tmp_path / "quiet.md", make_profile("quick"), claims, [], [], 1.0, 2.0, provenance)
    assert "disagree" not in quiet.read_text()
