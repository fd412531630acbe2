# %% [markdown]
# # 02 · The overfitting gap: LoRA versus LoRA Dropout (the paper's Figure 1)
#
# **Claim.** Plain LoRA's training loss keeps falling while its test loss turns up (overfitting); with
# LoRA Dropout the training loss falls more slowly and the gap between test and training loss stays
# smaller. Curves are the ensemble predictor's cross-entropy over optimizer steps, averaged over seeds.

# %% tags=["parameters"]
from pathlib import Path

from analysis import scales

scale = scales.scale_from_env()  # LORA_DROPOUT_SCALE: tiny (tests), quick, full
figures_dir = scales.figures_dir_from_env(Path("figures") / "notebooks" / scale)

# %%
from analysis import plots, tables

study = scales.load_study(scale)
p, n = study.focus.dropout_rate, study.focus.n_instances
series = {"LoRA": {"dropout_rate": 0.0, "n_instances": 1},
          f"LoRA Dropout p={p:g}, N={n}": {"dropout_rate": p, "n_instances": n}}
curves = tables.loss_curves(study.collection.curves, where_each=series)
ax = plots.plot_loss_curves(curves)
figures_dir.mkdir(parents=True, exist_ok=True)
ax.figure.savefig(figures_dir / "02_loss_curves.png", dpi=120)
final = curves[curves["step"] == curves["step"].max()].pivot(index="series", columns="split", values="risk")
final["gap"] = final["test"] - final["train"]
final

# %%
lora, dropout = final.loc["LoRA"], final.loc[f"LoRA Dropout p={p:g}, N={n}"]
first = curves[(curves["step"] == 0) & (curves["split"] == "train")].set_index("series")["risk"]
# learning happened, and the masks regularise: LoRA Dropout fits the training set less tightly
assert lora["train"] < first["LoRA"], (lora, first)
assert dropout["train"] > lora["train"], final
if scale != "tiny":  # the paper's claim, at a scale where it is meaningful
    assert dropout["gap"] < lora["gap"], f"the gap did not shrink at scale {scale}: {final}"
