"""Score fusions for MBDS's white-box mode, offline, from the files of ``mbds_fusion_scores.py``.

Usage: ``.venv/bin/python tools/scratch/mbds_fusion_study.py DIR [DIR ...] [--min-asr 0.8]``

Per victim and score: F2 at the split-conformal threshold on MBDS's calibration part of the reserve (target FRR
0.05), F2 on the triggered inputs the victim sends to its target, AUROC and the realised FRR on the clean test
images. Scores:

- ``mbds``: the library's victim-mode MBDS score (victim-initialised shadows), its own threshold;
- ``res-pen`` / ``res-feat``: the class residual (diagonal, ``functional.class_residual``) at the penultimate layer /
  at MBDS's feature layer, class statistics from the reserve outside the calibration part (samples the victim
  classifies right);
- ``res-pen-tied``: the same at the penultimate layer with one shared full covariance (Ledoit-Wolf shrinkage),
  Lee et al.'s Mahalanobis score;
- ``A | B``: the union (``functional.score_fusion``): each score at its own split-conformal threshold at
  2.5% (5% / 2; 5% / 3 for three) on the calibration part, flagged when above any. ``mbds | res-pen`` is the
  library's ``MBDS(feature_source="victim+residual")`` computed from the saved parts. The tables of docs/benchmarks.md
  marked "rank fusion" came from this script at 9be7d60, when the fusion kept the largest calibration rank (each
  calibration input ranked among the others, inputs above every calibration score ordered by their exceedance);
  the files' ``fused_eval``, where present, came from an even earlier version and is not read.
"""
import sys
from pathlib import Path

import numpy as np
from sklearn.covariance import LedoitWolf

from art_backdoor_ext.functional.class_residual import class_means_and_scale, residual_scores
from art_backdoor_ext.functional.detection import threshold_at_frr
from art_backdoor_ext.functional.metrics import f_beta, roc_auc
from art_backdoor_ext.functional.score_fusion import union_margin, union_thresholds

TARGET_FRR = 0.05


def _stats_rows(d: dict, layer: str) -> tuple[np.ndarray, np.ndarray]:
    rows = np.setdiff1d(np.arange(len(d["y_reserve"])), d["idx_cal"])
    y = d["y_reserve"][rows]
    right = d["reserve_logits"][rows].argmax(1) == y
    for c in range(d["reserve_logits"].shape[1]):  # a class the victim never gets right keeps all its samples
        if np.sum(right & (y == c)) < 2:
            right |= y == c
    return d[f"reserve_{layer}"][rows][right].astype(np.float64), y[right]


def diag_residual(d: dict, layer: str) -> tuple[np.ndarray, np.ndarray]:
    f, y = _stats_rows(d, layer)
    means, scale = class_means_and_scale(f, y, d["reserve_logits"].shape[1])

    def score(part: str) -> np.ndarray:
        return residual_scores(d[f"{part}_{layer}"].astype(np.float64), d[f"{part}_logits"].argmax(1), means, scale)
    return score("reserve"), score("eval")


def tied_residual(d: dict, layer: str) -> tuple[np.ndarray, np.ndarray]:
    f, y = _stats_rows(d, layer)
    k = d["reserve_logits"].shape[1]
    means = np.stack([f[y == c].mean(0) for c in range(k)])
    precision = LedoitWolf().fit(f - means[y]).precision_

    def score(part: str) -> np.ndarray:
        z = d[f"{part}_{layer}"].astype(np.float64) - means[d[f"{part}_logits"].argmax(1)]
        return np.einsum("nd,de,ne->n", z, precision, z)
    return score("reserve"), score("eval")


def fuse(parts: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """(calibration, eval) margins of the union at 5%, as the library fuses (``functional.score_fusion``): flagged
    where positive, so the threshold passed to :func:`evaluate` is 0."""
    thresholds, scales = union_thresholds([c for c, _ in parts], TARGET_FRR)
    return (union_margin([c for c, _ in parts], thresholds, scales),
            union_margin([e for _, e in parts], thresholds, scales))


def evaluate(d: dict, cal: np.ndarray, ev: np.ndarray, threshold: float | None = None) -> tuple[float, ...]:
    if threshold is None:
        threshold = threshold_at_frr(cal, TARGET_FRR, method="conformal")
    flagged, is_p, eff = ev > threshold, d["is_poison"], d["effective"]
    return (f_beta(flagged, is_p, beta=2.0), f_beta(flagged[eff], is_p[eff], beta=2.0), roc_auc(ev, is_p),
            float(flagged[~is_p].mean()))


def victim_rows(d: dict) -> dict[str, tuple[float, ...]]:
    cal_idx = d["idx_cal"]
    comps = {"mbds": (d["mbds_reserve"][cal_idx], d["mbds_eval"]),
             "res-pen": tuple(s if i else s[cal_idx] for i, s in enumerate(diag_residual(d, "penultimate"))),
             "res-feat": tuple(s if i else s[cal_idx] for i, s in enumerate(diag_residual(d, "feature"))),
             "res-pen-tied": tuple(s if i else s[cal_idx] for i, s in enumerate(tied_residual(d, "penultimate")))}
    out = {"mbds": evaluate(d, *comps["mbds"], threshold=float(d["mbds_threshold"]))}
    for name in ("res-pen", "res-feat", "res-pen-tied"):
        out[name] = evaluate(d, *comps[name])
    for combo in (("mbds", "res-pen"), ("mbds", "res-pen-tied"), ("mbds", "res-feat"),
                  ("mbds", "res-pen", "res-feat"), ("res-pen", "res-feat")):
        out[" | ".join(combo)] = evaluate(d, *fuse([comps[c] for c in combo]), threshold=0.0)
    return out


def main(dirs: list[str], min_asr: float = 0.0) -> None:
    table: dict[tuple[str, str], list[tuple[float, ...]]] = {}
    for directory in dirs:
        for path in sorted(Path(directory).glob("*.npz")):
            d = dict(np.load(path))
            attack = path.stem.split("-")[0]
            rows = victim_rows(d)
            asr = float(d["effective"][d["is_poison"]].mean())
            print(f"{path.parent.name}/{path.stem} (ASR {asr:.3f}): " + "; ".join(
                f"{k} {v[0]:.3f}" for k, v in rows.items()), flush=True)
            if asr < min_asr:
                continue
            for k, v in rows.items():
                table.setdefault((attack, k), []).append(v)
    print(f"\nmean over victims with ASR >= {min_asr}: F2 / F2 effective / AUROC / FRR (min F2)")
    for score in sorted({k for _, k in table}, key=lambda s: (s.count("|"), s)):
        cells = []
        for attack in ("BadNets", "Blended", "Jumbo"):
            v = np.array(table.get((attack, score), [[np.nan] * 4]))
            m = v.mean(0)
            cells.append(f"{attack} {m[0]:.3f} / {m[1]:.3f} / {m[2]:.3f} / {m[3]:.3f} "
                         f"({v[:, 0].min():.3f}, n={len(v)})")
        print(f"{score:28s} " + " | ".join(cells))


if __name__ == "__main__":
    args = sys.argv[1:]
    floor = 0.0
    if "--min-asr" in args:  # the means over the victims whose backdoor took (each victim is printed either way)
        i = args.index("--min-asr")
        floor = float(args[i + 1])
        del args[i:i + 2]
    main(args, floor)
