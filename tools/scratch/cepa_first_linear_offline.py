"""CEPA's pooled decision with and without the first linear layer, from saved ``bench cepa`` runs (scratch, issue 4).

Usage: ``.venv/bin/python tools/scratch/cepa_first_linear_offline.py RUN_DIR [RUN_DIR ...]`` (runs made with
``conv1`` among the layers, i.e. since 2026-12-07). Per victim: the pooled-layer p-value (199 simulated sets,
seeded with the victim's seed, as CEPA does) on 1/sigma at relu1-3 (the default before) and at conv1 + relu1-3
(the default since; must reproduce the run's own p-value), -> found target @ layer; + right, - wrong.
"""

import json
import sys
from pathlib import Path

import numpy as np

from art_backdoor_ext.functional.layer_pooling import pooled_layer_pvalue

for run in sys.argv[1:]:
    (rp,) = Path(run).glob("cepa-*[!s].json")
    victims = json.loads(rp.read_text())["tables"]["victims"]
    arr = np.load(rp.with_name(rp.stem + "-arrays.npz"))
    for v in victims:
        g, s, t = v["group"], v["seed"], v["target"]
        out = []
        for layers in (["relu1","relu2","relu3"], ["conv1","relu1","relu2","relu3"]):
            vals = np.stack([1.0/arr[f"{g}/{s}/{l}/sigma"] for l in layers])
            p, tt, at, _ = pooled_layer_pvalue(vals, n_bootstrap=199, random_state=s)
            right = (p >= 0.05) if t is None else (p < 0.05 and tt == t)
            out.append(f"{len(layers)} layers: {p:.3g}->{tt}@{layers[at]} {'+' if right else '-'}")
        print(g, s, t, f"(run: {v['p_value']:.3g}->{v['found_target']})", " | ".join(out))
