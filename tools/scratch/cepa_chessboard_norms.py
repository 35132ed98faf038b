"""CEPA on the chessboard victims of ``bench cepa --profile full`` at other trigger norms.

Usage: cepa_chessboard_norms.py NORMS SEEDS, e.g. ``cepa_chessboard_norms.py 1,2 20,21,22``: each victim is the
chessboard victim of ``bench cepa --profile full --seed S --models 1`` (seed 300 + S: same target, initial model,
training images and poisoned subset) with the chessboard's L2 norm set to each of NORMS (the profile: 2.0; the
CEPA paper: 2/255 per pixel on CIFAR-10, about 0.3 in L2). Prints per victim the ASR, and the target and p-value of
CEPA's default decision (sigma, each layer calibrated, Sidak) and of the layers pooled (``layer_pooling="pooled"``).
"""

from __future__ import annotations

import sys
import time

import torch

from art_backdoor_ext.benchmarks.cepa import GROUPS, PROFILES, _split, _victim
from art_backdoor_ext.datasets import load_dataset
from art_backdoor_ext.defences.model.cepa import CEPA


def main(norms: list[float], seeds: list[int]) -> None:
    torch.set_num_threads(1)
    data = load_dataset("fashion-mnist")
    for norm in norms:
        cfg = {**PROFILES["full"], "chessboard_norm": norm}
        for base in seeds:
            seed = base + 100 * GROUPS.index("chessboard")
            start = time.time()
            clf, target, asr = _victim("chessboard", seed, data, cfg)
            clean_idx, _ = _split(data.y_test, cfg["per_class"], seed)
            x, y = data.x_test[clean_idx], data.y_test[clean_idx]
            det = CEPA(clf, variant=cfg["variant"], max_iter=cfg["max_iter"], random_state=seed)
            reports = det.scan_variants(x, y, {"default": {}, "pooled": {"layer_pooling": "pooled"}})
            verdicts = ", ".join(
                f"{name}: p {r.p_value:.3g} -> {r.target}{' found' if r.detected and r.target == target else ''}"
                for name, r in reports.items())
            print(f"norm {norm:g} seed {seed} target {target}: ASR {asr:.3f}; {verdicts} ({time.time() - start:.0f} s)",
                  flush=True)


if __name__ == "__main__":
    main([float(v) for v in sys.argv[1].split(",")], [int(v) for v in sys.argv[2].split(",")])
