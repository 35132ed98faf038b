"""Offline: CEPA with the references' class means subtracted, then the per-model joint test (stop 33; not adopted).

Usage: ``.venv/bin/python tools/scratch/cepa_reference_hybrid.py`` from the repository root (the development scans
of docs/benchmarks.md "Clean reference models"). R clean references drawn 3 times per model among the other clean
models; the scanned model's centred log 1/sigma minus the references' mean per class, exponentiated, decided by
``joint_layer_pvalue``. It flagged 18-25% of the clean models.
"""
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from cepa_heldout_decisions import MIN_ASR, victims  # noqa: E402

from art_backdoor_ext.functional.layer_pooling import joint_layer_pvalue  # noqa: E402
from art_backdoor_ext.functional.reference_null import centred_log_statistics  # noqa: E402

DEV = ["runs/v30/layers-heldout", "runs/v30/cepa-full-s86", "runs/v30/cepa-full-s87", "runs/v31/heldout",
       "runs/v31/adopt", "runs/v31/cepa-full-s96", "runs/v31/cepa-full-s97", "runs/v32/cepa-clean"]


def main() -> None:
    models, seen = [], set()
    for run in DEV:
        for group, seed, target, asr, inv in victims(Path(run)):
            if (group, seed) not in seen:
                seen.add((group, seed))
                models.append((group, seed, target, asr, inv))
    clean = [(seed, inv) for group, seed, _, _, inv in models if group == "clean"]
    rng = np.random.default_rng(0)
    for n_refs in (3, 4, 10):
        res = defaultdict(list)
        for group, seed, target, asr, inv in models:
            if target >= 0 and asr < MIN_ASR:
                continue
            pool = [v for s, v in clean if s != seed]
            oks = []
            for _ in range(3):
                refs = np.stack([pool[i] for i in rng.choice(len(pool), n_refs, replace=False)])
                adjusted = np.exp(centred_log_statistics(inv) - centred_log_statistics(refs).mean(0))
                p, found, _ = joint_layer_pvalue(adjusted, n_bootstrap=199, random_state=seed)
                oks.append(p >= 0.05 if target < 0 else (p < 0.05 and found == target))
            res[group].append(np.mean(oks))
        print("hybrid R", n_refs, {g: f"{np.sum(v):.1f}/{len(v)}" for g, v in res.items()}, flush=True)


if __name__ == "__main__":
    main()
