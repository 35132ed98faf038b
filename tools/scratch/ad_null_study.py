"""AD on Fashion-MNIST: collect each victim's input-space L2 size matrix and its clean logits, to study the null.

Usage: ad_null_study.py OUT_DIR FIRST_SEED N_MODELS [GROUP ...]  (the ``bench ad --profile full`` victims and
clean sets; the seeds are FIRST_SEED..FIRST_SEED+N_MODELS-1 plus 100 * group index, as in the benchmark).
Writes one ``GROUP-SEED.npz`` per victim (sizes, logits of the clean set, labels, target, sources, ASR) and
skips victims already written, so an interrupted run resumes.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from art_backdoor_ext.benchmarks.ad import GROUPS, PROFILES, _victim
from art_backdoor_ext.datasets import load_dataset, sample_per_class
from art_backdoor_ext.defences.model.order_statistic import OrderStatisticDetector


def main(out: Path, first: int, n_models: int, groups: list[str]) -> None:
    cfg = dict(PROFILES["full"])
    data = load_dataset(cfg["dataset"])
    out.mkdir(parents=True, exist_ok=True)
    for m in range(first, first + n_models):
        for group in groups:
            seed = 100 * GROUPS.index(group) + m
            path = out / f"{group}-{seed}.npz"
            if path.exists():
                continue
            clf, target, sources, asr, _ = _victim(group, seed, data, cfg)
            x, y = sample_per_class(data.x_test, data.y_test, cfg["per_class"], random_state=seed)
            sizes = OrderStatisticDetector(clf, layer=None).scan(x, y).sizes
            np.savez(path, sizes=sizes, logits=clf.predict(x), y=y, target=-1 if target is None else target,
                     sources=np.asarray(sources, dtype=int), asr=np.nan if asr is None else asr)
            print(f"{group}-{seed} ASR {asr} written", flush=True)


if __name__ == "__main__":
    main(Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4:] or list(GROUPS))
