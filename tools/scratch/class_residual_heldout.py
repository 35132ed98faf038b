"""ClassResidualDetector alone on new `bench mbds` victims (no MBDS fit): a held-out check of the baseline.

Usage: ``OMP_NUM_THREADS=1 .venv/bin/python tools/scratch/class_residual_heldout.py PROFILE SEED [VICTIMS]``

Draws the reserve, attacker share, test subset and victims exactly as ``bench mbds --profile PROFILE --seed SEED``
(victim seeds SEED + 100 + 10 i + v, redraws included) and scores each victim's test inputs with the library's
``ClassResidualDetector`` as the benchmark's baseline row does. Prints the benchmark's metrics per victim and the
mean per attack.
"""
import sys
import time

import numpy as np

from art_backdoor_ext.benchmarks import mbds as bench


def main(profile: str, seed0: int, n_victims: int) -> None:
    cfg = dict(bench.PROFILES[profile])
    data, (xr, yr), (x_att, y_att), (x_test, y_test) = bench.benchmark_data(cfg, seed0)
    rows = []
    for i, attack in enumerate(bench.ATTACKS):
        for v in range(n_victims):
            start = time.perf_counter()
            clf, trigger, target, victim = bench._victim(attack, seed0 + 100 + 10 * i + v, cfg, data, x_att, y_att,
                                                         x_test, y_test)
            metrics, _ = bench._class_residual(clf, xr, yr, trigger, target, x_test, y_test, seed0 + 1)
            row = {"attack": attack, "seed": victim["seed"], "BA": round(victim["BA"], 3),
                   "ASR": round(victim["ASR"], 3), **{k: round(metrics[k], 3) for k in
                                                     ("F2", "F2 (effective triggers)", "AUROC", "FRR")},
                   "s": round(time.perf_counter() - start)}
            rows.append(row)
            print(row, flush=True)
    for attack in bench.ATTACKS:
        group = [r for r in rows if r["attack"] == attack]
        print(f"{attack}: " + ", ".join(f"{k} {np.mean([r[k] for r in group]):.3f}"
                                        for k in ("F2", "F2 (effective triggers)", "AUROC", "FRR")))


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]) if len(sys.argv) > 3 else 3)
