"""End-to-end seconds of AD's batched pair optimisation (input space, the ``bench ad`` speed setting) against the
images per forward pass (``batch_size``), on one digits victim and one Fashion-MNIST victim, one thread.

Usage: ``OMP_NUM_THREADS=1 .venv/bin/python tools/scratch/scan_chunk_engine.py PER_CLASS BATCH [BATCH ...]``
(victims: digits-cnn 5 epochs on the digits training split, badnets-cnn 1 epoch on 5,000 Fashion-MNIST images,
seed 0; Fashion-MNIST at 60 iterations). Prints seconds per batch size, twice, and whether the sizes agree.
"""
from __future__ import annotations

import sys
import time

import numpy as np
import torch

from art_backdoor_ext.datasets import load_dataset, sample_per_class
from art_backdoor_ext.defences.model.order_statistic import OrderStatisticDetector
from art_backdoor_ext.defences.model.perturbation import pair_problems
from art_backdoor_ext.models import build_model, make_classifier
from art_backdoor_ext.training import fit_classifier

VICTIMS = {"digits": ("digits-cnn", 5, None), "fashion-mnist": ("badnets-cnn", 1, 60)}


def main(per_class: int, batches: list[int]) -> None:
    torch.set_num_threads(1)
    for dataset, (arch, epochs, max_iter) in VICTIMS.items():
        data = load_dataset(dataset)
        clf = make_classifier(build_model(arch, random_state=0), device_type="cpu")
        n = min(5000, len(data.x_train))
        fit_classifier(clf, data.x_train[:n], data.y_train[:n], nb_epochs=epochs, learning_rate=3e-3, random_state=0)
        x, y = sample_per_class(data.x_test, data.y_test, per_class, random_state=0)
        problems = pair_problems(y, clf.nb_classes)
        sizes = {}
        for run in (1, 2):
            cells = []
            for batch in batches:
                kw = {} if max_iter is None else {"max_iter": max_iter}
                det = OrderStatisticDetector(clf, layer=None, statistic="size", batch_size=batch, **kw)
                engine = det.engine(det._scale(x))
                start = time.perf_counter()
                sizes[batch] = engine.run(x, y, problems).size_l2
                cells.append(f"{batch}: {time.perf_counter() - start:.2f} s")
            same = all(np.allclose(s, sizes[batches[0]], rtol=1e-4, equal_nan=True) for s in sizes.values())
            print(f"{dataset} {per_class}/class run {run}: " + ", ".join(cells) + f"; sizes agree: {same}", flush=True)


if __name__ == "__main__":
    main(int(sys.argv[1]), [int(a) for a in sys.argv[2:]])
