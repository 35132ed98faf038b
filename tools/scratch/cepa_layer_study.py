"""CEPA with linear (pre-activation) layers among its candidates, and sigma relative to the pool's spread
(scratch study, issue 4).

Usage:
  cepa_layer_study.py OUT_DIR SEED [SEED ...] [GROUP ...] [--layers a,b,...]   # bench cepa's full-profile victims
  cepa_layer_study.py --summary OUT_DIR [OUT_DIR ...]  # re-decide saved victims (no training, no scan)

Hypotheses:

1. Linear layers keep an additive trigger's consensus exactly: for x + c, a convolution's pre-activation output
   moves by W * c whatever x is, so the embedded shifts of a chessboard trigger have zero spread at ``conv1``
   (clipping aside); after the ReLU the gates differ by image and the spread is no longer zero. The default
   candidates are the network's three ReLUs (``relu1-3``); here every victim is scanned at the three ReLUs and at
   the three linear layers before them (``conv1``, ``conv2``, ``fc1``) in one scan (CEPA optimises one copy per
   layer, so a layer's statistics do not depend on the other layers scanned with it).
2. sigma is bounded by the spread of the clean features it starts from: ``pool / sigma``, with ``pool`` the RMS
   distance of the problem's clean features to their mean (``within``: to each image's class mean).

Each victim is built exactly as ``bench cepa --profile full`` builds victim ``seed + 100 * group`` (same trigger,
target, training, clean set, CEPA settings); its weights are kept (``OUT_DIR/<group>-<seed>.pt``, a state_dict)
so that later questions need no retraining. Decisions: the default's pooled-layer test (``pooled_layer_pvalue``,
199 simulated sets seeded with the victim's seed, 3 values set aside as the library does; ``(n_exclude=L)``: one
per layer) on a subset of the layers; attacked: detected with the right target; clean: not flagged.
"""

from __future__ import annotations

import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

from art_backdoor_ext._torch import eval_mode, to_tensor
from art_backdoor_ext.benchmarks import seeded_victim_setup
from art_backdoor_ext.benchmarks.cepa import GROUPS, PROFILES, _split, _victim
from art_backdoor_ext.datasets import load_dataset
from art_backdoor_ext.defences.model.cepa import CEPA
from art_backdoor_ext.defences.model.perturbation import target_problems
from art_backdoor_ext.functional.layer_pooling import pooled_layer_pvalue

LAYERS = ("conv1", "relu1", "conv2", "relu2", "fc1", "relu3")
SUBSETS = {"relu1-3 (default)": ("relu1", "relu2", "relu3"),
           "conv1 + relu1-3": ("conv1", "relu1", "relu2", "relu3"),
           "conv1, conv2, fc1": ("conv1", "conv2", "fc1"),
           "all six": LAYERS}
STATISTICS = {"1/sigma": lambda s, layer: 1.0 / s[f"{layer}/sigma"],
              "pool/sigma": lambda s, layer: s[f"{layer}/pool"] / s[f"{layer}/sigma"]}


def _spreads(f: torch.Tensor, rows: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    part = f[torch.as_tensor(rows)]
    pool = float((part - part.mean(0)).pow(2).sum(-1).mean().sqrt())
    within = torch.zeros(())
    for c in np.unique(labels):
        sub = part[torch.as_tensor(np.flatnonzero(labels == c))]
        within = within + (sub - sub.mean(0)).pow(2).sum(-1).sum()
    return pool, float((within / len(rows)).sqrt())


def _classifier(out_dir: Path, group: str, seed: int, data, cfg):
    weights = out_dir / f"{group}-{seed}.pt"
    if weights.exists():
        clf, _, _ = seeded_victim_setup(seed, data, cfg)
        clf.model.load_state_dict(torch.load(weights, weights_only=True))
        target = None if group == "clean" else int(np.random.default_rng(1000 + seed).integers(data.nb_classes))
        return clf, target, None
    clf, target, gt_asr = _victim(group, seed, data, cfg)
    torch.save(clf.model.state_dict(), weights)
    return clf, target, gt_asr


def scan_victim(out_dir: Path, group: str, seed: int, data, cfg, layers: tuple[str, ...] = LAYERS) -> None:
    path = out_dir / f"{group}-{seed}.npz"
    if path.exists():
        return
    start = time.perf_counter()
    clf, target, gt_asr = _classifier(out_dir, group, seed, data, cfg)
    clean_idx, _ = _split(data.y_test, cfg["per_class"], seed)
    x, y = data.x_test[clean_idx], data.y_test[clean_idx]
    det = CEPA(clf, variant=cfg["variant"], max_iter=cfg["max_iter"], random_state=seed, layers=list(layers))
    report = det.scan(x, y)
    problems = target_problems(y, clf.nb_classes, max_samples=det.max_samples_per_target, random_state=seed)
    with eval_mode(clf.model):
        f0 = det._clean_features(clf.model, to_tensor(x, "cpu"), list(layers))
    saved: dict[str, np.ndarray] = {"target": np.array(-1 if target is None else target),
                                    "gt_asr": np.array(np.nan if gt_asr is None else gt_asr),
                                    "layers": np.array(layers)}
    for layer in layers:
        stats = report.statistics["all-to-one"][layer]
        for name in ("sigma", "mu_norm", "delta_norm", "class_sigma", "misclassification"):
            saved[f"{layer}/{name}"] = np.asarray(stats[name], float)
        pools = [_spreads(f0[layer], row[row >= 0], y[row[row >= 0]]) for row in problems.indices]
        saved[f"{layer}/pool"] = np.array([p for p, _ in pools])
        saved[f"{layer}/within"] = np.array([w for _, w in pools])
    saved["seconds"] = np.array(time.perf_counter() - start)
    np.savez(path, **saved)


def decide(saved, seed: int, statistic, layers, n_exclude: int) -> tuple[float, int, str]:
    values = np.stack([statistic(saved, layer) for layer in layers])
    p, target, at, _ = pooled_layer_pvalue(values, n_exclude=n_exclude, n_bootstrap=199, random_state=seed)
    return p, target, layers[at]


def summary(out_dirs: list[str]) -> None:
    table: dict[str, dict[str, list[bool]]] = defaultdict(lambda: defaultdict(list))
    for out_dir in out_dirs:
        for path in sorted(Path(out_dir).glob("*.npz")):
            group, seed = path.stem.rsplit("-", 1)
            with np.load(path, allow_pickle=False) as f:
                saved = {k: f[k] for k in f.files}
            target = int(saved["target"])
            line = [f"{group} {seed} (target {target}, gt ASR {float(saved['gt_asr']):.2f})"]
            scanned = set(map(str, saved.get("layers", LAYERS)))
            for sname, statistic in STATISTICS.items():
                for lname, layers in SUBSETS.items():
                    if not set(layers) <= scanned:
                        continue
                    for n_exclude in sorted({3, len(layers)}):
                        name = f"{sname}, {lname}" + ("" if n_exclude == 3 else f" (n_exclude={n_exclude})")
                        p, found, at = decide(saved, int(seed), statistic, layers, n_exclude)
                        right = (p >= 0.05) if target < 0 else bool(p < 0.05 and found == target)
                        table[name][group].append(right)
                        if sname == "1/sigma":
                            line.append(f"{lname.split(' ')[0]}{'' if n_exclude == 3 else '/L'} "
                                        f"{p:.3g}->{found}@{at}{'+' if right else '-'}")
            print(" | ".join(line))
    print("\n| statistic, layers | " + " | ".join(GROUPS) + " |")
    print("|---|" + "---|" * len(GROUPS))
    for name, by_group in table.items():
        print(f"| {name} | " + " | ".join(f"{sum(by_group[g])}/{len(by_group[g])}" for g in GROUPS) + " |")


def main(argv: list[str]) -> None:
    if argv[0] == "--summary":
        summary(argv[1:])
        return
    out_dir = Path(argv[0])
    out_dir.mkdir(parents=True, exist_ok=True)
    cfg = dict(PROFILES["full"])
    data = load_dataset(cfg["dataset"])
    layers = LAYERS
    if "--layers" in argv:
        at = argv.index("--layers")
        layers = tuple(argv[at + 1].split(","))
        argv = argv[:at] + argv[at + 2:]
    groups = [g for g in GROUPS if g in argv[2:]] or list(GROUPS)
    for base in (int(s) for s in argv[1:] if s.isdigit()):
        for g, group in enumerate(GROUPS):
            if group in groups:
                scan_victim(out_dir, group, base + 100 * g, data, cfg, layers)


if __name__ == "__main__":
    if len(sys.argv) < 3:
        raise SystemExit(__doc__)
    main(sys.argv[1:])
