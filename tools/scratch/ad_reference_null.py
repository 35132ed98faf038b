"""Offline: a per-pair reference null for AD from clean models (stop 33; not adopted).

Usage: ``.venv/bin/python tools/scratch/ad_reference_null.py ["input L2/size (paper)"]`` from the repository root:
every saved ``runs/*/adstat-full-s*`` scan; per victim, 10 draws of R clean references among the other clean
models; the largest of the 90 pair z values (``functional.reference_null`` on 1 / statistic), R - 1 degrees of
freedom. Attacked (ASR >= 0.9): right when detected with the true target and a true source.
"""
import glob
import json
import sys
from collections import defaultdict

import numpy as np

from art_backdoor_ext.functional.reference_null import reference_pvalue, reference_zscores

K = 10
PAIRS = [(s, t) for s in range(K) for t in range(K) if s != t]


def load(stat: str) -> list[tuple]:
    models = []
    for f in sorted(glob.glob("runs/*/adstat-full-s*/ad-statistics-full.json")):
        table = json.load(open(f))["tables"]["victims"]
        arrays = np.load(f.replace(".json", "-arrays.npz"))
        for v in table:
            m = arrays[f"{v['group']}/{v['seed']}/{stat}"]
            sources = json.loads(v["sources"]) if v.get("sources") not in (None, "None") else []
            models.append((v["group"], v["seed"], v.get("target"), sources, v.get("ASR"), m[~np.eye(K, dtype=bool)]))
    return models


def main(stat: str) -> None:
    models = load(stat)
    clean = [m for m in models if m[0] == "Clean"]
    print(len(models), "models,", len(clean), "clean,", stat)
    rng = np.random.default_rng(0)
    for n_refs in (5, 10, 15):
        res = defaultdict(list)
        for group, seed, target, sources, asr, values in models:
            if group != "Clean" and (asr or 0) < 0.9:
                continue
            pool = [c for c in clean if c[1] != seed]
            oks = []
            for _ in range(10):
                refs = np.stack([1.0 / pool[i][5][None, :] for i in rng.choice(len(pool), n_refs, replace=False)])
                p, _, idx = reference_pvalue(*reference_zscores(1.0 / values[None, :], refs))
                source, found = PAIRS[idx]
                oks.append(p >= 0.05 if group == "Clean" else (p < 0.05 and found == target and source in sources))
            res[group].append(np.mean(oks))
        print(n_refs, {g: f"{np.sum(v):.1f}/{len(v)}" for g, v in res.items()})


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "input L2/size (paper)")
