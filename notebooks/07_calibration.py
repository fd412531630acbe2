# %% [markdown]
# # 07 · Calibration: ECE and reliability diagrams (Table 4, Figure 3)
#
# **Claim.** LoRA Dropout's test-time ensemble is better calibrated than plain LoRA: lower expected
# calibration error (ECE; 15 equal-width confidence bins, measured on the same predictive whose risk is
# reported) and a reliability diagram closer to the diagonal.

# %% tags=["parameters"]
from pathlib import Path

from analysis import scales

scale = scales.scale_from_env()  # LORA_DROPOUT_SCALE: tiny (tests), quick, full
figures_dir = scales.figures_dir_from_env(Path("figures") / "notebooks" / scale)

# %%
import matplotlib.pyplot as plt
import numpy as np

from analysis import claims, plots, tables
from analysis.verdicts import Verdict

study = scales.load_study(scale)
coll, focus = study.collection, study.focus
series = {"LoRA": {"dropout_rate": 0.0, "n_instances": 1},
          f"LoRA Dropout p={focus.dropout_rate:g}, N={focus.n_instances}":
              {"dropout_rate": focus.dropout_rate, "n_instances": focus.n_instances}}
ece = tables.ece_over_training(coll.curves, where_each=series)
reliability = tables.reliability(coll.reliability, where_each=series)
fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
plots.plot_ece_over_training(ece, ax=axes[0])
plots.plot_reliability(reliability, ax=axes[1])
figures_dir.mkdir(parents=True, exist_ok=True)
fig.savefig(figures_dir / "07_calibration.png", dpi=120)
ece.pivot(index="step", columns="series", values="ece")

# %%
# the reported ECE is the reliability diagram's: sum_b (n_b / n) |acc_b - conf_b|, per run
bins = coll.reliability
checked = 0
for run_id, g in bins[(bins["split"] == "test") & (bins["predictor"] == "ensemble")].groupby("run_id"):
    last = g[(g["step"] == g["step"].max()) & (g["count"] > 0)]
    from_bins = float((last["count"] / last["count"].sum() * (last["accuracy"] - last["confidence"]).abs()).sum())
    curve = coll.curves[(coll.curves["run_id"] == run_id) & (coll.curves["split"] == "test") &
                        (coll.curves["predictor"] == "ensemble")]
    reported = float(curve[curve["step"] == curve["step"].max()]["ece"].iloc[0])
    np.testing.assert_allclose(from_bins, reported, rtol=1e-9)
    checked += 1
assert checked == len(coll.runs)
lower = claims.lower_ece(coll.summary, focus)
print(lower.verdict.value, lower.evidence)
assert lower.verdict is not Verdict.NOT_EVALUABLE, lower  # reported, not asserted: an empirical claim
