"""CEPA's pooled layer test with 1, 3 (the default) or both sets of values set aside (scratch, no scan; issue 4).

Usage:
  cepa_pooled_exclusion.py RUN_DIR [RUN_DIR ...]     # bench cepa --output folders (their saved statistics)

Re-decides each saved scan with ``pooled_layer_pvalue`` on 1 / sigma (the default statistic), setting aside
``n_exclude`` = 1 or 3 of the pooled L x K values before the null's fit, and with the two combined (the smaller
calibrated p-value, Sidak-corrected for two), as AD's ``exclusion="combined"`` does; 199 bootstrap sets seeded
with the victim's seed as the benchmark does. Attacked: detected with the right target; clean: not flagged.
"""

from __future__ import annotations

import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cepa_offline import GROUPS, _floored, load  # noqa: E402

from art_backdoor_ext.functional.cepa_math import sidak_correction  # noqa: E402
from art_backdoor_ext.functional.layer_pooling import pooled_layer_pvalue  # noqa: E402


def main(run_dirs: list[str]) -> None:
    table: dict[str, dict[str, list[bool]]] = defaultdict(lambda: defaultdict(list))
    for run_dir in run_dirs:
        victims, arrays = load(Path(run_dir))
        for v in victims:
            group, seed, target = v["group"], v["seed"], v["target"]
            layers = sorted({k.split("/")[2] for k in arrays if k.startswith(f"{group}/{seed}/")})
            values = np.stack([_floored(1.0 / arrays[f"{group}/{seed}/{layer}/sigma"]) for layer in layers])
            tests = {n: pooled_layer_pvalue(values, n_exclude=n, n_bootstrap=199, random_state=seed)
                     for n in (1, 3)}
            best = min(tests.values(), key=lambda t: t[0])
            rules = {"n_exclude=1": tests[1][:2], "n_exclude=3 (default)": tests[3][:2],
                     "combined, Sidak x2": (sidak_correction(best[0], 2), best[1])}
            line = [f"{group} {seed} (target {target})"]
            for rule, (p, found) in rules.items():
                right = (p >= 0.05) if target is None else bool(p < 0.05 and found == target)
                table[rule][group].append(right)
                line.append(f"{rule.split(' ')[0]} {p:.3g}->{found}{'+' if right else '-'}")
            print(" | ".join(line))
    print("\n| rule | " + " | ".join(GROUPS) + " |")
    print("|---|" + "---|" * len(GROUPS))
    for rule, by_group in table.items():
        print(f"| {rule} | " + " | ".join(f"{sum(by_group[g])}/{len(by_group[g])}" for g in GROUPS) + " |")


if __name__ == "__main__":
    if not sys.argv[1:]:
        raise SystemExit(__doc__)
    main(sys.argv[1:])
