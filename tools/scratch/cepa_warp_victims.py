"""ASR of the Fashion-MNIST warp victims of ``bench cepa --profile full`` under training variants.

Usage: cepa_warp_victims.py SEED VARIANT, VARIANT one of: old (rate 0.05, lr 1e-3: the profile until
2026-12-01), lr3 (lr 3e-3), r16 (rate 0.16: the paper's WaNet fraction, nine times the other attacks' 1.8%),
new (rate 0.16 and lr 3e-3). Prints the victim's ASR and its clean test accuracy.
"""

from __future__ import annotations

import sys
import time

import torch

from art_backdoor_ext.benchmarks.cepa import PROFILES, _victim
from art_backdoor_ext.datasets import load_dataset

OLD = {"rate": 0.05, "lr": 1e-3}
VARIANTS = {"old": OLD, "lr3": {**OLD, "lr": 3e-3}, "r16": {**OLD, "rate": 0.16},
            "new": {"rate": 0.16, "lr": 3e-3}}


def main(seed: int, variant: str) -> None:
    torch.set_num_threads(1)
    data = load_dataset("fashion-mnist")
    cfg = {**PROFILES["full"], **VARIANTS[variant]}
    start = time.time()
    clf, _, asr = _victim("warp", seed, data, cfg)
    accuracy = float((clf.predict(data.x_test).argmax(1) == data.y_test).mean())
    print(f"seed {seed} {variant}: ASR {asr:.3f}, accuracy {accuracy:.3f} ({time.time() - start:.0f} s)", flush=True)


if __name__ == "__main__":
    main(int(sys.argv[1]), sys.argv[2])
