"""Plots of result objects. matplotlib is imported lazily (``pip install art-backdoor-ext[plot]``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from art_backdoor_ext.exceptions import InvalidParameterError

__all__ = ["plot_order_statistic"]


def _pyplot() -> Any:
    try:
        import matplotlib

        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise InvalidParameterError("plotting needs matplotlib: pip install 'art-backdoor-ext[plot]'") from err
    return plt


def plot_order_statistic(report: Any, path: str | Path | None = None) -> Any:
    """Histogram of AD's reciprocal statistics with the fitted Gamma null and the most extreme pair.

    :param report: An :class:`~art_backdoor_ext.defences.model.order_statistic.OrderStatisticReport`.
    :param path: Save the figure there (PNG/PDF by suffix); the figure is returned either way.
    """
    from scipy import stats

    plt = _pyplot()
    k = report.statistics.shape[0]
    off = ~np.eye(k, dtype=bool)
    recip = 1.0 / report.statistics[off]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.hist(recip, bins=30, density=True, color="#8aa", label="reciprocal statistics 1/d(v_st)")
    grid = np.linspace(0, recip.max() * 1.1, 400)
    null = report.null
    ax.plot(grid, stats.gamma.pdf(grid, a=null["shape"], scale=null["scale"]), color="k", label="fitted Gamma null")
    r_max = 1.0 / report.statistics[report.source, report.target]
    ax.axvline(r_max, color="#c33", ls="--",
               label=f"max: {report.source}->{report.target}, p={report.p_value:.2g}")
    if null.get("truncation") is not None:
        ax.axvline(null["truncation"], color="#888", ls=":", label="truncation")
    ax.set_xlabel("reciprocal perturbation size")
    ax.set_ylabel("density")
    ax.set_title("AD: " + ("backdoor detected" if report.detected else "no backdoor detected"))
    ax.legend(fontsize=7)
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=120)
    return fig
