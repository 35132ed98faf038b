"""Benchmark ``ensemble``: vectorised shadow-model training (:func:`train_ensemble`) against one model at a time
(:func:`train_sequential`), for several ensemble sizes and batch sizes, on the same data in the same run.

Both trainers are warmed up first (one tiny call each) so that neither pays one-off costs (thread pools, kernel
selection) inside its timing. Each row also records the torch thread count: on a CPU a small CNN's training is
compute-bound, and batching N models mainly removes per-call overhead, which is small next to the arithmetic;
on a GPU batching fills the device. fast: digits CNN, 300 images per model, 3 epochs. full: the BadNets CNN on
2,000 Fashion-MNIST images per model, 2 epochs, up to 64 models.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from art_backdoor_ext.benchmarks import BenchmarkReport, memory_columns, register_benchmark
from art_backdoor_ext.datasets import load_dataset
from art_backdoor_ext.ensemble import profile_training, train_ensemble, train_sequential
from art_backdoor_ext.models import build_model

PROFILES: dict[str, dict[str, Any]] = {
    "fast": {"dataset": "digits", "arch": "digits-cnn", "images": 300, "epochs": 3, "sizes": (8, 32),
             "batch_sizes": (16, 64)},
    "full": {"dataset": "fashion-mnist", "arch": "badnets-cnn", "images": 2000, "epochs": 2, "sizes": (16, 64),
             "batch_sizes": (32, 128)},
}


@register_benchmark("ensemble")
def bench_ensemble(*, profile: str, random_state: int, verbose: bool, models: int | None = None) -> BenchmarkReport:
    cfg = dict(PROFILES[profile])
    if models is not None:
        cfg["sizes"] = (models,)
    data = load_dataset(cfg["dataset"])
    rng = np.random.default_rng(random_state)
    arch = cfg["arch"]

    def factory(i: int) -> torch.nn.Module:
        return build_model(arch, nb_classes=data.nb_classes)

    def datasets(n: int) -> list[tuple[np.ndarray, np.ndarray]]:
        picks = [rng.choice(len(data.x_train), cfg["images"], replace=False) for _ in range(n)]
        return [(data.x_train[p], data.y_train[p]) for p in picks]

    warm = datasets(2)
    for trainer in (train_ensemble, train_sequential):
        trainer(factory, warm, nb_epochs=1, batch_size=16, learning_rate=1e-3, random_state=random_state)
    rows = []
    for n in cfg["sizes"]:
        sets = datasets(n)
        for batch_size in cfg["batch_sizes"]:
            kw = {"nb_epochs": cfg["epochs"], "batch_size": batch_size, "learning_rate": 1e-3,
                  "random_state": random_state, "verbose": verbose}
            _, fast = profile_training(train_ensemble, factory, sets, models_per_chunk=min(n, 32), **kw)
            _, slow = profile_training(train_sequential, factory, sets, **kw)
            rows.append({"models": n, "batch size": batch_size, "torch threads": torch.get_num_threads(),
                         "batched s": fast.seconds, "sequential s": slow.seconds,
                         "speedup": slow.seconds / fast.seconds,
                         "peak CUDA MiB (batched)": None if fast.peak_cuda_bytes is None
                         else fast.peak_cuda_bytes / 2**20, **memory_columns(fast, slow)})
    report = BenchmarkReport("ensemble", profile, {"train_ensemble vs train_sequential (same data and steps)": rows})
    report.notes.append(f"{arch} on {cfg['images']} {data.name} images per model, {cfg['epochs']} epochs, Adam; "
                        "both trainers warmed up before timing; models_per_chunk = min(N, 32)")
    return report
