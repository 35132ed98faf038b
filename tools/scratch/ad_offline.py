"""Re-evaluate AD statistics and nulls offline from saved ``bench ad-statistics`` runs (no scanning).

Usage: ``.venv/bin/python tools/scratch/ad_offline.py [--min-asr=X --summary | --summary] RUN_DIR [RUN_DIR ...]``

Each RUN_DIR holds ``ad-statistics-<profile>.json`` and ``ad-statistics-<profile>-arrays.npz`` (written by
``art-backdoor-ext bench ad-statistics ... --output RUN_DIR`` since 2026-12-01). The runs' victims are pooled.
Prints, for the chosen space/norm and statistic (default ``input L2`` and the detector's default
``source-normalised-distance``): the accuracy per group under both nulls at several thresholds, recomputed from
the stored matrices (checked against the run's own table at 0.05), and one line per victim with ASR, the true
pair's rank and both p-values. ``--summary``: instead, the pooled accuracy at theta = 0.05 of every stored
space/norm, statistic and null (the layout of the benchmark's own table); ``--min-asr=X --summary`` the same
over the attacked victims whose ASR reached X (and every clean model), as the paper counts successful attacks.
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

from art_backdoor_ext.benchmarks.ad import GROUPS, _verdict, is_successful, pair_ranks
from art_backdoor_ext.benchmarks.ad_statistics import NULLS, outcome

SCAN = "input L2"
STATISTIC = "source-normalised-distance"
THETAS = (0.01, 0.05, 0.1)


def load(run_dir: Path) -> tuple[list[dict], dict[str, np.ndarray], list[dict]]:
    (report_path,) = run_dir.glob("ad-statistics-*.json")
    report = json.loads(report_path.read_text())
    arrays_path = report_path.with_name(report_path.stem + "-arrays.npz")
    with np.load(arrays_path, allow_pickle=False) as saved:
        arrays = {k: saved[k] for k in saved.files}
    tables = list(report["tables"].values())  # the accuracy table first, the victims last
    return report["tables"]["victims"], arrays, tables[0]


def pooled(run_dirs: list[str], min_asr: float | None = None
           ) -> tuple[list[dict], dict[str, np.ndarray], list[list[dict]]]:
    """The runs' victims (attacked ones with ASR below ``min_asr`` dropped), matrices and own tables, pooled."""
    victims, arrays, own_rows = [], {}, []
    for d in run_dirs:
        v, a, rows = load(Path(d))
        victims += [r for r in v if is_successful(r["ASR"], min_asr)]
        arrays.update(a)
        own_rows.append(rows)
    return victims, arrays, own_rows


def main(run_dirs: list[str], scan: str = SCAN, statistic: str = STATISTIC) -> None:
    victims, arrays, own_rows = pooled(run_dirs)
    results = defaultdict(list)  # (null) -> list of (victim, outcome)
    print(f"{len(victims)} victims from {len(run_dirs)} runs; {scan}, {statistic}\n")
    print("| group | seed | ASR | true pair rank | " + " | ".join(f"p ({n})" for n in NULLS) + " | found |")
    print("|---|---|---|---|" + "---|" * len(NULLS) + "---|")
    for v in victims:
        matrix = arrays[f"{v['group']}/{v['seed']}/{scan}/{statistic}"]
        sources = json.loads(v["sources"])
        line = []
        for null, inference in NULLS.items():
            ost = inference(matrix)
            results[null].append((v, outcome(ost, v["target"], sources)))
            line.append(f"{ost.p_value:.3g}")
        rank = pair_ranks(matrix, v["target"], sources) if v["target"] is not None else None
        asr = "-" if v["ASR"] is None else f"{v['ASR']:.2f}"
        print(f"| {v['group']} | {v['seed']} | {asr} | {rank if rank else '-'} | " + " | ".join(line)
              + f" | {ost.source}->{ost.target} |")
    print("\n| null | theta | " + " | ".join(GROUPS) + " | mean |")
    print("|---|---|" + "---|" * (len(GROUPS) + 1))
    for null, pairs in results.items():
        for theta in THETAS:
            acc = {g: float(np.mean([_verdict(o, theta)[0] for v, o in pairs if v["group"] == g])) for g in GROUPS}
            print(f"| {null} | {theta} | " + " | ".join(f"{acc[g]:.2f}" for g in GROUPS)
                  + f" | {np.mean(list(acc.values())):.3f} |")
            if theta == 0.05 and len(run_dirs) == 1:  # reproduces the run's own table
                (own,) = [r for r in own_rows[0] if r["space and norm"] == scan and r["statistic"] == statistic
                          and r["null"] == null]
                if any(abs(own[g] - acc[g]) > 1e-12 for g in GROUPS):
                    raise SystemExit(f"mismatch with the run's own table: {own} vs {acc}")


def summary(run_dirs: list[str], theta: float = 0.05, min_asr: float | None = None) -> None:
    victims, arrays, _ = pooled(run_dirs, min_asr)
    combos = sorted({tuple(k.split("/")[2:]) for k in arrays}, key=lambda c: (c[0] != "input L2", c))
    kept = " / ".join(str(sum(v["group"] == g for v in victims)) for g in GROUPS)
    print(f"{len(victims)} victims ({kept}) from {len(run_dirs)} runs, theta = {theta}, min ASR {min_asr}\n")
    print("| space and norm | statistic | null | " + " | ".join(GROUPS) + " | mean | min p clean |")
    print("|---|---|---|" + "---|" * (len(GROUPS) + 2))
    for scan, statistic in combos:
        for null, inference in NULLS.items():
            verdicts, clean_p = defaultdict(list), []
            for v in victims:
                ost = inference(arrays[f"{v['group']}/{v['seed']}/{scan}/{statistic}"])
                truth = outcome(ost, v["target"], json.loads(v["sources"]))
                verdicts[v["group"]].append(_verdict(truth, theta)[0])
                if v["target"] is None:
                    clean_p.append(ost.p_value)
            acc = [float(np.mean(verdicts[g])) for g in GROUPS]
            print(f"| {scan} | {statistic} | {null} | " + " | ".join(f"{a:.2f}" for a in acc)
                  + f" | {np.mean(acc):.3f} | {min(clean_p):.3g} |")


if __name__ == "__main__":
    args = sys.argv[1:]
    if not args or args == ["--summary"]:
        raise SystemExit(__doc__)
    min_asr = None
    if args[0].startswith("--min-asr="):
        min_asr, args = float(args[0].split("=", 1)[1]), args[1:]
    if args[0] == "--summary":
        summary(args[1:], min_asr=min_asr)
    else:
        main(args)
