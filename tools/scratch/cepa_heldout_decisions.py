"""CEPA's default and two reference decisions on saved four-layer scans, and the conv1 separation (issue 4).

Usage:
  cepa_heldout_decisions.py RUN [RUN ...]

RUN is a ``cepa_layer_study.py`` folder (``<group>-<seed>.npz``, scanned at ``conv1, relu1, relu2, relu3``) or a
``bench cepa --output`` folder of a run with those layers (``cepa-full.json`` and ``cepa-full-arrays.npz``).
For each victim, from the saved sigma of the all-to-one problems (nothing is re-optimised):

- ``pooled``: the default's decision (``pooled_layer_pvalue`` on 1/sigma, 3 values set aside, 199 draws seeded
  with the victim's seed), which reproduces the library's p-value;
- ``sidak``: each layer's calibrated p-value, the smallest Sidak-corrected over the four layers;
- ``joint``: ``joint_layer_pvalue`` (the layers tested together);
- ``conv1 x``: the true target's 1/sigma over conv1's median (clean models: the largest class's), the
  separation question of docs/benchmarks.md "The default on forty more new victims", with the cut at 2.5x.

Attacked: right when detected at 0.05 with the true target; clean: right when not flagged. The summary counts
every victim, and separately the attacks whose ground-truth ASR is at least 0.5.
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from art_backdoor_ext.functional.bootstrap_calibration import calibrated_max_statistic_pvalue
from art_backdoor_ext.functional.cepa_math import sidak_correction
from art_backdoor_ext.functional.layer_pooling import joint_layer_pvalue, pooled_layer_pvalue

LAYERS = ("conv1", "relu1", "relu2", "relu3")
GROUPS = ("patch", "blend", "warp", "chessboard", "clean")
CUT = 2.5
MIN_ASR = 0.5


def victims(run: Path) -> Iterator[tuple[str, int, int, float, np.ndarray]]:
    """(group, seed, true target or -1, ground-truth ASR or NaN, (4, K) 1/sigma) per victim of a run."""
    if (run / "cepa-full.json").exists():
        table = json.loads((run / "cepa-full.json").read_text())["tables"]["victims"]
        with np.load(run / "cepa-full-arrays.npz", allow_pickle=False) as arrays:
            for v in table:
                g, s = v["group"], int(v["seed"])
                inv = np.stack([1.0 / arrays[f"{g}/{s}/{layer}/sigma"] for layer in LAYERS])
                target = -1 if v["target"] is None else int(v["target"])
                yield g, s, target, float("nan") if v["gt_asr"] is None else float(v["gt_asr"]), inv
        return
    for path in sorted(run.glob("*.npz")):
        group, seed = path.stem.rsplit("-", 1)
        with np.load(path, allow_pickle=False) as f:
            inv = np.stack([1.0 / f[f"{layer}/sigma"] for layer in LAYERS])
            yield group, int(seed), int(f["target"]), float(f["gt_asr"]), inv


def decisions(inv: np.ndarray, seed: int) -> dict[str, tuple[float, int]]:
    """(p-value, target) of the three decisions."""
    p_pooled, t_pooled, _, _ = pooled_layer_pvalue(inv, n_bootstrap=199, random_state=seed)
    per_layer = [calibrated_max_statistic_pvalue(row, n_bootstrap=199, random_state=seed)[:2] for row in inv]
    best = int(np.argmin([p for p, _ in per_layer]))
    p_joint, t_joint, _ = joint_layer_pvalue(inv, n_bootstrap=199, random_state=seed)
    return {"pooled": (p_pooled, t_pooled),
            "sidak": (sidak_correction(per_layer[best][0], len(LAYERS)), per_layer[best][1]),
            "joint": (p_joint, t_joint)}


def main(runs: list[str]) -> None:
    right: dict[str, dict[str, list[bool]]] = defaultdict(lambda: defaultdict(list))
    for run in runs:
        for group, seed, target, asr, inv in victims(Path(run)):
            line = [f"{group} {seed} (target {target}, gt ASR {asr:.2f})"]
            took = target < 0 or asr >= MIN_ASR
            for name, (p, found) in decisions(inv, seed).items():
                ok = p >= 0.05 if target < 0 else bool(p < 0.05 and found == target)
                right[name][group].append(ok)
                if took:
                    right[f"{name}, ASR >= {MIN_ASR}"][group].append(ok)
                line.append(f"{name} {p:.3g}->{found}{'+' if ok else '-'}")
            relative = inv[0] / np.median(inv[0])
            x = float(relative.max() if target < 0 else relative[target])
            separated = x < CUT if target < 0 else x > CUT
            if took:
                right[f"conv1 x > {CUT} (separation)"][group].append(separated)
            line.append(f"conv1 x {x:.2f}")
            print(" | ".join(line))
    print(f"\n| decision | {' | '.join(GROUPS)} |")
    print("|---|" + "---|" * len(GROUPS))
    for name, by_group in right.items():
        print(f"| {name} | " + " | ".join(f"{sum(by_group[g])}/{len(by_group[g])}" for g in GROUPS) + " |")


if __name__ == "__main__":
    if len(sys.argv) < 2:
        raise SystemExit(__doc__)
    main(sys.argv[1:])
