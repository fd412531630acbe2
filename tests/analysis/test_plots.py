"""Each plot draws exactly the table it is given: checked on the artists, not on pixels."""

import math

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest

from analysis import plots


@pytest.fixture(autouse=True)
def _close():
    yield
    plt.close("all")


def _legend(ax):
    return [t.get_text() for t in ax.get_legend().get_texts()]


def test_metric_over_draws_one_line_and_band_per_series():
    table = pd.DataFrame({"p": [0, 0.3, 0.6] * 2, "series": ["a"] * 3 + ["b"] * 3,
                          "mean": [0.7, 0.75, 0.72, 0.6, 0.65, 0.61], "low": [0.68] * 6, "high": [0.8] * 6,
                          "n": 3})
    ax = plots.plot_metric_over(table, "p", "test accuracy")
    assert len(ax.lines) == 2 and len(ax.collections) == 2
    np.testing.assert_allclose(ax.lines[0].get_xydata(), [[0, 0.7], [0.3, 0.75], [0.6, 0.72]])
    assert _legend(ax) == ["a", "b"] and ax.get_xlabel() == "p" and ax.get_ylabel() == "test accuracy"


def test_loss_curves_split_styles():
    table = pd.DataFrame({"series": ["LoRA"] * 4, "split": ["train", "train", "test", "test"],
                          "step": [0, 10, 0, 10], "risk": [0.7, 0.3, 0.7, 0.5]})
    ax = plots.plot_loss_curves(table)
    styles = {line.get_label(): line.get_linestyle() for line in ax.lines}
    assert styles == {"LoRA (train)": "--", "LoRA (test)": "-"}
    np.testing.assert_allclose(ax.lines[1].get_ydata(), [0.7, 0.5])


def test_ablation_bars_in_table_order():
    table = pd.DataFrame({"variant": ["Drop", "Drop_train", "Drop_test", "NoDrop"],
                          "mean": [0.8, 0.78, 0.7, 0.75], "low": [0.79, 0.77, 0.69, 0.74],
                          "high": [0.81, 0.79, 0.71, 0.76]})
    ax = plots.plot_ablation(table)
    heights = [bar.get_height() for bar in ax.patches]
    np.testing.assert_allclose(heights, [0.8, 0.78, 0.7, 0.75])
    assert [t.get_text() for t in ax.get_xticklabels()] == ["Drop", "Drop_train", "Drop_test", "NoDrop"]


def test_bound_vs_p_shades_vacuous_p_and_never_draws_an_infinite_bound():
    table = pd.DataFrame({"p": [0.0, 0.3, 0.6], "gap_mean": [0.2, 0.1, 0.05], "gap_low": [0.15, 0.08, 0.03],
                          "gap_high": [0.25, 0.12, 0.07], "bound_gap": [math.inf, 0.9, 0.6],
                          "vacuous": [True, False, False]})
    ax = plots.plot_bound_vs_p(table)
    measured, bound = ax.lines
    np.testing.assert_allclose(bound.get_xydata(), [[0.3, 0.9], [0.6, 0.6]])
    np.testing.assert_allclose(measured.get_ydata(), [0.2, 0.1, 0.05])
    spans = [p for p in ax.patches if p.get_label().startswith("vacuous")]
    assert len(spans) == 1
    x0, x1 = spans[0].get_x(), spans[0].get_x() + spans[0].get_width()
    assert x0 < 0.0 < x1 < 0.3  # the span covers p = 0 only
    assert "vacuous: Lambda_min + 2 lam s <= 0" in _legend(ax)


def test_stability_plots_measurements_and_theory():
    table = pd.DataFrame({"label": ["run A", "run A"], "method": ["retrain", "influence"],
                          "beta_hat": [1e-3, 1e-4], "low": [5e-4, 9e-5], "high": [2e-3, 1.1e-4],
                          "beta_theory": [1e-2, 1e-2]})
    ax = plots.plot_stability(table)
    labels = _legend(ax)
    assert {"measured (retrain)", "measured (influence)", "Prop. 4.2 beta"} <= set(labels)
    assert ax.get_yscale() == "log"
    theory = [c for c in ax.collections if c.get_label() == "Prop. 4.2 beta"][0]
    np.testing.assert_allclose(theory.get_offsets()[:, 1], [1e-2])


def test_stability_interval_reaching_zero_stops_at_the_axis_floor():
    # k = 4 leave-one-out indices give wide intervals; the lower end is 0, which a log axis cannot show
    table = pd.DataFrame({"label": ["run A"], "method": ["retrain"], "beta_hat": [0.04], "low": [0.0],
                          "high": [0.1], "beta_theory": [np.inf]})
    ax = plots.plot_stability(table)
    bottom, top = ax.get_ylim()
    assert bottom == pytest.approx(0.004)  # a decade below the smallest positive value, not 1e-12
    assert "Prop. 4.2 vacuous" in _legend(ax)
    vacuous = [c for c in ax.collections if c.get_label() == "Prop. 4.2 vacuous"][0]
    np.testing.assert_allclose(vacuous.get_offsets()[:, 1], [top])


def test_compression_and_jensen_gap():
    table = pd.DataFrame({"n_test": [1, 2, 4], "split": "test", "ensemble_risk": [0.5, 0.45, 0.43],
                          "member_risk": [0.5, 0.5, 0.5], "jensen_gap": [0.0, 0.05, 0.07],
                          "gap_low": [0.0, 0.04, 0.06], "gap_high": [0.0, 0.06, 0.08]})
    ax = plots.plot_compression(table)
    assert {line.get_label() for line in ax.lines} == {"mean member (test)", "ensemble (test)"}
    ax2 = plots.plot_jensen_gap(table)
    np.testing.assert_allclose(ax2.lines[-1].get_ydata(), [0.0, 0.05, 0.07])


def test_reliability_ece_and_sparsity():
    rel = pd.DataFrame({"series": "LoRA", "confidence": [0.55, 0.75, 0.95], "accuracy": [0.5, 0.7, 0.9],
                        "count": [10, 20, 30]})
    ax = plots.plot_reliability(rel)
    np.testing.assert_allclose(ax.lines[1].get_xydata(), [[0.55, 0.5], [0.75, 0.7], [0.95, 0.9]])
    ece = pd.DataFrame({"series": "LoRA", "step": [0, 5], "ece": [0.1, 0.05]})
    np.testing.assert_allclose(plots.plot_ece_over_training(ece).lines[0].get_ydata(), [0.1, 0.05])
    sp = pd.DataFrame({"p": [0.3, 0.3, 0.6], "nominal": [0.51, 0.51, 0.84], "realised": [0.5, 0.52, 0.85]})
    ax = plots.plot_sparsity(sp)
    np.testing.assert_allclose(ax.lines[0].get_xydata(), [[0.3, 0.51], [0.6, 0.84]])
    np.testing.assert_allclose(ax.collections[0].get_offsets()[:, 1], [0.5, 0.52, 0.85])


def test_missing_columns_are_named():
    with pytest.raises(ValueError, match="plot_bound_vs_p needs column"):
        plots.plot_bound_vs_p(pd.DataFrame({"p": [0.1]}))


@pytest.mark.parametrize("bound_gap", [[math.inf] * 4, [math.inf, 30.0, 4.0, 0.9]])
def test_bound_vs_p_numbers_its_axes_whatever_the_range(bound_gap):
    # the full profile's measured gaps (0.12 to 0.81) with every bound vacuous, and with finite bounds far above
    from analysis.figures import unreadable_axes

    table = pd.DataFrame({"p": [0.0, 0.1, 0.3, 0.5], "gap_mean": [0.46, 0.47, 0.54, 0.21],
                          "gap_low": [0.12, 0.33, 0.38, 0.12], "gap_high": [0.81, 0.61, 0.69, 0.30],
                          "bound_gap": bound_gap, "vacuous": [not math.isfinite(b) for b in bound_gap]})
    ax = plots.plot_bound_vs_p(table)
    assert unreadable_axes(ax.figure) == []
    labels = [t.get_text() for t in ax.get_yticklabels() if t.get_visible() and t.get_text()]
    assert len(labels) >= 2, labels


def test_unreadable_axes_names_an_axis_without_tick_labels_or_label():
    from analysis.figures import unreadable_axes

    fig, ax = plt.subplots()
    ax.plot([0, 1], [0.2, 0.3])
    ax.set_xlabel("p")
    ax.set_yticks([])
    assert unreadable_axes(fig) == ["axes: the y axis has no label", "axes: the y axis has no tick labels"]
