"""Offline: other ways to fuse MBDS's white-box score with the class residual, and a k-NN residual (stop 34).

Usage: ``.venv/bin/python tools/scratch/mbds_fusion_pvalues.py DIR [DIR ...]`` (``mbds_fusion_scores.py`` folders,
e.g. runs/v32/fusion-dev runs/v32/fusion-heldout; victims with ASR >= 0.8). Each score is turned into a conformal
p-value against MBDS's calibration part (leave-one-out for the calibration inputs themselves); then

- ``fisher A+B``: ``-log pA - log pB`` (Fisher's combination), thresholded by split conformal on the calibration
  inputs' own combined values;
- ``minp A+B``: ``-log min(pA, pB)`` thresholded the same way (the empirical version of the library's union);
- ``knn``: one minus the 10th largest cosine similarity of the penultimate features to the reserve's (outside
  the calibration part), alone and in the library's union;
- ``union``: the library's mode (``mbds | res-pen`` of ``mbds_fusion_study.py``), for reference.

Nothing was adopted from it: no variant is above the union on BadNets in both folders.
"""
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
import mbds_fusion_study as study  # noqa: E402

from art_backdoor_ext.functional.detection import threshold_at_frr  # noqa: E402
from art_backdoor_ext.functional.metrics import f_beta, roc_auc  # noqa: E402

ATTACKS = ("BadNets", "Blended", "Jumbo")


def conformal_p(calibration: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """(1 + #calibration scores >= s) / (n + 1) for each s."""
    ordered = np.sort(calibration)
    at_least = len(ordered) - np.searchsorted(ordered, scores, side="left")
    return (1 + at_least) / (len(ordered) + 1)


def conformal_p_loo(calibration: np.ndarray) -> np.ndarray:
    """The same for each calibration score against the others."""
    ordered = np.sort(calibration)
    at_least = len(ordered) - np.searchsorted(ordered, calibration, side="left") - 1
    return (1 + at_least) / len(ordered)


def knn_residual(d: dict, k: int = 10) -> tuple[np.ndarray, np.ndarray]:
    feats, _ = study._stats_rows(d, "penultimate")
    ref = feats / (np.linalg.norm(feats, axis=1, keepdims=True) + 1e-9)

    def score(part: str) -> np.ndarray:
        g = d[f"{part}_penultimate"].astype(np.float64)
        g = g / (np.linalg.norm(g, axis=1, keepdims=True) + 1e-9)
        return 1.0 - np.sort(g @ ref.T, axis=1)[:, -k]
    return score("reserve"), score("eval")


def measure(d: dict, cal: np.ndarray, ev: np.ndarray, threshold: float | None = None) -> tuple[float, float, float]:
    if threshold is None:
        threshold = threshold_at_frr(cal, study.TARGET_FRR, method="conformal")
    flagged, is_poison = ev > threshold, d["is_poison"]
    return f_beta(flagged, is_poison, beta=2.0), roc_auc(ev, is_poison), float(flagged[~is_poison].mean())


def victim_rows(d: dict) -> dict[str, tuple[float, float, float]]:
    cal = d["idx_cal"]
    comps = {"mbds": (d["mbds_reserve"][cal], d["mbds_eval"])}
    for name, (reserve, evaluation) in (("pen", study.diag_residual(d, "penultimate")),
                                        ("tied", study.tied_residual(d, "penultimate")), ("knn", knn_residual(d))):
        comps[name] = (reserve[cal], evaluation)
    rows = {"union (library)": measure(d, *study.fuse([comps["mbds"], comps["pen"]]), threshold=0.0),
            "res-pen": measure(d, *comps["pen"]), "knn": measure(d, *comps["knn"]),
            "union mbds|knn": measure(d, *study.fuse([comps["mbds"], comps["knn"]]), threshold=0.0)}
    a = comps["mbds"]
    for name in ("pen", "tied", "knn"):
        b = comps[name]
        pa_cal, pb_cal = conformal_p_loo(a[0]), conformal_p_loo(b[0])
        pa_ev, pb_ev = conformal_p(a[0], a[1]), conformal_p(b[0], b[1])
        rows[f"fisher mbds+{name}"] = measure(d, -np.log(pa_cal) - np.log(pb_cal), -np.log(pa_ev) - np.log(pb_ev))
        rows[f"minp mbds+{name}"] = measure(d, -np.log(np.minimum(pa_cal, pb_cal)), -np.log(np.minimum(pa_ev, pb_ev)))
    return rows


def main(dirs: list[str]) -> None:
    for directory in dirs:
        table: dict[tuple[str, str], list[tuple[float, float, float]]] = {}
        for path in sorted(Path(directory).glob("*.npz")):
            d = dict(np.load(path))
            if float(d["effective"][d["is_poison"]].mean()) < 0.8:
                continue
            for name, row in victim_rows(d).items():
                table.setdefault((path.stem.split("-")[0], name), []).append(row)
        print(f"{directory}: mean F2 (AUROC, realised FRR) over victims with ASR >= 0.8")
        for name in sorted({n for _, n in table}):
            means = {a: np.mean(table[(a, name)], axis=0) for a in ATTACKS}
            cells = [f"{a} {m[0]:.3f} ({m[1]:.3f}, {m[2]:.3f})" for a, m in means.items()]
            print(f"  {name:22s} " + " | ".join(cells))


if __name__ == "__main__":
    main(sys.argv[1:])
