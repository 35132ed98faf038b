"""Offline, no victim: how visible ``bench mbds``'s triggers are in pixel space on Fashion-MNIST (stop 34).

Usage: ``.venv/bin/python tools/scratch/mbds_pixel_outlier.py SEED [SEED ...]`` (the benchmark's data split for
each seed, as in ``mbds_fusion_scores.py full SEED``). The score is the mean squared z of an image's pixels against
the per-pixel mean and standard deviation (plus ``eps``) of the defender's reserve outside a 480-image calibration
part; its threshold is split conformal at FRR 0.05 on that part. Triggers are the benchmark's (``_trigger``): the
3x3 BadNets patch, the 0.2 blend and Jumbo settings drawn from seeds SEED+120..122, applied to every non-target test
image. No model is involved, so a triggered image counts as positive whether or not a victim would obey it.
"""
import sys

import numpy as np

from art_backdoor_ext.benchmarks.mbds import PROFILES, _trigger, benchmark_data
from art_backdoor_ext.functional.detection import threshold_at_frr
from art_backdoor_ext.functional.metrics import f_beta, roc_auc

EPS = (1e-2, 5e-2, 0.2)


def main(seeds: list[int]) -> None:
    cfg = PROFILES["full"]
    for seed in seeds:
        _, (x_res, _), _, (x_test, y_test) = benchmark_data(cfg, seed)
        order = np.random.default_rng(seed).permutation(len(x_res))
        cal, ref = x_res[order[:480]], x_res[order[480:]].reshape(len(x_res) - 480, -1).astype(np.float64)
        mean, std = ref.mean(0), ref.std(0)

        def score(x: np.ndarray, eps: float, mean: np.ndarray = mean, std: np.ndarray = std) -> np.ndarray:
            return np.mean(((x.reshape(len(x), -1) - mean) / (std + eps)) ** 2, axis=1)

        for attack, trigger_seed in (("BadNets", seed + 100), ("Blended", seed + 110), ("Jumbo", seed + 120),
                                     ("Jumbo", seed + 121), ("Jumbo", seed + 122)):
            trigger, target, _ = _trigger(attack, trigger_seed, x_test.shape[1:], 10)
            x_trig = trigger(x_test[y_test != target])
            x_eval = np.concatenate([x_test, x_trig])
            is_poison = np.r_[np.zeros(len(x_test), bool), np.ones(len(x_trig), bool)]
            cells = []
            for eps in EPS:
                ev = score(x_eval, eps)
                flagged = ev > threshold_at_frr(score(cal, eps), 0.05, method="conformal")
                cells.append(f"eps {eps}: F2 {f_beta(flagged, is_poison, beta=2.0):.3f} AUROC "
                             f"{roc_auc(ev, is_poison):.3f} FRR {flagged[~is_poison].mean():.3f}")
            print(f"{seed} {attack} {trigger_seed}: " + " | ".join(cells), flush=True)


if __name__ == "__main__":
    main([int(a) for a in sys.argv[1:]])
