"""AD's size null: how many small statistics to set aside before fitting (scratch, no scan; issue 3).

Usage:
  ad_exclusion_study.py PI_DIR [PI_DIR ...] [--adstat RUN_DIR ...]

Re-decides saved Fashion-MNIST scans with the default statistic (source-and-distance-normalised) under the size
null, setting aside ``n_exclude`` smallest values before the fit (the paper's and the default's K - 1 = 9, for
an attack with up to K - 1 sources; 1 would suit a single source) and with the two tests combined (the smaller
p-value, Sidak-corrected for two tests). PI_DIR: ``tools/scratch/ad_pi_study.py`` output (pi = 0.8 taken);
RUN_DIR: ``bench ad-statistics --output`` folders (their saved ``input L2`` statistics). Successful attacks only
(ASR >= 0.9), verdicts as in ``bench ad`` (right target, source by the smallest size into it).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from art_backdoor_ext.benchmarks.ad import GROUPS, PROFILES, _verdict
from art_backdoor_ext.datasets import load_dataset, sample_per_class
from art_backdoor_ext.functional.cepa_math import sidak_correction
from art_backdoor_ext.functional.pair_normalisation import normalised_statistics, smallest_size_source
from art_backdoor_ext.functional.size_null import size_order_statistic_pvalue

MIN_ASR = 0.9
STATISTIC = "source-normalised-distance"


def rules(statistic: np.ndarray) -> dict[str, tuple[float, int]]:
    """rule name -> (p-value, detected target)."""
    k = statistic.shape[0]
    tests = {n: size_order_statistic_pvalue(statistic, n_exclude=n) for n in (1, 3, k - 1)}
    out = {f"n_exclude={n}": (t.p_value, t.target) for n, t in tests.items()}
    best = min((tests[1], tests[k - 1]), key=lambda t: t.p_value)
    out["min(1, K-1), Sidak x2"] = (sidak_correction(best.p_value, 2), best.target)
    return out


def victims(pi_dirs: list[Path], adstat_dirs: list[Path]):
    """(name, group, sizes, statistic, target, sources) of every successful attack and clean model."""
    data = load_dataset("fashion-mnist")
    per_class = PROFILES["full"]["per_class"]
    for path in sorted(p for d in pi_dirs for p in d.glob("*.npz")):
        f = np.load(path, allow_pickle=False)
        group = path.stem.rsplit("-", 1)[0]
        if group != "Clean" and not float(f["asr"]) >= MIN_ASR:
            continue
        sizes = f["sizes"][list(np.round(f["pis"], 2)).index(0.8)]
        x, y = sample_per_class(data.x_test, data.y_test, per_class, random_state=int(f["seed"]))
        target = None if int(f["target"]) < 0 else int(f["target"])
        yield (f"{path.parent.name}/{path.stem}", group, sizes, normalised_statistics(sizes, STATISTIC, x=x, y=y),
               target, [int(s) for s in f["sources"]])
    for run in adstat_dirs:
        report = json.loads(next(run.glob("*.json")).read_text())
        arrays = np.load(next(run.glob("*-arrays.npz")), allow_pickle=False)
        for v in report["tables"]["victims"]:
            if v["group"] != "Clean" and not (v["ASR"] or 0) >= MIN_ASR:
                continue
            key = f"{v['group']}/{v['seed']}/input L2"
            yield (f"{run.name}/{v['group']}-{v['seed']}", v["group"], arrays[f"{key}/size (paper)"],
                   arrays[f"{key}/{STATISTIC}"], v["target"], json.loads(v["sources"]))


def main(pi_dirs: list[Path], adstat_dirs: list[Path]) -> None:
    table: dict[str, dict[str, list[bool]]] = {}
    for name, group, sizes, statistic, target, sources in victims(pi_dirs, adstat_dirs):
        line = [f"{name:28}"]
        for rule, (p, found) in rules(statistic).items():
            source = smallest_size_source(sizes, found)
            ok, _ = _verdict({"detected": None, "p": p, "found": found, "source": source, "target": target,
                              "sources": sources}, 0.05)
            table.setdefault(rule, {}).setdefault(group, []).append(ok)
            line.append(f"{rule.split(',')[0]}: {p:.3g}{'+' if ok else '-'}")
        print("  ".join(line))
    print("\n| rule | " + " | ".join(GROUPS) + " | mean |")
    print("|---|" + "---|" * (len(GROUPS) + 1))
    for rule, by in table.items():
        acc = [np.mean(by[g]) if by.get(g) else float("nan") for g in GROUPS]
        cells = [f"{sum(by.get(g, []))}/{len(by.get(g, []))}" for g in GROUPS]
        print(f"| {rule} | " + " | ".join(cells) + f" | {np.nanmean(acc):.3f} |")


if __name__ == "__main__":
    args = sys.argv[1:]
    split = args.index("--adstat") if "--adstat" in args else len(args)
    main([Path(a) for a in args[:split]], [Path(a) for a in args[split + 1:]])
