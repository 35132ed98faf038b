"""A log-normal null on AD's sizes, tried against the size null (Gamma on the sizes) and dropped.

Usage: ``.venv/bin/python tools/scratch/ad_lognormal_null.py [RUN_DIR ...]``

1. Calibration on simulated clean size matrices (K = 10, 400 draws per family, theta = 0.05): the fraction the
   size null, the log-normal null and a robust z-score rule (median/MAD of the log sizes, z > 3.5) flag.
2. With saved ``bench ad-statistics`` runs (see ad_offline.py): pooled accuracy per group of the three on the
   default statistic (input L2, source-normalised-distance).

The log-normal null mirrors the size null: the K - 1 smallest log sizes set aside, a normal fitted by maximum
likelihood to the others, left-truncated at the largest set aside, p = 1 - (1 - Phi(z_min))^(K(K-1)).
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Callable

import numpy as np
from scipy import optimize, stats

from art_backdoor_ext.functional.size_null import size_order_statistic_pvalue

sys.path.insert(0, ".")
from tools.scratch.ad_offline import pooled  # noqa: E402

GROUPS = ("BD-P-S", "BD-G-S", "BD-G-M", "Clean")


def off_diagonal(m: np.ndarray) -> np.ndarray:
    return m[~np.eye(len(m), dtype=bool)]


def lognormal_p(m: np.ndarray) -> float:
    k = len(m)
    logs = np.sort(np.log(off_diagonal(m)))
    fit, cut = logs[k - 1:], logs[k - 2]

    def nll(p: np.ndarray) -> float:
        s = math.exp(p[1])
        return float(-(stats.norm.logpdf(fit, p[0], s).sum() - fit.size * stats.norm.logsf(cut, p[0], s)))

    res = optimize.minimize(nll, np.array([fit.mean(), math.log(fit.std())]), method="Nelder-Mead")
    cdf = float(stats.norm.cdf(logs[0], res.x[0], math.exp(res.x[1])))
    return float(-np.expm1(logs.size * np.log1p(-cdf)))


def robust_z(m: np.ndarray) -> float:
    logs = np.sort(np.log(off_diagonal(m)))
    rest = logs[len(m) - 1:]
    med = np.median(rest)
    return float((med - logs[0]) / (1.4826 * np.median(np.abs(rest - med))))


RULES: dict[str, Callable[[np.ndarray], bool]] = {
    "size null p < 0.05": lambda m: size_order_statistic_pvalue(m).p_value < 0.05,
    "log-normal null p < 0.05": lambda m: lognormal_p(m) < 0.05,
    "robust z > 3.5": lambda m: robust_z(m) > 3.5,
}


def calibration() -> None:
    rng = np.random.default_rng(1)
    families: dict[str, Callable[[], np.ndarray]] = {
        "Gamma(20) sizes": lambda: rng.gamma(20.0, 0.15, (10, 10)),
        "Gamma(5) sizes": lambda: rng.gamma(5.0, 0.15, (10, 10)),
        "log-normal(0.3) sizes": lambda: np.exp(rng.normal(0.0, 0.3, (10, 10))),
        "Gamma(20) reciprocals": lambda: 1.0 / rng.gamma(20.0, 0.15, (10, 10)),
    }
    print("| clean family | " + " | ".join(RULES) + " |\n|---|" + "---|" * len(RULES))
    for family, draw in families.items():
        flags = {name: 0 for name in RULES}
        for _ in range(400):
            m = draw()
            np.fill_diagonal(m, np.nan)
            for name, rule in RULES.items():
                flags[name] += rule(m)
        print(f"| {family} | " + " | ".join(f"{flags[n] / 400:.3f}" for n in RULES) + " |")


def accuracy(run_dirs: list[str]) -> None:
    victims, arrays, _ = pooled(run_dirs)
    print(f"\n{len(victims)} victims; input L2, source-normalised-distance, theta = 0.05")
    print("| rule | " + " | ".join(GROUPS) + " | mean |\n|---|" + "---|" * (len(GROUPS) + 1))
    for name, rule in RULES.items():
        acc = {}
        for g in GROUPS:
            hits = []
            for v in (v for v in victims if v["group"] == g):
                m = arrays[f"{g}/{v['seed']}/input L2/source-normalised-distance"]
                source, target = divmod(int(np.argmin(np.where(np.eye(len(m), dtype=bool), np.inf, m))), len(m))
                flagged = rule(m)
                right = v["target"] is not None and target == v["target"] and source in json.loads(v["sources"])
                hits.append(not flagged if g == "Clean" else flagged and right)
            acc[g] = float(np.mean(hits))
        print(f"| {name} | " + " | ".join(f"{acc[g]:.2f}" for g in GROUPS) + f" | {np.mean(list(acc.values())):.3f} |")


if __name__ == "__main__":
    calibration()
    if len(sys.argv) > 1:
        accuracy(sys.argv[1:])
