"""CEPA's reference-model test (``functional.reference_null``) on saved four-layer scans (issue 4).

Usage:
  cepa_reference_decisions.py REFERENCES RUN [RUN ...]   # decide every victim of RUN against the clean REFERENCES
  cepa_reference_decisions.py --dev RUN [RUN ...]        # degrees-of-freedom study, references drawn from RUN's clean

REFERENCES and RUN are ``cepa_layer_study.py`` folders or ``bench cepa --output`` folders scanned at ``conv1, relu1,
relu2, relu3`` (``cepa_heldout_decisions.victims`` reads both). Every clean model of REFERENCES is a reference; a
reference never decides itself. Statistic: ``1 / sigma`` of the all-to-one problems at the four layers. Per victim:
the reference test's p-value, class and layer, and the per-model default (``joint``) from the same scan. Attacked:
right when detected at 0.05 with the true target; clean: right when not flagged. The summary counts the attacks
whose ground-truth ASR is at least 0.5 (``MIN_ASR``) and every clean model.

``--dev``: for each model of the RUNs, 20 draws of R clean references among the other clean models (R = 5, 8, 10),
decided with the library's ``R - 1`` degrees of freedom and with ``K (R - 1)`` (the residuals counted as
independent): the mean number of right decisions per group.
"""

from __future__ import annotations

import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
from scipy import stats

from art_backdoor_ext.functional.reference_null import reference_pvalue, reference_zscores

sys.path.insert(0, str(Path(__file__).parent))
from cepa_heldout_decisions import GROUPS, MIN_ASR, decisions, victims  # noqa: E402

SIGNIFICANCE = 0.05


def load(runs: list[str]) -> list[tuple[str, int, int, float, np.ndarray]]:
    seen, out = set(), []
    for run in runs:
        for group, seed, target, asr, inv in victims(Path(run)):
            if (group, seed) not in seen:
                seen.add((group, seed))
                out.append((group, seed, target, asr, inv))
    return out


def right(target: int, p: float, found: int) -> bool:
    return p >= SIGNIFICANCE if target < 0 else bool(p < SIGNIFICANCE and found == target)


def decide(references: list[str], runs: list[str]) -> None:
    refs = {seed: inv for group, seed, _, _, inv in load(references) if group == "clean"}
    table: dict[str, dict[str, list[bool]]] = defaultdict(lambda: defaultdict(list))
    print(f"{len(refs)} references: seeds {sorted(refs)}")
    for group, seed, target, asr, inv in load(runs):
        pool = np.stack([v for s, v in refs.items() if not (group == "clean" and s == seed)])
        z, df = reference_zscores(inv, pool)
        p, layer, found = reference_pvalue(z, df)
        p_joint, t_joint = decisions(inv, seed)["joint"]
        took = target < 0 or asr >= MIN_ASR
        ok_ref, ok_joint = right(target, p, found), right(target, p_joint, t_joint)
        if took:
            table["reference (R - 1 df)"][group].append(ok_ref)
            table["joint (per-model default)"][group].append(ok_joint)
        print(f"{group} {seed} (target {target}, gt ASR {asr:.2f}{'' if took else ', did not take'}) | reference "
              f"p {p:.3g} -> {found} at layer {layer}, z {z.max():.2f} {'+' if ok_ref else '-'} | joint "
              f"{p_joint:.3g} -> {t_joint} {'+' if ok_joint else '-'}")
    print(f"\n| decision | {' | '.join(GROUPS)} |\n|---|" + "---|" * len(GROUPS))
    for name, by_group in table.items():
        print(f"| {name} | " + " | ".join(f"{sum(by_group[g])}/{len(by_group[g])}" for g in GROUPS) + " |")


def dev(runs: list[str]) -> None:
    models = load(runs)
    clean = [(seed, inv) for group, seed, _, _, inv in models if group == "clean"]
    rng = np.random.default_rng(0)
    for n_refs in (5, 8, 10):
        for label in ("R - 1", "K (R - 1)"):
            counts: dict[str, list[float]] = defaultdict(list)
            for group, seed, target, asr, inv in models:
                if target >= 0 and asr < MIN_ASR:
                    continue
                pool = [v for s, v in clean if s != seed]
                oks = []
                for _ in range(20):
                    refs = np.stack([pool[i] for i in rng.choice(len(pool), n_refs, replace=False)])
                    z, df = reference_zscores(inv, refs)
                    p, _, found = reference_pvalue(z, df)
                    if label != "R - 1":  # the same z with the residuals' count as degrees of freedom
                        p = min(1.0, z.size * float(stats.t.sf(z.max(), inv.shape[1] * df)))
                    oks.append(right(target, p, found))
                counts[group].append(float(np.mean(oks)))
            print(f"R = {n_refs:2d}, df {label:9s}: " + ", ".join(
                f"{g} {np.sum(counts[g]):.1f}/{len(counts[g])}" for g in GROUPS))


if __name__ == "__main__":
    if len(sys.argv) < 3:
        raise SystemExit(__doc__)
    if sys.argv[1] == "--dev":
        dev(sys.argv[2:])
    else:
        decide([sys.argv[1]], sys.argv[2:])
