"""AD on Fashion-MNIST: pooling the evidence per target column (for multi-source attacks), tried and not adopted.

Usage: ad_target_pooling.py DIR [col]  (DIR: the ``GROUP-SEED.npz`` victims of ad_null_study.py, e.g. runs/v8/adnull;
``col``: also divide the normalised statistic by its target column's leave-one-out median).
Per target column, the j smallest source-and-distance-normalised sizes are tested against the size null
(Beta order statistic of the j-th smallest of K - 1 uniforms), Bonferroni over j <= J, Sidak over the K targets.
J = 1 is the library's default test. Prints each victim's verdict per J and the accuracy per group.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
from scipy import special, stats

from art_backdoor_ext.datasets import load_dataset, sample_per_class
from art_backdoor_ext.functional.pair_normalisation import normalised_statistics
from art_backdoor_ext.functional.size_null import fit_left_truncated_gamma

JS = (1, 2, 3, 4, 9)


def pooled(st: np.ndarray, j_max: int) -> tuple[float, int, list[int]]:
    k = len(st)
    ordered = np.sort(st[~np.eye(k, dtype=bool)])
    null = fit_left_truncated_gamma(ordered[k - 1:], float(ordered[k - 2]))
    best: tuple[float, int, list[int]] = (2.0, -1, [])
    for t in range(k):
        col = np.delete(st[:, t], t)
        order = np.argsort(col)
        u = special.gammainc(null.shape, col[order] / null.scale)
        for j in range(1, j_max + 1):
            q = float(stats.beta.cdf(u[j - 1], j, k - j))  # P(j-th smallest of K - 1 uniforms <= u)
            if q < best[0]:
                best = (q, t, [int(s if s < t else s + 1) for s in order[:j]])
    q, t, sources = best
    corrected = min(1.0, j_max * q)
    return (1.0 if corrected >= 1 else -math.expm1(k * math.log1p(-corrected))), t, sources


def column_normalised(st: np.ndarray) -> np.ndarray:
    k = len(st)
    cols = np.repeat(st.T[:, None, :], k, axis=1)
    cols[np.arange(k)[:, None], np.arange(k)[None, :], np.arange(k)[None, :]] = np.nan
    out = st / np.nanmedian(cols, axis=2).T
    np.fill_diagonal(out, np.nan)
    return out


def main(folder: Path, by_column: bool) -> None:
    data = load_dataset("fashion-mnist")
    accuracy: dict[int, dict[str, list[bool]]] = {j: {} for j in JS}
    for path in sorted(folder.glob("*.npz")):
        d = dict(np.load(path))
        group, seed = path.stem.rsplit("-", 1)
        x, y = sample_per_class(data.x_test, data.y_test, 30, random_state=int(seed))
        st = normalised_statistics(d["sizes"], "source-normalised-distance", x=x, y=y)
        if by_column:
            st = column_normalised(st)
        target, sources = int(d["target"]), [int(s) for s in d["sources"]]
        line = f"{path.stem:11s}"
        for j in JS:
            p, t, found = pooled(st, j)
            ok = p >= 0.05 if target < 0 else (p < 0.05 and t == target and found[0] in sources)
            accuracy[j].setdefault(group, []).append(ok)
            line += f" | J{j} p {p:.2g} {found}->{t}"
        print(line, "true", sources, target)
    for j in JS:
        print(f"J <= {j}:", {g: round(float(np.mean(v)), 2) for g, v in accuracy[j].items()})


if __name__ == "__main__":
    main(Path(sys.argv[1]), len(sys.argv) > 2 and sys.argv[2] == "col")
