"""Benchmark ``acss``: ART's last-layer AC/SS against the layer-selectable versions on the same victims.

fast: digits, BadNets and Blended, 2 victims each. full: Fashion-MNIST, BadNets, Blended, SIG and WaNet,
3 victims each. Reports F1/precision/recall of poison detection per (attack, defence, layer), averaged
over victims, plus each victim's BA/ASR.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import numpy as np

from art_backdoor_ext.benchmarks import BenchmarkReport, register_benchmark
from art_backdoor_ext.evaluation import run_grid

PROFILES: dict[str, dict[str, Any]] = {
    "fast": {
        "dataset": "digits",
        "attacks": ["badnets", "blend"],
        "n_models": 2,
        "layers": ["relu1", "relu2", "relu3"],
    },
    "full": {
        "dataset": "fashion-mnist",
        "attacks": ["badnets", "blend", "sig", "warp"],
        "n_models": 3,
        "layers": ["relu1", "relu2", "relu3"],
    },
}


@register_benchmark("acss")
def bench_acss(*, profile: str, random_state: int, verbose: bool, models: int | None = None) -> BenchmarkReport:
    cfg = dict(PROFILES[profile])
    if models is not None:
        cfg["n_models"] = models
    result = run_grid(
        cfg["attacks"],
        ["art-ac", "art-ss", "ac", "ss"],
        dataset=cfg["dataset"],
        n_models=cfg["n_models"],
        layers=cfg["layers"],
        random_state=random_state,
        verbose=verbose,
    )
    groups: dict[tuple[str, str, str], list[Any]] = defaultdict(list)
    victims: dict[tuple[str, int], tuple[float, float]] = {}
    for row in result.rows:
        groups[(row.attack, row.defence, row.layer)].append(row)
        victims[(row.attack, row.model_seed)] = (row.benign_accuracy, row.attack_success_rate)
    detection = [
        {
            "attack": a,
            "defence": d,
            "layer": layer,
            "models": len(rows),
            "precision": float(np.mean([r.precision for r in rows])),
            "recall": float(np.mean([r.recall for r in rows])),
            "f1": float(np.mean([r.f1 for r in rows])),
            "f1_min": float(np.min([r.f1 for r in rows])),
            "seconds": float(np.mean([r.seconds for r in rows])),
        }
        for (a, d, layer), rows in groups.items()
    ]
    victim_rows = [
        {"attack": a, "seed": s, "benign_accuracy": ba, "attack_success_rate": asr}
        for (a, s), (ba, asr) in victims.items()
    ]
    report = BenchmarkReport(
        "acss", profile, {"poison detection (mean over victims)": detection, "victims": victim_rows}
    )
    report.notes.append(
        f"dataset {result.dataset}; poison rate 0.05 all-to-one (a third of the target class), target 0"
    )
    return report
