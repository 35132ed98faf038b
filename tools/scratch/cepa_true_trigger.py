"""CEPA on Fashion-MNIST: the ground-truth trigger's sigma / ||mu|| per layer against the Eq. 1 statistics of the
putative targets, for the first two blend and chessboard victims of ``bench cepa --profile full``.

Usage: cepa_true_trigger.py EPOCHS  (4 = the full profile's victims; 12 = the same seeds trained longer).
Prints per victim and layer the true trigger's ratio, Eq. 1's ratio for the true target, and Eq. 1's median.
"""

from __future__ import annotations

import sys

import numpy as np

from art_backdoor_ext.benchmarks import cepa as bench
from art_backdoor_ext.datasets import load_dataset
from art_backdoor_ext.defences.model.cepa import CEPA


def main(epochs: int) -> None:
    cfg = {**bench.PROFILES["full"], "epochs": epochs}
    data = load_dataset(cfg["dataset"])
    for group, seed in [("blend", 100), ("blend", 101), ("chessboard", 300), ("chessboard", 301)]:
        clf, target, asr = bench._victim(group, seed, data, cfg)
        idx, _ = bench._split(data.y_test, cfg["per_class"], seed)
        x, y = data.x_test[idx], data.y_test[idx]
        det = CEPA(clf, variant="all-to-one", max_iter=cfg["max_iter"], random_state=seed)
        report = det.scan(x, y)
        xs = x[y != target]
        truth = det.trigger_consensus(xs, bench._trigger(group, seed, cfg)(xs).astype(np.float32))
        line = f"{group}-{seed} target {target} ASR {asr:.2f} found {report.target} |"
        for layer, stats in truth.items():
            eq1 = np.asarray(report.statistics["all-to-one"][layer]["ratio"])
            line += f" {layer}: true {stats['ratio']:.3f} eq1(target) {eq1[target]:.3f} median {np.median(eq1):.3f}"
        print(line, flush=True)


if __name__ == "__main__":
    main(int(sys.argv[1]))
