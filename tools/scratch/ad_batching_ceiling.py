"""What batching can buy on this CPU: the model's own forward + backward cost per image at one pair's batch
against the batched engine's chunk, without any engine code.

Usage: ``OMP_NUM_THREADS=1 .venv/bin/python tools/scratch/ad_batching_ceiling.py [ARCH ...]``
(default: ``digits-cnn badnets-cnn``). For each architecture (fresh weights: the cost does not depend on them) it
times gradient-w.r.t.-input passes of the scan's channels-last copy (``_torch.scan_model``) at 30 images (one
class pair of AD's full profile) and at 510 (the 17 pairs per 512-image chunk of the default ``batch_size``),
and prints microseconds per image and their ratio: the most that batching the 90 pairs can save in compute on one
thread, whatever the engine does around it. ``bench ad``'s speed table measures the engine itself.
"""

from __future__ import annotations

import sys
import time

import torch

from art_backdoor_ext._torch import scan_model
from art_backdoor_ext.models import build_model

SHAPES = {"digits-cnn": (1, 8, 8), "badnets-cnn": (1, 28, 28)}


def per_image_us(model: torch.nn.Module, n: int, shape: tuple[int, ...], seconds: float = 3.0) -> float:
    x = torch.rand(n, *shape)
    for _ in range(3):
        model(x.clone().requires_grad_(True)).sum().backward()
    reps, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        model(x.clone().requires_grad_(True)).sum().backward()
        reps += 1
    return (time.perf_counter() - start) / reps / n * 1e6


def frozen_scan_model(arch: str) -> torch.nn.Module:
    """Fresh weights of ``arch`` in the scan's channels-last copy, parameters frozen as in a scan."""
    model = scan_model(build_model(arch, random_state=0).eval(), torch.device("cpu"))
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def main(archs: list[str]) -> None:
    torch.set_num_threads(1)
    for arch in archs:
        model = frozen_scan_model(arch)
        small = per_image_us(model, 30, SHAPES[arch])
        large = per_image_us(model, 510, SHAPES[arch])
        print(f"{arch}: {small:.0f} us per image at 30 images, {large:.0f} us at 510: ceiling {small / large:.2f}x",
              flush=True)


if __name__ == "__main__":
    names = sys.argv[1:] or list(SHAPES)
    unknown = [a for a in names if a not in SHAPES]
    if unknown:
        raise SystemExit(f"unknown architecture(s) {unknown}; known: {sorted(SHAPES)}")
    main(names)
