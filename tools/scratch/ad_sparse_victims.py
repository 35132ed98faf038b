"""ASR of the Fashion-MNIST sparse-pixel (BD-P-S) victims of ``bench ad --profile full`` under training variants.

Usage: ad_sparse_victims.py SEED VARIANT, VARIANT one of: old (lr 1e-3, 300 copies, 4 epochs: the profile until
2026-12-01), c600 (600 copies), e8 (8 epochs), lr3 (lr 3e-3), new (lr 3e-3 and 600 copies: the profile now).
Prints the victim's ASR on triggered source-class test images and its clean test accuracy.
"""

from __future__ import annotations

import sys
import time

import torch

from art_backdoor_ext.benchmarks.ad import PROFILES, _victim
from art_backdoor_ext.datasets import load_dataset

OLD = {"lr": 1e-3, "single_source_count": 300, "epochs": 4}
VARIANTS = {
    "old": OLD,
    "c600": {**OLD, "single_source_count": 600},
    "e8": {**OLD, "epochs": 8},
    "lr3": {**OLD, "lr": 3e-3},
    "new": {**OLD, "lr": 3e-3, "single_source_count": 600},
}


def main(seed: int, variant: str) -> None:
    torch.set_num_threads(1)
    data = load_dataset("fashion-mnist")
    cfg = {**PROFILES["full"], **VARIANTS[variant]}
    start = time.time()
    clf, _, _, asr, _ = _victim("BD-P-S", seed, data, cfg)
    accuracy = float((clf.predict(data.x_test).argmax(1) == data.y_test).mean())
    print(f"seed {seed} {variant}: ASR {asr:.3f}, accuracy {accuracy:.3f} ({time.time() - start:.0f} s)", flush=True)


if __name__ == "__main__":
    main(int(sys.argv[1]), sys.argv[2])
