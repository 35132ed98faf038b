"""Seconds of one AD (OrderStatisticDetector) and one CEPA scan with the library found on the path.

Usage: scan_speed.py DATASET ARCH PER_CLASS [BATCH]  (a victim trained one epoch on 5,000 images, seed 0; AD at
40 iterations). Run it once from a checkout before a change and once after (``PYTHONPATH=that/checkout``) to
compare; prints the seconds and a checksum of the statistics (equal when only the speed changed).
"""

from __future__ import annotations

import sys
import time

import numpy as np
import torch

from art_backdoor_ext.datasets import load_dataset, sample_per_class
from art_backdoor_ext.defences.model.cepa import CEPA
from art_backdoor_ext.defences.model.order_statistic import OrderStatisticDetector
from art_backdoor_ext.models import build_model, make_classifier
from art_backdoor_ext.training import fit_classifier


def main(dataset: str, arch: str, per_class: int, batch: int | None) -> None:
    torch.set_num_threads(1)
    data = load_dataset(dataset)
    clf = make_classifier(build_model(arch, random_state=0), device_type="cpu")
    fit_classifier(clf, data.x_train[:5000], data.y_train[:5000], nb_epochs=1, learning_rate=3e-3, random_state=0)
    x, y = sample_per_class(data.x_test, data.y_test, per_class, random_state=0)
    kw = {} if batch is None else {"batch_size": batch}
    start = time.perf_counter()
    ad = OrderStatisticDetector(clf, max_iter=40, **kw).scan(x, y)
    t_ad = time.perf_counter() - start
    xc, yc = sample_per_class(data.x_test, data.y_test, 10, random_state=0)
    start = time.perf_counter()
    cepa = CEPA(clf, max_iter=60, random_state=0, **kw).scan(xc, yc)
    t_cepa = time.perf_counter() - start
    ratios = [np.nansum(v["ratio"]) for v in cepa.statistics["all-to-one"].values()]
    print({"AD s": round(t_ad, 1), "AD sizes sum": round(float(np.nansum(ad.sizes)), 4),
           "CEPA s": round(t_cepa, 1), "CEPA ratio sums": [round(float(r), 4) for r in ratios]}, flush=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]) if len(sys.argv) > 4 else None)
