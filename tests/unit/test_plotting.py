"""Plots draw what the result objects hold (synthetic reports, no model)."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("matplotlib")

from art_backdoor_ext.defences.model.cepa_report import CEPAReport  # noqa: E402
from art_backdoor_ext.exceptions import InvalidParameterError  # noqa: E402
from art_backdoor_ext.plotting import (  # noqa: E402
    cepa_evidence_by_target,
    plot_cepa_reference,
    plot_cepa_statistics,
    plot_detection_scores,
    plot_feature_projections,
    plot_neural_cleanse,
    plot_order_statistic,
    plot_trigger_estimate,
)


def _report(statistic: str = "consensus", detected: bool = True) -> CEPAReport:
    rng = np.random.default_rng(0)
    k = 4
    pair_norm, pair_sigma = rng.uniform(1, 2, (k, k)), rng.uniform(1, 2, (k, k))
    np.fill_diagonal(pair_norm, np.nan)
    np.fill_diagonal(pair_sigma, np.nan)
    pair_norm[1, 2], pair_sigma[1, 2] = 10.0, 0.5  # one outstanding pair -> target 2
    pooled_norm, pooled_sigma = rng.uniform(1, 2, k), rng.uniform(1, 2, k)
    return CEPAReport(
        detected=detected, p_value=0.01, anomaly_index=3.0, target=2, source=1, variant="pairs", layer="relu1",
        mu=np.zeros(3), misclassification=0.9, statistic=statistic, layers=["relu1"],
        statistics={"pairs": {"relu1": {"mu_norm": pair_norm, "sigma": pair_sigma}},
                    "all-to-one": {"relu1": {"mu_norm": pooled_norm, "sigma": pooled_sigma}}},
        tests=[], significance=0.05, seconds=0.0)


def test_evidence_is_the_largest_ratio_over_sources_for_pairs():
    report = _report()
    stats = report.statistics["pairs"]["relu1"]
    expected = [max(stats["mu_norm"][s, t] / stats["sigma"][s, t] for s in range(4) if s != t) for t in range(4)]
    np.testing.assert_allclose(cepa_evidence_by_target(report, "pairs", "relu1"), expected)
    pooled = report.statistics["all-to-one"]["relu1"]
    np.testing.assert_allclose(cepa_evidence_by_target(report, "all-to-one", "relu1"),
                               pooled["mu_norm"] / pooled["sigma"])


def test_norm_statistic_plots_the_norm():
    report = _report("norm")
    np.testing.assert_allclose(cepa_evidence_by_target(report, "all-to-one", "relu1"),
                               report.statistics["all-to-one"]["relu1"]["mu_norm"])


def test_unknown_panel_lists_the_available_ones():
    with pytest.raises(InvalidParameterError, match="pairs@relu1"):
        cepa_evidence_by_target(_report(), "pairs", "relu9")


def test_bar_chart_has_one_panel_per_test_and_marks_the_targets(tmp_path):
    report = _report()
    fig = plot_cepa_statistics(report, true_target=2, path=tmp_path / "cepa.png")
    assert (tmp_path / "cepa.png").stat().st_size > 0
    axes = [ax for ax in fig.axes if ax.patches]
    assert len(axes) == 2
    heights = [bar.get_height() for bar in axes[0].patches]
    np.testing.assert_allclose(heights, cepa_evidence_by_target(report, "pairs", "relu1"))
    colours = [bar.get_facecolor() for bar in axes[0].patches]
    assert colours[2] != colours[0]  # the reported target stands out
    assert axes[0].patches[2].get_linewidth() == 2  # the true target is outlined
    assert all(c == axes[1].patches[0].get_facecolor() for c in (b.get_facecolor() for b in axes[1].patches))


def test_reference_chart_draws_each_layers_z_and_the_flagging_line(tmp_path):
    from scipy import stats

    from art_backdoor_ext.defences.model.cepa_reference import ReferenceTest

    z = {"conv1": np.array([0.5, -1.0, 9.0, 0.2]), "relu3": np.array([1.0, 0.0, 2.0, -0.5])}
    test = ReferenceTest(detected=True, p_value=1e-4, target=2, layer="conv1", z=z, n_references=6,
                         significance=0.05)
    fig = plot_cepa_reference(test, true_target=2, path=tmp_path / "ref.png")
    assert (tmp_path / "ref.png").stat().st_size > 0
    axes = [ax for ax in fig.axes if ax.patches]
    assert len(axes) == 2
    np.testing.assert_allclose([b.get_height() for b in axes[0].patches], z["conv1"])
    np.testing.assert_allclose([b.get_height() for b in axes[1].patches], z["relu3"])
    cut = stats.t.isf(0.05 / 8, 5)  # Bonferroni over 2 x 4 values, R - 1 = 5 degrees of freedom
    assert axes[0].lines[0].get_ydata()[0] == pytest.approx(cut)
    assert axes[0].patches[2].get_facecolor() != axes[0].patches[0].get_facecolor()
    assert axes[0].patches[2].get_linewidth() == 2


def test_trigger_figure_rows_follow_the_inputs():
    x = np.random.default_rng(0).random((3, 1, 8, 8)).astype(np.float32)
    delta = 0.1 * np.ones_like(x)
    assert len(plot_trigger_estimate(x, delta, n=2).axes) == 3 * 2
    assert len(plot_trigger_estimate(x, delta, x_triggered=np.clip(x + 0.2, 0, 1), n=2).axes) == 5 * 2
    fig = plot_trigger_estimate(x, delta, x_triggered=np.clip(x + 0.2, 0, 1), n=1)
    cmaps = [ax.images[0].get_cmap().name for ax in fig.axes]
    # images in gray on [0, 1], perturbations on a diverging map centred at 0
    assert cmaps == ["gray", "gray", "gray", "RdBu_r", "RdBu_r"]
    np.testing.assert_allclose(fig.axes[1].images[0].get_array(), np.clip(x[0, 0] + 0.1, 0, 1), rtol=1e-6)
    with pytest.raises(InvalidParameterError, match="one shape"):
        plot_trigger_estimate(x, delta[:2])


def test_feature_projection_grid_has_a_panel_per_model_and_level(tmp_path):
    rng = np.random.default_rng(0)
    panels = {mode: {level: (rng.normal(size=(5, 2)), rng.normal(size=(4, 2)) + 3) for level in ("s1", "s2", "s3")}
              for mode in ("RBT", "SDRM-A")}
    fig = plot_feature_projections(panels, path=tmp_path / "f.png", title="t")
    assert len(fig.axes) == 6 and (tmp_path / "f.png").stat().st_size > 0
    first = fig.axes[0]
    np.testing.assert_allclose(first.collections[0].get_offsets(), panels["RBT"]["s1"][0])
    np.testing.assert_allclose(first.collections[1].get_offsets(), panels["RBT"]["s1"][1])
    assert [ax.get_title() for ax in fig.axes[:3]] == ["s1", "s2", "s3"] and fig.axes[3].get_ylabel() == "SDRM-A"
    with pytest.raises(InvalidParameterError, match="pair of \\(n, 2\\) arrays"):
        plot_feature_projections({"RBT": {"s1": (np.zeros((3, 3)), np.zeros((3, 2)))}})
    with pytest.raises(InvalidParameterError, match="at least one row"):
        plot_feature_projections({})


def _ad_report(statistic: str, variable: str = "reciprocal"):
    from art_backdoor_ext.defences.model.order_statistic import OrderStatisticReport

    rng = np.random.default_rng(1)
    k = 5
    stats = rng.uniform(1, 2, (k, k))
    np.fill_diagonal(stats, np.nan)
    stats[3, 0] = 0.2  # the most extreme pair: smallest statistic, largest reciprocal
    return OrderStatisticReport(
        detected=True, p_value=0.003, source=3, target=0, statistics=stats, sizes=stats, misclassification=stats,
        reached=~np.isnan(stats), estimated_pattern=np.zeros((1, 2, 2)),
        null={"shape": 8.0, "scale": 0.08, "truncation": 0.9, "variable": variable}, significance=0.05, seconds=0.0,
        settings={"statistic": statistic})


@pytest.mark.parametrize(("statistic", "needle"), [("size", "1/d(v_st)"), ("asymmetry", "d(v_ts)/d(v_st)")])
def test_order_statistic_plot_names_the_statistic_and_marks_the_extreme_pair(tmp_path, statistic, needle):
    path = tmp_path / "ad.png"
    fig = plot_order_statistic(_ad_report(statistic), path)
    ax = fig.axes[0]
    labels = ax.get_legend_handles_labels()[1]
    assert any(needle in label for label in labels)
    assert any(label.startswith("max: 3->0") for label in labels)
    marked = [line.get_xdata()[0] for line in ax.get_lines() if line.get_linestyle() == "--"]
    assert marked == [pytest.approx(5.0)]  # 1 / 0.2
    assert path.stat().st_size > 0


def test_order_statistic_plot_on_sizes_marks_the_smallest_statistic(tmp_path):
    """With the size null the histogram is of the statistics themselves, the marked pair at its size."""
    fig = plot_order_statistic(_ad_report("source-normalised", variable="size"), tmp_path / "ad.png")
    ax = fig.axes[0]
    labels = ax.get_legend_handles_labels()[1]
    assert any("d(v_st)/median_u d(v_su)" in label for label in labels)
    assert any(label.startswith("min: 3->0") for label in labels)
    marked = [line.get_xdata()[0] for line in ax.get_lines() if line.get_linestyle() == "--"]
    assert marked == [pytest.approx(0.2)]
    assert ax.get_xlabel() == "size-like statistic"


def test_score_histograms_report_the_fraction_above_the_threshold(tmp_path):
    clean, triggered = np.array([0.1, 0.2, 0.3, 0.9]), np.array([0.8, 0.95, 0.2])
    fig = plot_detection_scores({"clean": clean, "triggered": triggered}, threshold=0.5, path=tmp_path / "s.png")
    labels = fig.axes[0].get_legend_handles_labels()[1]
    assert "clean (n=4, 25% above)" in labels
    assert "triggered (n=3, 67% above)" in labels
    assert "threshold 0.5" in labels
    assert (tmp_path / "s.png").stat().st_size > 0


@pytest.mark.parametrize("scores", [{}, {"clean": np.array([])}, {"clean": np.array([0.1, np.nan])}])
def test_score_histograms_refuse_empty_or_non_finite_groups(scores):
    with pytest.raises(InvalidParameterError, match="plot_detection_scores"):
        plot_detection_scores(scores)


def test_neural_cleanse_bars_colour_flagged_and_unreached_targets(tmp_path):
    from art_backdoor_ext.defences.model.neural_cleanse import NeuralCleanseReport

    norms = np.array([2.0, 9.0, 10.0, 11.0, 30.0])
    report = NeuralCleanseReport(
        detected=True, p_value=None, source=None, target=0, flagged=[0], statistics=norms,
        anomaly_index=np.array([3.5, 0.4, 0.0, 0.4, np.nan]), reached=np.array([True, True, True, True, False]),
        misclassification=np.full(5, 0.99), estimated_pattern=None, anomaly_threshold=2.0, seconds=0.0)
    fig = plot_neural_cleanse(report, true_target=0, path=tmp_path / "nc.png")
    ax = fig.axes[0]
    bars = ax.patches
    assert [b.get_height() for b in bars] == list(norms)
    assert bars[0].get_facecolor()[:3] == pytest.approx((0.8, 0.2, 0.2))  # flagged: red
    assert bars[4].get_hatch() == "//" and bars[1].get_hatch() is None  # never reached pi: hatched
    assert bars[0].get_linewidth() == 2 and bars[1].get_linewidth() != 2  # the true target is outlined
    assert [t.get_text() for t in ax.texts] == ["3.5", "0.4", "0.0", "0.4", "n/a"]
    assert "flagged [0]" in ax.get_title()
    assert (tmp_path / "nc.png").stat().st_size > 0


def test_sigma_statistic_plots_the_reciprocal_spread():
    report = _report("sigma")
    np.testing.assert_allclose(cepa_evidence_by_target(report, "all-to-one", "relu1"),
                               1.0 / report.statistics["all-to-one"]["relu1"]["sigma"])


def test_order_statistic_plot_marks_the_tested_pair_when_the_source_is_named_by_size(tmp_path):
    """source_rule="smallest-size" can name another source than the tested pair's: the line stays on the tested
    statistic and the legend says which source was named."""
    import dataclasses

    report = dataclasses.replace(_ad_report("source-normalised", variable="size"), source=1, extreme_source=3)
    ax = plot_order_statistic(report, tmp_path / "ad.png").axes[0]
    assert any(label.startswith("min: 3->0 (source named: 1)") for label in ax.get_legend_handles_labels()[1])
    assert [line.get_xdata()[0] for line in ax.get_lines() if line.get_linestyle() == "--"] == [pytest.approx(0.2)]
