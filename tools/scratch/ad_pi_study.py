"""AD on Fashion-MNIST: does the target misclassification fraction pi change detection? (issue 3)

Usage:
  ad_pi_study.py [--norm=X] OUT_DIR FIRST_SEED N_MODELS [GROUP ...]   scan the ``bench ad --profile full``
      victims (``--norm``: the global chessboard's L2 norm instead of the profile's 1)
  ad_pi_study.py --summary OUT_DIR [OUT_DIR ...]           accuracy per pi (successful attacks only)

Each pair's steps do not depend on pi until it stops, so one scan at the largest pi gives, from the per-iteration
trace, the sizes every smaller pi would have stopped at: ``OrderStatisticDetector.scan_variants`` with one
``target_misclassification`` per variant (``EngineResult.at_fraction``). One ``GROUP-SEED.npz`` per
victim (L2 size matrix per pi, clean set seed, target, sources, ASR); victims already written are skipped, so an
interrupted run resumes. Seeds as in the benchmark: FIRST_SEED..FIRST_SEED+N_MODELS-1 plus 100 * group index.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from art_backdoor_ext.benchmarks.ad import GROUPS, PROFILES, _verdict, _victim
from art_backdoor_ext.datasets import load_dataset, sample_per_class
from art_backdoor_ext.defences.model.order_statistic import OrderStatisticDetector
from art_backdoor_ext.functional.pair_normalisation import normalised_statistics
from art_backdoor_ext.functional.robust import order_statistic_pvalue, reciprocal_statistics
from art_backdoor_ext.functional.size_null import size_order_statistic_pvalue

PIS = (0.5, 0.6, 0.7, 0.8, 0.9, 0.95)
MIN_ASR = 0.9


def scan(out: Path, first: int, n_models: int, groups: list[str], global_norm: float | None = None) -> None:
    cfg = dict(PROFILES["full"])
    if global_norm is not None:  # the chessboard's L2 norm (the profile's is 1; 2 is the stronger trigger)
        cfg["global_norm"] = global_norm
    data = load_dataset(cfg["dataset"])
    out.mkdir(parents=True, exist_ok=True)
    for m in range(first, first + n_models):
        for group in groups:
            seed = 100 * GROUPS.index(group) + m
            path = out / f"{group}-{seed}.npz"
            if path.exists():
                continue
            clf, target, sources, asr, draws = _victim(group, seed, data, cfg)
            x, y = sample_per_class(data.x_test, data.y_test, cfg["per_class"], random_state=seed)
            reports = OrderStatisticDetector(clf).scan_variants(
                x, y, {str(pi): {"target_misclassification": pi} for pi in PIS})
            np.savez(path, sizes=np.stack([reports[str(pi)].sizes for pi in PIS]), pis=np.array(PIS), y=y, seed=seed,
                     target=-1 if target is None else target, sources=np.asarray(sources, dtype=int),
                     asr=np.nan if asr is None else asr, draws=draws)
            print(f"{group}-{seed} ASR {asr} draws {draws} written", flush=True)


def summary(dirs: list[Path]) -> None:
    data = load_dataset("fashion-mnist")
    per_class = PROFILES["full"]["per_class"]
    rows: dict[tuple[str, float], dict[str, list[bool]]] = {}
    for path in sorted(p for d in dirs for p in d.glob("*.npz")):
        f = np.load(path, allow_pickle=False)
        group = path.stem.rsplit("-", 1)[0]
        asr = float(f["asr"])
        if group != "Clean" and not asr >= MIN_ASR:
            continue
        x, y = sample_per_class(data.x_test, data.y_test, per_class, random_state=int(f["seed"]))
        target = None if int(f["target"]) < 0 else int(f["target"])
        line = [path.stem]
        for pi, sizes in zip(f["pis"], f["sizes"]):
            for name in ("default", "paper"):
                if name == "default":
                    ost = size_order_statistic_pvalue(normalised_statistics(sizes, "source-normalised-distance",
                                                                            x=x, y=y))
                else:
                    ost = order_statistic_pvalue(reciprocal_statistics(np.maximum(sizes, 1e-12)))
                r = {"detected": None, "p": ost.p_value, "found": ost.target, "source": ost.source,
                     "target": target, "sources": [int(s) for s in f["sources"]]}
                ok, ok_target = _verdict(r, 0.05)
                rows.setdefault((name, float(pi)), {}).setdefault(group, []).append(ok)
                rows.setdefault((f"{name}, target only", float(pi)), {}).setdefault(group, []).append(ok_target)
                if name == "default":
                    line.append(f"{pi:.2f}:{ost.p_value:.3g}{'+' if ok else '-'}")
        print(" ".join(line))
    print("\nstatistic               pi    " + "  ".join(f"{g:>7}" for g in GROUPS) + "   mean")
    for (name, pi), by in sorted(rows.items()):
        acc = [np.mean(by[g]) if by.get(g) else float("nan") for g in GROUPS]
        counts = " ".join(f"{sum(by.get(g, [])):>3}/{len(by.get(g, [])):<3}" for g in GROUPS)
        print(f"{name:21} {pi:.2f}  {counts}  {np.nanmean(acc):.3f}")


if __name__ == "__main__":
    if sys.argv[1] == "--summary":
        summary([Path(a) for a in sys.argv[2:]])
    else:
        args = sys.argv[1:]
        norm = None
        if args[0].startswith("--norm="):
            norm = float(args.pop(0).split("=", 1)[1])
        scan(Path(args[0]), int(args[1]), int(args[2]), args[3:] or list(GROUPS), norm)
