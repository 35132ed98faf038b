"""Evaluate candidate AD statistics offline on the victims written by ad_null_study.py.

Usage: ad_null_analysis.py DIR [THETA]. For each statistic: accuracy per group (attacked: right source and
target at p < THETA; clean: not flagged), the true pair's rank, and the clean models' smallest p-values.
"""

from __future__ import annotations

import sys
from collections import defaultdict
from itertools import product
from pathlib import Path

import numpy as np

from art_backdoor_ext.datasets import load_dataset, sample_per_class
from art_backdoor_ext.functional.pair_normalisation import (
    class_mean_distances,
    clean_margins,
    source_normalised_statistics,
)
from art_backdoor_ext.functional.robust import asymmetry_statistics, order_statistic_pvalue, reciprocal_statistics
from art_backdoor_ext.functional.size_null import size_order_statistic_pvalue

GROUPS = ("BD-P-S", "BD-G-S", "BD-G-M", "Clean")
NULLS = {"reciprocal": lambda s: order_statistic_pvalue(reciprocal_statistics(s)),
         "size": size_order_statistic_pvalue}
VERBOSE = "-v" in sys.argv
GRID = "-g" in sys.argv


def nn_distances(x: np.ndarray, y: np.ndarray, k: int) -> np.ndarray:
    """Model-free closeness of each class pair: the median over source samples of the distance to the nearest
    target sample (the class-mean distance is the library's ``class_mean_distances``)."""
    flat = x.reshape(len(x), -1).astype(np.float64)
    sq = (flat**2).sum(1)
    dist = np.sqrt(np.maximum(sq[:, None] + sq[None] - 2 * flat @ flat.T, 0))
    nn = np.full((k, k), np.nan)
    for s in range(k):
        for t in range(k):
            if s != t:
                nn[s, t] = np.median(dist[np.ix_(y == s, y == t)].min(1))
    return nn


def _off(a: np.ndarray) -> np.ndarray:
    return np.where(np.eye(len(a), dtype=bool), np.nan, a)


def candidates(d: dict) -> dict[str, np.ndarray]:
    sizes = np.maximum(d["sizes"], 1e-12)
    k = len(sizes)
    dd = {"mean": class_mean_distances(d["x"], d["y"]), "nn": nn_distances(d["x"], d["y"], k)}
    m80 = clean_margins(d["logits"], d["y"], quantile=0.8)
    m50 = clean_margins(d["logits"], d["y"], quantile=0.5)
    return {
        "size (paper)": sizes,
        "asymmetry": asymmetry_statistics(sizes),
        "size / margin q0.8": sizes / m80,
        "size / margin q0.5": sizes / m50,
        "size / sqrt(margin q0.5)": sizes / np.sqrt(m50),
        "size / class-mean distance": sizes / dd["mean"],
        "size / NN distance": sizes / dd["nn"],
        "size / mean dist / margin": sizes / dd["mean"] / m50,
        "size / row median": sizes / np.nanmedian(_off(sizes), axis=1, keepdims=True),
        "source-normalised (leave-one-out)": source_normalised_statistics(sizes),
        "source-normalised-margin": source_normalised_statistics(sizes) / m50**0.5,
        "source-normalised-distance": source_normalised_statistics(sizes) / dd["mean"],
        **{f"size / dist^{a} / margin^{b}": sizes / dd["mean"] ** a / m50**b
           for a in (0.5, 1.0, 1.5) for b in (0.25, 0.5, 0.75) if GRID},
    }


def main(folder: Path, theta: float) -> None:
    acc: dict[str, dict[str, list[bool]]] = defaultdict(lambda: defaultdict(list))
    ranks: dict[str, list[int]] = defaultdict(list)
    clean_p: dict[str, list[float]] = defaultdict(list)
    data = load_dataset("fashion-mnist")
    for path in sorted(folder.glob("*.npz")):
        d = dict(np.load(path))
        group, seed = path.stem.rsplit("-", 1)
        d["x"], y = sample_per_class(data.x_test, data.y_test, 30, random_state=int(seed))
        assert (y == d["y"]).all()
        target, sources = int(d["target"]), [int(s) for s in d["sources"]]
        for (base, stat), null in product(candidates(d).items(), NULLS):
            name = f"{base} [{null} null]"
            stat = np.where(np.eye(len(stat), dtype=bool), np.nan, stat)
            ost = NULLS[null](stat)
            if VERBOSE:
                print(f"  {path.stem:12s} {name:28s} p {ost.p_value:.2e} found ({ost.source}->{ost.target}) "
                      f"true ({sources}->{target})")
            if group == "Clean":
                acc[name][group].append(ost.p_value >= theta)
                clean_p[name].append(ost.p_value)
            else:
                acc[name][group].append(ost.p_value < theta and ost.target == target and ost.source in sources)
                off = stat[~np.eye(len(stat), dtype=bool)]
                ranks[name].append(int(np.sum(off < min(stat[s, target] for s in sources))) + 1)
    n = {g: len(v) for g, v in next(iter(acc.values())).items()}
    print(f"{folder}: victims per group {n}, theta {theta}")
    for name, by_group in acc.items():
        cells = " ".join(f"{g} {np.mean(by_group[g]):.2f}" for g in GROUPS if g in by_group)
        print(f"{name:46s} {cells} | mean {np.mean([np.mean(v) for v in by_group.values()]):.3f} | ranks "
              f"{ranks[name]} | clean p {np.round(sorted(clean_p[name]), 4).tolist()}")


if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if a not in ("-v", "-g")]
    main(Path(args[0]), float(args[1]) if len(args) > 1 else 0.05)
