"""``bench ad``'s speed comparison (batched engine against the one-pair loop, ``benchmarks.ad._speed``) at several
clean-set sizes and thread counts, on one digits victim, to see how much of the loop's time is per-iteration
overhead (the part batching removes) and how much is arithmetic (the part both pay).

Usage: ``.venv/bin/python tools/scratch/ad_speed_per_class.py [--retain] THREADS PER_CLASS [PER_CLASS ...]`` (a
digits-cnn trained 5 epochs on the digits training split, seed 0; each size timed twice, both rows printed as JSON;
``--retain`` calls ``allocator.retain_freed_memory()`` first, as the ``art-backdoor-ext`` command does).
"""
from __future__ import annotations

import json
import sys

import torch

from art_backdoor_ext.allocator import retain_freed_memory
from art_backdoor_ext.benchmarks.ad import _speed
from art_backdoor_ext.datasets import load_dataset, sample_per_class
from art_backdoor_ext.models import build_model, make_classifier
from art_backdoor_ext.training import fit_classifier


def main(threads: int, sizes: list[int], retain: bool) -> None:
    if retain:
        retain_freed_memory()
    torch.set_num_threads(threads)
    data = load_dataset("digits")
    clf = make_classifier(build_model("digits-cnn", random_state=0), device_type="cpu")
    fit_classifier(clf, data.x_train, data.y_train, nb_epochs=5, learning_rate=3e-3, random_state=0)
    for per_class in sizes:
        x, y = sample_per_class(data.x_test, data.y_test, per_class, random_state=0)
        for run in (1, 2):
            row = {"threads": threads, "retain": retain, "per_class": per_class, "run": run, **_speed(clf, x, y)}
            print(json.dumps(row), flush=True)


if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if a != "--retain"]
    main(int(args[0]), [int(a) for a in args[1:]], "--retain" in sys.argv[1:])
