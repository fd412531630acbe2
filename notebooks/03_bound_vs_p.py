# %% [markdown]
# # 03 · Theorem 4.4 over p and lambda, beside the measured gap
#
# **Claim (Thm 4.4).** `R <= R_hat + sqrt((C^2 + 24 C eta^2 / (Lambda_min + 2 lam s)) / (2 n delta))` with
# `s = 2p - p^2`: the gap term falls monotonically in `p`, and the bound exists only where the
# denominator `D = Lambda_min + 2 lam s` is positive. `Lambda_min` (smallest Hessian eigenvalue at
# theta(S)), `eta` (Lipschitz constant) and `C` are measured on the runs; the paper calls `lam` arbitrary,
# so the bound is drawn over `lam` too. Where `D <= 0` the bound is vacuous, and we say why.

# %% tags=["parameters"]
from pathlib import Path

from analysis import scales

scale = scales.scale_from_env()  # LORA_DROPOUT_SCALE: tiny (tests), quick, full
figures_dir = scales.figures_dir_from_env(Path("figures") / "notebooks" / scale)
delta = 0.05

# %%
import numpy as np

from analysis import plots, tables
from analysis.summary import select, value
from bounds.curves import bound_curve
from bounds.formulas import sparsity

study = scales.load_study(scale)
summary = study.collection.summary
panel = tables.bound_vs_p(tables.p_panel(summary, study.focus.n_instances))
ax = plots.plot_bound_vs_p(panel)
figures_dir.mkdir(parents=True, exist_ok=True)
ax.figure.savefig(figures_dir / "03_bound_vs_p.png", dpi=120)
panel

# %% [markdown]
# The same bound as a curve over `p` and over `lam`, all other inputs taken from the main run.

# %%
main = summary[(summary["dropout_rate"] == study.focus.dropout_rate) &
               (summary["n_instances"] == study.focus.n_instances)]["run_id"].iloc[0]
run_dir = study.directory / "runs" / main
ps = np.linspace(0.0, 0.95, 20)
over_p = bound_curve("theorem44_gap", "p", ps, run_dir)
lams = np.logspace(-3, 1, 20)
over_lam = bound_curve("theorem44_gap", "lam", lams, run_dir)
lambda_min = value(summary[summary["run_id"] == main], "hessian_min_eig", space="delta_w", hypothesis="unmasked")
over_p.head()

# %%
finite = over_p[~over_p["vacuous"]]
# the gap term falls in p wherever it exists (Thm 4.4), and it is vacuous exactly where D <= 0
assert (np.diff(finite["value"].to_numpy()) <= 1e-12).all()
denominator = lambda_min + 2 * 1.0 * sparsity(ps)
np.testing.assert_array_equal(over_p["vacuous"].to_numpy(), denominator <= 0)
assert (np.diff(over_lam[~over_lam["vacuous"]]["value"].to_numpy()) <= 1e-12).all()
# at p = 0 (plain LoRA) the bound exists only if the Hessian is positive definite
p0 = panel[panel["p"] == 0.0]
if len(p0):
    eig = select(summary[summary["dropout_rate"] == 0], "hessian_min_eig", space="delta_w", hypothesis="unmasked")
    assert bool(p0["vacuous"].iloc[0]) == (eig["value"] <= 0).any()
