"""Benchmark ``ad-statistics``: which AD statistic and space measure best on our data (issue 3's study).

The AD paper's statistic is the size of each class pair's minimal common perturbation; on digits and
Fashion-MNIST naturally confusable pairs are as small as backdoor pairs, so clean models get flagged. This
benchmark scans each victim of the paper's four groups (same victims and seeds as ``bench ad``) once per
space/norm and evaluates, from the *same* size matrix, the paper's size statistic and this project's asymmetry
statistic (size over the reverse pair's size, :func:`~art_backdoor_ext.functional.robust.asymmetry_statistics`)
and source normalisations (size over its source's median size, and that over the square root of the pair's
clean margin or over the distance of the two classes' mean images,
:mod:`~art_backdoor_ext.functional.pair_normalisation`), each under two nulls (the paper's Gamma on the
reciprocals, Eq. 4, and this project's Gamma on the sizes, :mod:`~art_backdoor_ext.functional.size_null`), at
theta = 0.05. No Neural Cleanse and no speed run: this is the cheap, many-victim companion of ``bench ad``.

fast: digits, 6 victims per group, input and first-conv spaces. full: Fashion-MNIST, 5 victims per group, input
space (the first-conv space measured worst on Fashion-MNIST and left the full profile on 2026-12-01). L2 and L1
sizes come from the same scan. ``--per-class N`` changes the clean images per class (the paper uses 100).

Every victim's statistic matrices (K x K, NaN diagonal) are kept in the report's ``arrays`` under
``"group/seed/space norm/statistic"``; ``bench ... --output DIR`` writes them to
``DIR/ad-statistics-<profile>-arrays.npz`` (read with ``np.load(path, allow_pickle=False)``), so that another
statistic or null can be studied on the same victims without scanning them again.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import numpy as np

from art_backdoor_ext.benchmarks import BenchmarkReport, register_benchmark
from art_backdoor_ext.benchmarks.ad import (
    GROUPS,
    PROFILES,
    _verdict,
    _victim,
    is_successful,
    pair_ranks,
    source_by_size,
)
from art_backdoor_ext.datasets import load_dataset, sample_per_class
from art_backdoor_ext.defences.model.order_statistic import OrderStatisticDetector
from art_backdoor_ext.functional.null_exclusion import order_statistic_with_exclusion
from art_backdoor_ext.functional.pair_normalisation import NORMALISED_STATISTICS, normalised_statistics
from art_backdoor_ext.functional.robust import asymmetry_statistics, order_statistic_pvalue, reciprocal_statistics
from art_backdoor_ext.functional.size_null import size_order_statistic_pvalue

logger = logging.getLogger(__name__)

#: The spaces scanned; each scan's perturbations give both sizes (the engine's optimisation does not depend on
#: the norm), so L2 and L1 are evaluated from the same scan.
SPACES: dict[str, dict[str, Any]] = {
    "input": {"layer": None},
    "first conv": {"layer": "auto"},
}
NORMS = ("L2", "L1")
SETTINGS: dict[str, dict[str, Any]] = {
    "fast": {"models": 6, "spaces": tuple(SPACES)},
    "full": {"models": 5, "spaces": ("input",)},
}
#: The statistics evaluated from each scan's sizes: the paper's, the asymmetry statistic, and this project's
#: three normalisations (:mod:`~art_backdoor_ext.functional.pair_normalisation`).
STATISTICS = ("size (paper)", "asymmetry", *NORMALISED_STATISTICS)
#: name -> order-statistic inference on a size-like matrix: the paper's Eq. 4, or the Gamma on sizes.
NULLS: dict[str, Callable[[np.ndarray], Any]] = {
    "reciprocal (paper)": lambda s: order_statistic_pvalue(reciprocal_statistics(s)),
    "size": size_order_statistic_pvalue,
    "size, combined exclusion": lambda s: order_statistic_with_exclusion(size_order_statistic_pvalue, s, "combined")[0],
}
THETA = 0.05
#: (statistic, null) pairs not evaluated: the asymmetry matrix is reciprocal-symmetric (``a_ts = 1 / a_st``), so
#: the large mirror of every excluded small value stays in the size null's fit, the fitted Gamma gets a heavy
#: left tail, and no pair is ever extreme (simulation: ``tools/scratch/ad_asymmetry_size_null.py``: a planted
#: pair 10x smaller than the rest is detected 0 times in 100, 100 times with the paper's reciprocal null).
EXCLUDED = {("asymmetry", "size"), ("asymmetry", "size, combined exclusion")}
#: The detector's default (statistic, null): also evaluated with its default source rule (the smallest size into
#: the detected target); every other row names the most extreme pair's source, as the paper does.
DEFAULT = ("source-normalised-distance", "size, combined exclusion")


def _statistic(sizes: np.ndarray, name: str, x: np.ndarray, y: np.ndarray, outputs: np.ndarray) -> np.ndarray:
    if name == "size (paper)":
        statistic = np.maximum(sizes, 1e-12)
    elif name == "asymmetry":
        statistic = asymmetry_statistics(np.maximum(sizes, 1e-12))
    else:
        statistic = normalised_statistics(sizes, name, x=x, y=y, outputs=outputs)
    np.fill_diagonal(statistic, np.nan)
    return statistic


def outcome(ost: Any, target: int | None, sources: list[int]) -> dict[str, Any]:
    """An inference result beside the victim's truth, in the form :func:`~art_backdoor_ext.benchmarks.ad._verdict`
    judges (``target`` None for a clean model)."""
    return {"p": ost.p_value, "found": ost.target, "source": ost.source, "target": target, "sources": sources}


def _accuracy_table(outcomes: dict[tuple[str, str, str], dict[str, list[tuple[bool, float, bool]]]],
                    successful_only: bool) -> list[dict[str, Any]]:
    """One row per (scan, statistic, null): accuracy per group and p-value summaries; ``successful_only`` keeps
    the attacked victims whose ASR reached the profile's ``min_asr`` (and every clean model), with the count."""
    rows = []
    for (scan, stat, null), by_group in outcomes.items():
        kept = {g: [v for v in by_group[g] if v[2] or not successful_only] for g in GROUPS}
        row: dict[str, Any] = {"space and norm": scan, "statistic": stat, "null": null}
        for group in GROUPS:
            row[group] = float(np.mean([ok for ok, _, _ in kept[group]])) if kept[group] else None
        if successful_only:
            row["victims kept"] = " / ".join(str(len(kept[g])) for g in GROUPS)
        row["mean over groups"] = float(np.mean([row[g] for g in GROUPS if row[g] is not None]))
        row["min p clean"] = float(min(p for _, p, _ in kept["Clean"]))
        row["median p clean"] = float(np.median([p for _, p, _ in kept["Clean"]]))
        attacked = [p for g in GROUPS[:3] for _, p, _ in kept[g]]
        row["max p attacked"] = float(max(attacked)) if attacked else None
        rows.append(row)
    return rows


@register_benchmark("ad-statistics")
def bench_ad_statistics(*, profile: str, random_state: int, verbose: bool, models: int | None = None,
                        per_class: int | None = None) -> BenchmarkReport:
    cfg = dict(PROFILES[profile])
    if per_class is not None:
        cfg["per_class"] = per_class
    settings = SETTINGS[profile]
    n_models = settings["models"] if models is None else models
    data = load_dataset(cfg["dataset"])
    # (scan, statistic, null) -> group -> [(right verdict, p-value, successful attack or clean model)]
    outcomes: dict[tuple[str, str, str], dict[str, list[tuple[bool, float, bool]]]] = defaultdict(
        lambda: defaultdict(list))
    victims = []
    arrays: dict[str, np.ndarray] = {}  # "group/seed/space norm/statistic" -> K x K matrix, NaN diagonal
    for m in range(n_models):
        for group in GROUPS:
            seed = random_state + 100 * GROUPS.index(group) + m
            clf, target, sources, asr, draws = _victim(group, seed, data, cfg)
            successful = is_successful(asr, cfg.get("min_asr"))
            x, y = sample_per_class(data.x_test, data.y_test, cfg["per_class"], random_state=seed)
            victim_row: dict[str, Any] = {"group": group, "seed": seed, "target": target, "sources": str(sources),
                                          "ASR": asr, "draws": draws}
            victims.append(victim_row)
            outputs = clf.predict(x)
            for space in settings["spaces"]:
                sizes_by_norm = OrderStatisticDetector(clf, **SPACES[space]).scan(x, y).sizes_by_norm
                for norm, stat in ((norm, stat) for norm in NORMS for stat in STATISTICS):
                    scan, sizes = f"{space} {norm}", sizes_by_norm[norm.lower()]
                    statistic = _statistic(sizes, stat, x, y, outputs)
                    arrays[f"{group}/{seed}/{scan}/{stat}"] = statistic
                    victim_row[f"true pair rank ({scan}, {stat})"] = pair_ranks(statistic, target, sources)
                    for null, inference in NULLS.items():
                        if (stat, null) in EXCLUDED:
                            continue
                        ost = inference(statistic)
                        named = {stat: ost}
                        if (stat, null) == DEFAULT:
                            named[f"{stat}, source by smallest size (default)"] = source_by_size(ost, sizes)
                        for row_name, result in named.items():
                            verdict = (_verdict(outcome(result, target, sources), THETA)[0], float(result.p_value),
                                       successful)
                            outcomes[(scan, row_name, null)][group].append(verdict)
            logger.info("bench ad-statistics: %s seed %d", group, seed)
    title = f"accuracy at theta = {THETA} (attacked: right target and source; clean: not flagged)"
    tables: dict[str, list[dict[str, Any]]] = {title: _accuracy_table(outcomes, successful_only=False)}
    if cfg.get("min_asr") is not None:
        tables[f"{title}, successful attacks only (ASR >= {cfg['min_asr']:g} after redraws, as in the paper)"] = (
            _accuracy_table(outcomes, successful_only=True))
    report = BenchmarkReport("ad-statistics", profile, {**tables, "victims": victims})
    report.arrays = arrays
    report.notes += [f"dataset {data.name}, {n_models} victims per group (the same seeds as bench ad), "
                     f"{cfg['per_class']} clean images per class; every statistic, norm and null from one scan per "
                     "space",
                     "not evaluated: the asymmetry statistic under the size null (reciprocal-symmetric, so that null "
                     "cannot flag it; tools/scratch/ad_asymmetry_size_null.py)"]
    return report
