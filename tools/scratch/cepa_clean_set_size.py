"""CEPA on the ``bench cepa`` fast-profile victims with a larger clean set than the paper's 10 images per class.

Usage: cepa_clean_set_size.py PER_CLASS GROUP FIRST_SEED N  (victims of ``bench cepa --profile fast``: seed
FIRST_SEED .. FIRST_SEED + N - 1 of GROUP, e.g. ``30 patch 5 5`` for the patch victims of ``--seed 5``).
Prints per victim the default (Sidak) decision, the joint-layer decision and the per-layer p-values; compare with
the victims table of the 10-per-class run (runs/v10/cepa-fast-s5).
"""

from __future__ import annotations

import sys
import time

from art_backdoor_ext.benchmarks import cepa as bench
from art_backdoor_ext.datasets import load_dataset
from art_backdoor_ext.defences.model.cepa import CEPA


def main(per_class: int, group: str, first_seed: int, n: int) -> None:
    cfg = {**bench.PROFILES["fast"], "per_class": per_class}
    data = load_dataset(cfg["dataset"])
    for seed in range(first_seed, first_seed + n):
        clf, target, asr = bench._victim(group, seed, data, cfg)
        clean_idx, _ = bench._split(data.y_test, per_class, seed)
        x, y = data.x_test[clean_idx], data.y_test[clean_idx]
        start = time.perf_counter()
        report = CEPA(clf, variant=cfg["variant"], max_iter=cfg["max_iter"], random_state=seed).scan(x, y)
        joint = report.joint or {"p_value": 1.0, "target": None}
        print({"group": group, "seed": seed, "target": target, "ASR": asr and round(asr, 3),
               "found": report.target, "p": float(f"{report.p_value:.3g}"),
               "joint": f"{joint['p_value']:.2g} -> {joint['target']}",
               "per layer": bench._per_layer(report, target), "s": round(time.perf_counter() - start)},
              flush=True)


if __name__ == "__main__":
    main(int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
