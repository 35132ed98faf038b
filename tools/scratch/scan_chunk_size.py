"""Per-image cost of a scan's forward and input-gradient pass against the images per pass (the chunk size of
``_torch.CPU_SCAN_BATCH_IMAGES``), on one thread: where the activations leave the caches.

Usage: ``OMP_NUM_THREADS=1 .venv/bin/python tools/scratch/scan_chunk_size.py [ARCH ...]`` (default ``digits-cnn
badnets-cnn``; fresh weights, the scan's channels-last copy, parameters frozen as in a scan). Prints microseconds
per image for each chunk size, the best of three timings of about two seconds each.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from ad_batching_ceiling import frozen_scan_model  # noqa: E402

SHAPES = {"digits-cnn": (1, 8, 8), "badnets-cnn": (1, 28, 28), "cifar-cnn": (3, 32, 32)}
CHUNKS = (16, 32, 64, 128, 256, 512, 1024)


def per_image_us(model: torch.nn.Module, n: int, shape: tuple[int, ...], seconds: float = 2.0) -> float:
    x = torch.rand(n, *shape)
    for _ in range(3):
        model(x.clone().requires_grad_(True)).logsumexp(1).sum().backward()
    best = float("inf")
    for _ in range(3):
        reps, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            model(x.clone().requires_grad_(True)).logsumexp(1).sum().backward()
            reps += 1
        best = min(best, (time.perf_counter() - start) / reps / n * 1e6)
    return best


def main(archs: list[str]) -> None:
    torch.set_num_threads(1)
    for arch in archs:
        model = frozen_scan_model(arch)
        cells = [f"{n}: {per_image_us(model, n, SHAPES[arch]):.1f}" for n in CHUNKS]
        print(f"{arch} (us per image at N images) " + ", ".join(cells), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:] or ["digits-cnn", "badnets-cnn"])
