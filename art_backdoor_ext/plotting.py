"""Plots of result objects. matplotlib is imported lazily (``pip install art-backdoor-ext[plot]``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from art_backdoor_ext.exceptions import InvalidParameterError

__all__ = ["plot_order_statistic", "cepa_evidence_by_target", "plot_cepa_statistics", "plot_trigger_estimate",
           "plot_feature_projections", "plot_detection_scores", "plot_neural_cleanse"]


def _pyplot() -> Any:
    try:
        import matplotlib

        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise InvalidParameterError("plotting needs matplotlib: pip install 'art-backdoor-ext[plot]'") from err
    return plt


_RECIPROCAL_LABELS = {
    "size": ("1/d(v_st)", "reciprocal perturbation size"),
    "asymmetry": ("d(v_ts)/d(v_st)", "reverse size over size (reciprocal asymmetry)"),
    "ratio": ("individual/common size", "reciprocal size ratio (individual over common)"),
    "source-normalised": ("median_u d(v_su)/d(v_st)", "reciprocal source-normalised size"),
    "source-normalised-margin": ("median_u d(v_su) sqrt(margin_st)/d(v_st)",
                                 "reciprocal source-normalised size, margin-scaled"),
    "source-normalised-distance": ("median_u d(v_su) ||m_s - m_t||/d(v_st)",
                                   "reciprocal source-normalised size, distance-scaled"),
}

_SIZE_LABELS = {
    "size": "d(v_st)",
    "asymmetry": "d(v_st)/d(v_ts)",
    "ratio": "common/individual size",
    "source-normalised": "d(v_st)/median_u d(v_su)",
    "source-normalised-margin": "d(v_st)/(median_u d(v_su) sqrt(margin_st))",
    "source-normalised-distance": "d(v_st)/(median_u d(v_su) ||m_s - m_t||)",
}


def plot_order_statistic(report: Any, path: str | Path | None = None) -> Any:
    """Histogram of AD's reciprocal statistics with the fitted Gamma null and the most extreme pair.

    The axis and legend name the statistic the scan used (``report.settings["statistic"]``): the reciprocal
    perturbation size 1/d(v_st) for the paper's ``"size"``, the reverse-over-forward size ratio d(v_ts)/d(v_st)
    for ``"asymmetry"``, the individual-over-common size ratio for ``"ratio"``, and so on. With
    ``null="size"`` the histogram is of the size-like statistics themselves (the null was fitted to them) and
    the marked pair is the smallest.

    :param report: An :class:`~art_backdoor_ext.defences.model.order_statistic.OrderStatisticReport`.
    :param path: Save the figure there (PNG/PDF by suffix); the figure is returned either way.
    """
    from scipy import stats

    plt = _pyplot()
    k = report.statistics.shape[0]
    off = ~np.eye(k, dtype=bool)
    fig, ax = plt.subplots(figsize=(6, 3.5))
    statistic = getattr(report, "settings", {}).get("statistic", "size")
    label, axis = _RECIPROCAL_LABELS.get(statistic, _RECIPROCAL_LABELS["size"])
    null = report.null
    on_sizes = null.get("variable") == "size"
    tested = report.source if getattr(report, "extreme_source", None) is None else report.extreme_source
    pair = f"{tested}->{report.target}" + (f" (source named: {report.source})" if tested != report.source else "")
    if on_sizes:  # the null was fitted to the size-like statistics themselves; the smallest one is tested
        label, axis = _SIZE_LABELS.get(statistic, _SIZE_LABELS["size"]), "size-like statistic"
        values = report.statistics[off]
        extreme = report.statistics[tested, report.target]
    else:
        values = 1.0 / report.statistics[off]
        extreme = 1.0 / report.statistics[tested, report.target]
    ax.hist(values, bins=30, density=True, color="#8aa",
            label=f"{'size-like' if on_sizes else 'reciprocal'} statistics {label}")
    grid = np.linspace(0, values.max() * 1.1, 400)
    ax.plot(grid, stats.gamma.pdf(grid, a=null["shape"], scale=null["scale"]), color="k",
            label="fitted Gamma null" + (" (on sizes)" if on_sizes else ""))
    ax.axvline(extreme, color="#c33", ls="--",
               label=f"{'min' if on_sizes else 'max'}: {pair}, p={report.p_value:.2g}")
    if null.get("truncation") is not None:
        ax.axvline(null["truncation"], color="#888", ls=":", label="truncation")
    ax.set_xlabel(axis)
    ax.set_ylabel("density")
    ax.set_title("AD: " + ("backdoor detected" if report.detected else "no backdoor detected"))
    ax.legend(fontsize=7)
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=120)
    return fig


def cepa_evidence_by_target(report: Any, variant: str, layer: str) -> np.ndarray:
    """Per putative target class, the evidence CEPA tests (large = backdoor-like): ``||mu|| / sigma`` for the
    consensus statistic, ``||mu||`` for the norm statistic, ``1 / sigma`` for the sigma statistic; for the pair
    variant the largest over source classes.

    :param report: A :class:`~art_backdoor_ext.defences.model.cepa_report.CEPAReport`.
    :return: (K,) float array, NaN where a target has no finite value.
    """
    if variant not in report.statistics or layer not in report.statistics[variant]:
        raise InvalidParameterError(
            f"the report has no statistics for variant {variant!r} at layer {layer!r}; it has "
            + ", ".join(f"{v}@{lay}" for v, by_layer in report.statistics.items() for lay in by_layer)
        )
    stats = report.statistics[variant][layer]
    with np.errstate(divide="ignore", invalid="ignore"):
        values = np.asarray(stats["mu_norm"], float)
        if report.statistic == "consensus":
            values = values / np.asarray(stats["sigma"], float)
        elif report.statistic == "sigma":
            values = 1.0 / np.asarray(stats["sigma"], float)
    values = np.where(np.isfinite(values), values, np.nan)
    if values.ndim == 2:
        finite = np.isfinite(values).any(axis=0)
        out = np.full(values.shape[1], np.nan)
        out[finite] = np.nanmax(values[:, finite], axis=0)
        return out
    return values


def plot_cepa_statistics(report: Any, true_target: int | None = None, path: str | Path | None = None) -> Any:
    """The paper's Fig. 1-4 layout: one bar per putative target class, one panel per (variant, layer) test.

    The bar of the reported target is red when the model is flagged (grey-red otherwise); ``true_target``, when
    known (benchmarks), is outlined in black.

    :param report: A :class:`~art_backdoor_ext.defences.model.cepa_report.CEPAReport`.
    :param true_target: The attack's target class, if known.
    :param path: Save the figure there; the figure is returned either way.
    """
    plt = _pyplot()
    panels = [(variant, layer) for variant, by_layer in report.statistics.items() for layer in by_layer]
    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 2.8), squeeze=False)
    label = {"consensus": "||mu|| / sigma", "sigma": "1 / sigma"}.get(report.statistic, "||mu||")
    for ax, (variant, layer) in zip(axes[0], panels):
        values = cepa_evidence_by_target(report, variant, layer)
        k = len(values)
        colours = ["#8aa"] * k
        if variant == report.variant and layer == report.layer:
            colours[report.target] = "#c33" if report.detected else "#c99"
        bars = ax.bar(np.arange(k), np.nan_to_num(values), color=colours)
        if true_target is not None:
            bars[true_target].set_edgecolor("k")
            bars[true_target].set_linewidth(2)
        ax.set_xticks(np.arange(k))
        ax.set_xlabel("putative target class")
        ax.set_title(f"{variant} @ {layer}", fontsize=9)
    axes[0][0].set_ylabel(label)
    verdict = "backdoor detected" if report.detected else "no backdoor detected"
    fig.suptitle(f"CEPA: {verdict} (target {report.target}, p={report.p_value:.2g})", fontsize=10)
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=120)
    return fig


def plot_cepa_reference(test: Any, true_target: int | None = None, path: str | Path | None = None) -> Any:
    """One panel per layer, one bar per class: each class's z against the clean reference models
    (:class:`~art_backdoor_ext.defences.model.cepa_reference.ReferenceTest`), with the z the largest must exceed
    to be flagged at the test's significance (dashed; Bonferroni over layers and classes, t on R - 1 degrees of
    freedom).

    :param test: The result of :meth:`CEPAReference.test`.
    :param true_target: The attack's target class, if known (outlined in black).
    :param path: Save the figure there; the figure is returned either way.
    """
    from scipy import stats

    plt = _pyplot()
    layers = list(test.z)
    n_values = sum(len(test.z[layer]) for layer in layers)
    cut = float(stats.t.isf(test.significance / n_values, test.n_references - 1))
    fig, axes = plt.subplots(1, len(layers), figsize=(3.2 * len(layers), 2.8), squeeze=False, sharey=True)
    for ax, layer in zip(axes[0], layers):
        z = np.asarray(test.z[layer], dtype=float)
        colours = ["#8aa"] * len(z)
        if layer == test.layer:
            colours[test.target] = "#c33" if test.detected else "#c99"
        bars = ax.bar(np.arange(len(z)), z, color=colours)
        if true_target is not None:
            bars[true_target].set_edgecolor("k")
            bars[true_target].set_linewidth(2)
        ax.axhline(cut, color="k", linestyle="--", linewidth=1)
        ax.set_xticks(np.arange(len(z)))
        ax.set_xlabel("class")
        ax.set_title(layer, fontsize=9)
    axes[0][0].set_ylabel("z against the references")
    verdict = "backdoor detected" if test.detected else "no backdoor detected"
    fig.suptitle(f"CEPA vs {test.n_references} clean references: {verdict} (class {test.target}, "
                 f"p={test.p_value:.2g})", fontsize=10)
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=120)
    return fig


def plot_trigger_estimate(x: np.ndarray, delta: np.ndarray, x_triggered: np.ndarray | None = None,
                          n: int = 4, path: str | Path | None = None) -> Any:
    """The paper's Fig. 5 layout: clean images, the estimated trigger (``x + delta``) and, when given, the true
    trigger, with the perturbations themselves below (``delta`` and ``x_triggered - x``).

    :param x: Clean images (N, C, H, W) in [0, 1].
    :param delta: Estimated perturbations, same shape (e.g. from ``CEPA.estimate_trigger``).
    :param x_triggered: The same images with the attack's true trigger, if known.
    :param n: Number of images (columns).
    :param path: Save the figure there; the figure is returned either way.
    """
    x, delta = np.asarray(x), np.asarray(delta)
    if x.shape != delta.shape or x.ndim != 4:
        raise InvalidParameterError(f"x and delta must be (N, C, H, W) arrays of one shape, got {x.shape} and "
                                    f"{delta.shape}")
    if x_triggered is not None and np.shape(x_triggered) != x.shape:
        raise InvalidParameterError(f"x_triggered has shape {np.shape(x_triggered)}, x has {x.shape}")
    plt = _pyplot()
    n = max(1, min(n, len(x)))
    rows = [("clean", x, False), ("estimated x + delta", np.clip(x + delta, 0, 1), False),
            ("estimated delta", delta, True)]
    if x_triggered is not None:
        x_triggered = np.asarray(x_triggered)
        rows[2:2] = [("true trigger", x_triggered, False)]
        rows.append(("true difference", x_triggered - x, True))
    fig, axes = plt.subplots(len(rows), n, figsize=(1.3 * n + 1.2, 1.3 * len(rows)), squeeze=False)
    for r, (title, images, signed) in enumerate(rows):
        bound = float(np.abs(images[:n]).max()) or 1.0
        for c in range(n):
            img = images[c].transpose(1, 2, 0)
            ax = axes[r][c]
            if img.shape[-1] == 1:
                if signed:
                    ax.imshow(img[..., 0], cmap="RdBu_r", vmin=-bound, vmax=bound)
                else:
                    ax.imshow(img[..., 0], cmap="gray", vmin=0, vmax=1)
            else:
                ax.imshow(np.clip(0.5 + img / (2 * bound) if signed else img, 0, 1))
            ax.set_xticks([])
            ax.set_yticks([])
        axes[r][0].set_ylabel(title, fontsize=7)
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=120)
    return fig


def plot_feature_projections(projections: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]],
                             path: str | Path | None = None, title: str | None = None) -> Any:
    """SDRM's Fig. 4 layout: 2-D projections of clean and triggered inputs' features, one row per trained model
    (e.g. RBT, SDRM-L, SDRM-A) and one column per feature level.

    :param projections: ``{row: {level: (clean (n, 2), triggered (m, 2))}}``, e.g. the benchmark's
        ``"feature_projections"`` (two principal components of the pooled features of each panel).
    :param path: Save the figure there; the figure is returned either way.
    :param title: Figure title.
    """
    rows = list(projections)
    if not rows or not all(projections[r] for r in rows):
        raise InvalidParameterError("projections must map at least one row to at least one level")
    levels = list(projections[rows[0]])
    for row in rows:
        for level, pair in projections[row].items():
            if len(pair) != 2 or any(np.ndim(points) != 2 or np.shape(points)[1] != 2 for points in pair):
                raise InvalidParameterError(f"projections[{row!r}][{level!r}] must be a pair of (n, 2) arrays")
    plt = _pyplot()
    fig, axes = plt.subplots(len(rows), len(levels), figsize=(2.6 * len(levels) + 0.6, 2.4 * len(rows)),
                             squeeze=False)
    for r, row in enumerate(rows):
        for c, level in enumerate(levels):
            ax = axes[r][c]
            clean, triggered = (np.asarray(p) for p in projections[row].get(level, (np.zeros((0, 2)),) * 2))
            ax.scatter(clean[:, 0], clean[:, 1], s=7, c="#3b7dd8", alpha=0.7, label="clean (target class)")
            ax.scatter(triggered[:, 0], triggered[:, 1], s=7, c="#d83b3b", alpha=0.7, marker="^",
                       label="triggered")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(level, fontsize=9)
            if c == 0:
                ax.set_ylabel(row, fontsize=9)
    axes[0][0].legend(fontsize=6, loc="best")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=120)
    return fig


def plot_detection_scores(scores: dict[str, np.ndarray], threshold: float | None = None, *,
                          title: str = "detection scores", bins: int = 40, path: str | Path | None = None) -> Any:
    """Overlaid histograms of a sample detector's scores per group (e.g. clean vs triggered), with its threshold.

    Works for any detector that scores inputs (MBDS ``score``, STRIP entropies, feature-squeezing distances). The
    legend gives each group's size and the fraction of it above the threshold (flagged, when higher scores mean
    more suspicious).

    :param scores: Group name -> 1-D scores (at least one non-empty group).
    :param threshold: Decision threshold drawn as a vertical line (None: no line).
    :param title: Axes title.
    :param bins: Histogram bins, shared by all groups.
    :param path: Save the figure there (PNG/PDF by suffix); the figure is returned either way.
    :raises InvalidParameterError: no group, an empty group, or non-finite scores.
    """
    if not scores:
        raise InvalidParameterError("plot_detection_scores: give at least one group of scores")
    groups = {name: np.asarray(values, dtype=float).ravel() for name, values in scores.items()}
    for name, values in groups.items():
        if values.size == 0 or not np.all(np.isfinite(values)):
            raise InvalidParameterError(f"plot_detection_scores: group {name!r} is empty or holds non-finite scores")
    plt = _pyplot()
    edges = np.histogram_bin_edges(np.concatenate(list(groups.values())), bins=bins)
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for name, values in groups.items():
        label = f"{name} (n={values.size}"
        if threshold is not None:
            label += f", {np.mean(values > threshold):.0%} above"
        ax.hist(values, bins=edges, alpha=0.55, density=True, label=label + ")")
    if threshold is not None:
        ax.axvline(threshold, color="k", ls="--", label=f"threshold {threshold:.3g}")
    ax.set_xlabel("score")
    ax.set_ylabel("density")
    ax.set_title(title)
    ax.legend(fontsize=7)
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=120)
    return fig


def plot_neural_cleanse(report: Any, true_target: int | None = None, path: str | Path | None = None) -> Any:
    """Neural Cleanse's evidence: one bar per putative target, the L1 norm of its reverse-engineered mask.

    Bars of flagged classes (anomaly index above the threshold) are red, targets that never reached the
    misclassification goal are hatched grey; each bar is labelled with its low-side MAD anomaly index. The
    ``true_target`` (when known, e.g. in a benchmark) is outlined.

    :param report: A :class:`~art_backdoor_ext.defences.model.neural_cleanse.NeuralCleanseReport`.
    :param true_target: Class to outline (None: none).
    :param path: Save the figure there (PNG/PDF by suffix); the figure is returned either way.
    """
    plt = _pyplot()
    norms = np.asarray(report.statistics, dtype=float)
    index = np.asarray(report.anomaly_index, dtype=float)
    reached = np.asarray(report.reached, dtype=bool)
    k = len(norms)
    fig, ax = plt.subplots(figsize=(max(4.0, 0.5 * k + 1.5), 3.2))
    colors = ["#c33" if c in report.flagged else ("#8aa" if reached[c] else "#ccc") for c in range(k)]
    bars = ax.bar(np.arange(k), norms, color=colors)
    for c, bar in enumerate(bars):
        if not reached[c]:
            bar.set_hatch("//")
        if true_target is not None and c == true_target:
            bar.set_edgecolor("k")
            bar.set_linewidth(2)
        label = "n/a" if not np.isfinite(index[c]) else f"{index[c]:.1f}"
        ax.annotate(label, (bar.get_x() + bar.get_width() / 2, bar.get_height()), ha="center", va="bottom",
                    fontsize=7)
    ax.set_xticks(np.arange(k))
    ax.set_xlabel("putative target class (label: anomaly index)")
    ax.set_ylabel("mask L1 norm")
    verdict = f"flagged {report.flagged}" if report.detected else "no backdoor detected"
    ax.set_title(f"Neural Cleanse: {verdict} (threshold {report.anomaly_threshold:g})", fontsize=9)
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=120)
    return fig
