"""Offline: the MBDS fused mode with the FRR budget split unevenly between MBDS and the class residual (stop 33).

Usage: ``.venv/bin/python tools/scratch/mbds_fusion_split.py DIR`` (a ``mbds_fusion_scores.py`` folder, e.g.
runs/v32/fusion-dev or runs/v32/fusion-heldout). Victims with ASR >= 0.8; the residual gets 0.5-0.9 of the 5%
budget (1.0: the residual alone), diagonal (``pen``) or tied-covariance (``tied``). Nothing was adopted from it.
"""
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
import mbds_fusion_study as study  # noqa: E402

from art_backdoor_ext.functional.detection import threshold_at_frr  # noqa: E402

SHARES = (0.5, 0.6, 0.7, 0.8, 0.9, 1.0)


def flagged(parts: list[tuple[np.ndarray, np.ndarray]], shares: list[float]) -> np.ndarray:
    """Union of each score above its own split-conformal threshold at its share of the budget."""
    out = np.zeros(len(parts[0][1]), bool)
    for (cal, ev), share in zip(parts, shares):
        if share > 0:
            out |= ev > threshold_at_frr(cal, share, method="conformal")
    return out


def main(directory: str) -> None:
    res: dict[tuple[str, float, str], list[tuple[float, float]]] = {}
    for path in sorted(Path(directory).glob("*.npz")):
        d = dict(np.load(path))
        attack = path.stem.split("-")[0]
        if float(d["effective"][d["is_poison"]].mean()) < 0.8:
            continue
        cal = d["idx_cal"]
        comps = {"mbds": (d["mbds_reserve"][cal], d["mbds_eval"])}
        for name, fn in (("pen", study.diag_residual), ("tied", study.tied_residual)):
            reserve, evaluation = fn(d, "penultimate")
            comps[name] = (reserve[cal], evaluation)
        is_poison = d["is_poison"]
        for residual in ("pen", "tied"):
            for share in SHARES:
                f = flagged([comps["mbds"], comps[residual]], [0.05 * (1 - share), 0.05 * share])
                res.setdefault((residual, share, attack), []).append(
                    (study.f_beta(f, is_poison, beta=2.0), float(f[~is_poison].mean())))
    for residual in ("pen", "tied"):
        for share in SHARES:
            cells = []
            for attack in ("BadNets", "Blended", "Jumbo"):
                v = np.array(res[(residual, share, attack)])
                cells.append(f"{attack} {v[:, 0].mean():.3f} (min {v[:, 0].min():.3f}, frr {v[:, 1].mean():.3f})")
            print(residual, share, " | ".join(cells))


if __name__ == "__main__":
    main(sys.argv[1])
