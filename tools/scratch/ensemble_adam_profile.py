"""cProfile of one train_ensemble epoch: 16 BadNets CNNs (28x28), 300 random images each, batch 32, one thread.

Usage: ensemble_adam_profile.py  (docs/ensemble.md quotes the time in _StackedAdam.step: 1.7 s of 4.5 s before
the in-place update, 0.7 s after; the numbers move with the machine's load).
"""

from __future__ import annotations

import cProfile
import pstats

import numpy as np
import torch

from art_backdoor_ext.ensemble import train_ensemble
from art_backdoor_ext.models import build_model


def main() -> None:
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    sets = [(rng.random((300, 1, 28, 28), dtype=np.float32), rng.integers(0, 10, 300)) for _ in range(16)]
    kw = {"nb_epochs": 1, "batch_size": 32, "learning_rate": 1e-3, "random_state": 0}
    train_ensemble(lambda i: build_model("badnets-cnn"), sets[:2], **kw)  # warm-up
    profiler = cProfile.Profile()
    profiler.runcall(train_ensemble, lambda i: build_model("badnets-cnn"), sets, **kw)
    pstats.Stats(profiler).sort_stats("tottime").print_stats(12)


if __name__ == "__main__":
    main()
