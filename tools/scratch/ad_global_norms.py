"""The AD paper's Fig. 5 protocol on our Fashion-MNIST victims: ASR and clean accuracy of global chessboard
backdoors against their L2 norm, and what the default AD scan makes of each victim.

Usage: ad_global_norms.py GROUP NORMS SEEDS [REDRAWS [COUNT]], e.g. ``ad_global_norms.py BD-G-S 0.5,1,2 20,21 3``.
GROUP is BD-G-S or BD-G-M; each victim is the ``bench ad --profile full`` victim of that seed (same classes,
initial model and training images) with the chessboard at the given norm, trained once (REDRAWS 0, the default)
or, like the full profile, drawn again while its ASR stays below 0.9, up to REDRAWS times; COUNT poisoned copies
per source (default: the profile's, 600 single-source and 300 per source since 2026-12-03). Prints one line per
victim: norm, seed, ASR on triggered source-class test images, draws, clean test accuracy, and the default detector's
p-value, verdict (detected, right target and source) and the rank of the true pair among the 90 statistics.
``ad_global_norms.py --summary LOG [LOG ...]`` counts, per log of such lines, the victims found (right target
and source, theta = 0.05) among all and among the successful attacks (ASR >= 0.9).
The paper (CIFAR-10) picked the smallest norm with high ASR and negligible accuracy loss: 0.2 for global
patterns (ASR 0.959), against the full profile's 2.0 until 2026-12-03 (1.0 since).
"""

from __future__ import annotations

import re
import sys
import time

import torch

from art_backdoor_ext.benchmarks.ad import GROUPS, PROFILES, _verdict, _victim, pair_ranks
from art_backdoor_ext.benchmarks.ad_statistics import THETA, outcome
from art_backdoor_ext.datasets import load_dataset, sample_per_class
from art_backdoor_ext.defences.model.order_statistic import OrderStatisticDetector

#: The full profile's success threshold: a redrawing attacker stops at it, and ``--summary`` counts by it.
MIN_ASR = PROFILES["full"]["min_asr"]


def main(group: str, norms: list[float], seeds: list[int], redraws: int = 0, count: int | None = None) -> None:
    torch.set_num_threads(1)
    data = load_dataset("fashion-mnist")
    for norm in norms:
        cfg = {**PROFILES["full"], "global_norm": norm, "min_asr": MIN_ASR if redraws else None,
               "redraws": redraws}
        if count is not None:
            cfg.update(count=count, single_source_count=count)
        for base in seeds:
            seed = base + 100 * GROUPS.index(group)
            start = time.time()
            clf, target, sources, asr, draws = _victim(group, seed, data, cfg)
            accuracy = float((clf.predict(data.x_test).argmax(1) == data.y_test).mean())
            x, y = sample_per_class(data.x_test, data.y_test, cfg["per_class"], random_state=seed)
            report = OrderStatisticDetector(clf).scan(x, y)
            right = _verdict(outcome(report, target, sources), THETA)[0]
            rank = pair_ranks(report.statistics, target, sources)
            print(f"norm {norm:g} seed {seed} {sources}->{target}: ASR {asr:.3f}, draws {draws}, "
                  f"accuracy {accuracy:.3f}, "
                  f"p {report.p_value:.3g}, found {right} ({report.source}->{report.target}), rank {rank} "
                  f"({time.time() - start:.0f} s)", flush=True)


def summary(paths: list[str]) -> None:
    for path in paths:
        rows = [(float(m.group(1)), m.group(2) == "True") for m in
                (re.search(r"ASR ([0-9.]+),.* found (True|False)", line) for line in open(path)) if m]
        kept = [found for asr, found in rows if asr >= MIN_ASR]
        print(f"{path}: found {sum(f for _, f in rows)} / {len(rows)} victims; "
              f"successful attacks {len(kept)}, found {sum(kept)} ({sum(kept) / max(len(kept), 1):.2f})")


if __name__ == "__main__":
    if sys.argv[1] == "--summary":
        summary(sys.argv[2:])
        sys.exit()
    main(sys.argv[1], [float(v) for v in sys.argv[2].split(",")], [int(v) for v in sys.argv[3].split(",")],
         int(sys.argv[4]) if len(sys.argv) > 4 else 0, int(sys.argv[5]) if len(sys.argv) > 5 else None)
