"""How the uncalibrated all-to-one p-value of CEPA maps to the bootstrap-calibrated one (K = 10 statistics).

Usage: cepa_calibration_map.py [BENCH_JSON ...]

Simulates clean sets of ten i.i.d. Gamma statistics at several shapes, records the uncalibrated order-statistic
p-value (``max_statistic_pvalue``) of each, and prints, for a ladder of uncalibrated values, the fraction of clean
sets at or below it per shape: that fraction is what the bootstrap calibration estimates. The map barely depends
on the shape, which is why the calibration is robust to the fitted shape. Given ``bench cepa`` JSON files whose
victims table has the per-layer column written before the calibration existed, it converts their per-layer
uncalibrated p-values through the shape-pooled map and prints each victim's approximate calibrated, Sidak-corrected
decision (an approximation of rerunning the scans with ``calibration="bootstrap"``: the per-layer p-values are
rounded to two digits in that column).
"""

from __future__ import annotations

import json
import re
import sys

import numpy as np

from art_backdoor_ext.functional.cepa_math import max_statistic_pvalue, sidak_correction

SHAPES = (3.0, 10.0, 30.0, 100.0)
LADDER = (0.05, 0.02, 0.01, 0.005, 0.002, 0.001, 3e-4, 1e-4, 1e-5, 1e-6)


def null_pvalues(n_sets: int = 2000, k: int = 10, seed: int = 0) -> dict[float, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {a: np.sort([max_statistic_pvalue(rng.gamma(a, 1.0, size=k))[0] for _ in range(n_sets)]) for a in SHAPES}


def calibrate(raw: float, pooled: np.ndarray) -> float:
    return float((1 + np.searchsorted(pooled, raw, side="right")) / (pooled.size + 1))


def main(paths: list[str]) -> None:
    sims = null_pvalues()
    print("uncalibrated p -> fraction of clean sets at or below, per Gamma shape", SHAPES)
    for raw in LADDER:
        print(f"  {raw:8.0e}: " + "  ".join(f"{np.mean(v <= raw):.4f}" for v in sims.values()))
    pooled = np.sort(np.concatenate(list(sims.values())))
    pattern = re.compile(r"(\w+): p ([0-9.e+-]+) -> (\d+)(?: \(true #(\d+)\))?")
    for path in paths:
        victims = json.load(open(path))["tables"]["victims"]
        print(f"\n{path}")
        for v in victims:
            column = next(val for key, val in v.items() if key.startswith("per layer"))
            layers = pattern.findall(column)
            calibrated = [(calibrate(float(p), pooled), layer, int(t)) for layer, p, t, _ in layers]
            best = min(calibrated)
            corrected = sidak_correction(best[0], len(calibrated))
            found = "clean" if v["target"] is None else ("found" if best[2] == v["target"] and corrected < 0.05
                                                          else "missed")
            print(f"  {v['group']:10s} seed {v['seed']:3d} target {v['target']}: was detected={v['detected']} "
                  f"p={v['p_value']:.2g}; calibrated ~{corrected:.3f} -> {best[2]} at {best[1]} "
                  f"({'flagged' if corrected < 0.05 else 'not flagged'}, {found}) | {column}")


if __name__ == "__main__":
    main(sys.argv[1:])
