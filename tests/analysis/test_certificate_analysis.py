"""The PAC-Bayes dropout certificate in studies: post-training settings and their resume check, the
profiles that certify, the certificate_vs_p table and plot (hand-built summaries, no training)."""

import math

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest

from analysis import plots, tables
from analysis.pipeline import certificates_current
from analysis.presets import PROFILES, QUICK_POSTERIOR_STD_GRID, make_profile
from analysis.spec import PostTraining
from analysis.summary import row
from bounds.runlog import DEFAULT_POSTERIOR_STD_GRID


@pytest.fixture(autouse=True)
def _close():
    yield
    plt.close("all")


# -- post-training settings -----------------------------------------------------------------------------


@pytest.mark.parametrize(("changes", "match"), [
    ({"certify_prior": "data"}, "certify_prior"),
    ({"posterior_draws": 0}, "posterior_draws"),
    ({"posterior_std_grid": ()}, "posterior_std_grid"),
    ({"posterior_std_grid": (0.01, 0.01)}, "posterior_std_grid"),
    ({"posterior_std_grid": (0.01, -1.0)}, "posterior_std_grid"),
])
def test_post_training_rejects_bad_certificate_settings(changes, match):
    with pytest.raises(ValueError, match=match):
        PostTraining(**changes)


def test_post_training_round_trips_through_the_manifest_form():
    post = PostTraining(certify=True, posterior_std_grid=[0.01, 0.1], posterior_draws=2, certify_prior="init")
    assert post.posterior_std_grid == (0.01, 0.1)
    back = PostTraining(**{k: tuple(v) if isinstance(v, list) else v for k, v in post.to_dict().items()})
    assert back == post


def write_certificates(run_dir, grid=(0.01, 0.1), draws=2, prior="init"):
    run_dir.mkdir(parents=True, exist_ok=True)
    pd.DataFrame({"posterior_std": list(grid), "draws": draws, "prior": prior, "grid_size": len(grid)}).to_parquet(
        run_dir / "certificates.parquet")


def test_certificates_are_current_only_with_the_same_grid_draws_and_prior(tmp_path):
    post = PostTraining(certify=True, posterior_std_grid=(0.1, 0.01), posterior_draws=2)
    assert not certificates_current(tmp_path, post)  # none yet
    write_certificates(tmp_path)
    assert certificates_current(tmp_path, post)  # grid order does not matter
    assert not certificates_current(tmp_path, PostTraining(certify=True, posterior_std_grid=(0.01,),
                                                           posterior_draws=2))
    assert not certificates_current(tmp_path, PostTraining(certify=True, posterior_std_grid=(0.01, 0.1),
                                                           posterior_draws=4))
    assert not certificates_current(tmp_path, PostTraining(certify=True, posterior_std_grid=(0.01, 0.1),
                                                           posterior_draws=2, certify_prior="trained"))
    # prior None: the one certify_run picks, trained when the run saved one
    (tmp_path / "prior").mkdir()
    (tmp_path / "prior" / "prior.safetensors").write_bytes(b"")
    assert not certificates_current(tmp_path, post)
    write_certificates(tmp_path, prior="trained")
    assert certificates_current(tmp_path, post)
    (tmp_path / "certificates.parquet").write_text("not parquet")
    assert not certificates_current(tmp_path, post)


# -- profiles -------------------------------------------------------------------------------------------


def _by_config(points):
    return {(pt.config.adapter.method, pt.config.lora_dropout.dropout_rate, pt.config.lora_dropout.n_instances,
             pt.config.train.seed): pt for pt in points}


def test_quick_profile_certifies_its_p_panel_with_the_data_free_prior():
    points = _by_config(make_profile("quick").spec.expand())
    certified = sorted((p, n) for (_, p, n, _), pt in points.items() if pt.post.certify)
    assert certified == [(0.0, 1), (0.3, 2), (0.6, 2)]
    for pt in points.values():
        assert pt.post.certify_prior == "init" and pt.post.posterior_draws == 2
        assert pt.post.posterior_std_grid == QUICK_POSTERIOR_STD_GRID
        assert pt.config.train.prior_fraction == 0.0


def test_certify_profile():
    assert "certify" in PROFILES
    profile = make_profile("certify")
    assert profile.focus.dropout_rate == 0.3 and profile.focus.n_instances == 2
    points = _by_config(profile.spec.expand())
    assert sorted(points) == [("lora", 0.0, 1, 0), ("lora", 0.1, 2, 0), ("lora", 0.3, 2, 0), ("lora", 0.5, 2, 0)]
    for pt in points.values():
        t = pt.config.train
        assert t.n_train is None and t.n_test is None  # every example of the default data
        assert t.data == "rotten_tomatoes" and t.model is None
        assert t.prior_fraction == 0.5 and t.posterior_epochs == 1
        assert t.posterior_lr == pytest.approx(t.lr / 5)
        post = pt.post
        assert post.certify and post.certify_prior == "trained" and post.posterior_draws == 4
        assert post.learn_posterior  # the learned posterior is certified beside the grid
        assert post.posterior_std_grid == DEFAULT_POSTERIOR_STD_GRID
        assert not post.curvature and not post.stability_k  # leave-one-out is refused with a trained prior
    assert len(make_profile("certify", seeds=3).spec.expand()) == 12


# -- table and plot -------------------------------------------------------------------------------------


def summary_rows(p, n, seed, certificate, measured, ensemble, *, theorem44=None):
    """``theorem44``: None (no probes), ``math.inf`` (vacuous) or a finite bound."""
    values = [row("certificate", certificate, report="pacbayes_dropout"),
              row("measured", measured, report="pacbayes_dropout"),
              row("certificate", ensemble, report="pacbayes_dropout_ensemble")]
    if theorem44 is not None:
        values += [row("vacuous", float(math.isinf(theorem44)), report="theorem44", hypothesis="unmasked"),
                   row("bound", theorem44, report="theorem44", hypothesis="unmasked")]
    return [{"run_id": f"p{p}-N{n}-s{seed}", **r, "seed": seed, "method": "lora", "dropout_rate": p, "n_instances": n}
            for r in values]


def test_certificate_over_p_bands_seeds_and_marks_the_papers_bound():
    rows = []
    for seed, shift in enumerate((-0.01, 0.0, 0.01)):
        rows += summary_rows(0.0, 1, seed, 0.9 + shift, 0.3 + shift, 1.0, theorem44=math.inf)
        rows += summary_rows(0.3, 2, seed, 0.5 + shift, 0.25, 0.8, theorem44=2.5 + shift)
        rows += summary_rows(0.6, 2, seed, 0.6, 0.27, 0.9)  # no probes at p = 0.6
    rows += [{**r, "quantity": "test_accuracy_full", "report": ""}
             for r in summary_rows(0.1, 2, 0, 0.7, 0, 0)[:1]]  # not certified
    table = tables.certificate_over(pd.DataFrame(rows), "dropout_rate")
    assert table["dropout_rate"].tolist() == [0.0, 0.3, 0.6]
    half = 4.302652729911275 * 0.01 / math.sqrt(3)  # t_{0.975, 2} * sd / sqrt(3)
    np.testing.assert_allclose(table[["certificate", "certificate_low", "certificate_high"]].iloc[0],
                               [0.9, 0.9 - half, 0.9 + half], rtol=1e-9)
    np.testing.assert_allclose(table["measured"], [0.3, 0.25, 0.27])
    np.testing.assert_allclose(table["ensemble"], [1.0, 0.8, 0.9])
    assert table["paper"].tolist() == ["vacuous", "finite", "not measured"]
    assert math.isinf(table["paper_bound"].iloc[0]) and math.isnan(table["paper_bound"].iloc[2])
    assert table["paper_bound"].iloc[1] == pytest.approx(2.5)
    assert table["n"].tolist() == [3, 3, 3]
    assert table["learned"].isna().all()  # no posterior was learned
    # a learned posterior at p = 0.3 (seeds 0 and 1): its own series, NaN elsewhere
    learned = [{"run_id": f"p0.3-N2-s{seed}", **row(q, v, report="pacbayes_dropout_learned"), "seed": seed,
                "method": "lora", "dropout_rate": 0.3, "n_instances": 2}
               for seed, (c, m) in enumerate(((0.4, 0.24), (0.42, 0.26))) for q, v in (("certificate", c),
                                                                                       ("measured", m))]
    table = tables.certificate_over(pd.DataFrame(rows + learned), "dropout_rate")
    assert table["learned"].iloc[1] == pytest.approx(0.41) and table["learned_measured"].iloc[1] == pytest.approx(0.25)
    half = 12.706204736174698 * math.sqrt(0.0002) / math.sqrt(2)  # t_{0.975, 1} * sd / sqrt(2)
    assert table["learned_high"].iloc[1] == pytest.approx(0.41 + half)
    assert table["learned"].iloc[[0, 2]].isna().all()
    assert tables.certificate_over(pd.DataFrame(rows[:0], columns=rows[0].keys()), "dropout_rate").empty


def test_plot_certificate_vs_p_draws_the_table_and_never_an_infinite_bound():
    table = pd.DataFrame({"dropout_rate": [0.0, 0.3, 0.6], "certificate": [1.0, 0.5, 0.6],
                          "certificate_low": [1.0, 0.45, 0.55], "certificate_high": [1.0, 0.55, 0.65],
                          "measured": [0.3, 0.25, 0.27], "measured_low": [0.28, 0.2, 0.25],
                          "measured_high": [0.32, 0.3, 0.29], "ensemble": [1.0, 0.8, 0.9],
                          "paper_bound": [math.inf, 2.5, math.nan], "paper": ["vacuous", "finite", "not measured"]})
    ax = plots.plot_certificate_vs_p(table)
    lines = {line.get_label(): line for line in ax.lines}
    np.testing.assert_allclose(lines["certificate (Gibbs 0-1 error)"].get_xydata(), [[0, 1.0], [0.3, 0.5], [0.6, 0.6]])
    np.testing.assert_allclose(lines["measured test Gibbs 0-1 error"].get_ydata(), [0.3, 0.25, 0.27])
    np.testing.assert_allclose(lines["ensemble 0-1 certificate min(1, 2c)"].get_ydata(), [1.0, 0.8, 0.9])
    np.testing.assert_allclose(lines["Thm 4.4 bound (test cross-entropy)"].get_xydata(), [[0.3, 2.5]])
    np.testing.assert_allclose(lines["1 = vacuous"].get_ydata(), [1.0, 1.0])
    spans = [p for p in ax.patches if p.get_label() == "Thm 4.4 vacuous"]
    assert len(spans) == 1 and spans[0].get_x() < 0.0 < spans[0].get_x() + spans[0].get_width() < 0.3
    assert ax.get_ylim()[1] >= 2.5 and ax.get_xlabel() == "dropout rate p"
    over_n = table.rename(columns={"dropout_rate": "n_instances"}).assign(n_instances=[1, 2, 4])
    assert plots.plot_certificate_vs_p(over_n, x="n_instances").get_xlabel() == "instances N"
    with pytest.raises(ValueError, match="plot_certificate_vs_p needs column"):
        plots.plot_certificate_vs_p(table.drop(columns="paper"))
    assert "learned posterior: certificate" not in lines  # no learned columns: no such line
    with_learned = table.assign(learned=[math.nan, 0.4, math.nan], learned_measured=[math.nan, 0.24, math.nan])
    lines = {line.get_label(): line for line in plots.plot_certificate_vs_p(with_learned).lines}
    np.testing.assert_allclose(lines["learned posterior: certificate"].get_xydata(), [[0.3, 0.4]])
    np.testing.assert_allclose(lines["learned posterior: measured test Gibbs 0-1 error"].get_ydata(), [0.24])
