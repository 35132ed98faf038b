"""Realised false-rejection rate of MBDS's black-box threshold on unseen clean images (digits, fast profile fit).

Usage: ``OMP_NUM_THREADS=1 .venv/bin/python tools/scratch/mbds_frr_check.py SEED [SEED ...]``

Fits MBDS as ``bench mbds --profile fast`` does (16 shadow models; SEED is the shadow/fit seed, 1 in the
benchmark) on the same reserve, and prints, for the threshold at the 2nd highest of the 50 calibration scores
(the split-conformal rank MBDS uses since 2026-12-04) and at the 3rd (``np.quantile(..., 0.95, "higher")``, the
rule before), the fraction of the clean test split and of the attacker's (unseen) share scored above it, and a
one-sided Mann-Whitney p-value for "calibration scores lower than unseen clean scores" (a calibration set that is
not exchangeable with new clean inputs would show up there). The last line pools the seeds (Fisher).
"""
import sys

import numpy as np
from scipy.stats import combine_pvalues, mannwhitneyu

from art_backdoor_ext.benchmarks.mbds import PROFILES, _mbds
from art_backdoor_ext.datasets import load_dataset, split_for_defence
from art_backdoor_ext.models import build_model, make_classifier

cfg = PROFILES["fast"]
data = load_dataset("digits")
split = split_for_defence(data.x_train, data.y_train, reserved_fraction=cfg["reserve"],
                          attacker_fraction=cfg["attacker"], random_state=0)
xr, yr = split.x_reserved, split.y_reserved
p_values, rows = [], []
for seed in map(int, sys.argv[1:]):
    det = _mbds(make_classifier(build_model(cfg["arch"], random_state=seed)), cfg, 16, seed)
    det.fit(xr, yr)
    _, _, idx_cal = det._split(yr, det._split_seed)
    s_cal = np.sort(det.score(xr[idx_cal], feature_source="shadow"))
    s_test = det.score(data.x_test, feature_source="shadow")
    s_att = det.score(split.x_attacker, feature_source="shadow")
    rank = det.fit_report_["calibration_frr"]["rank"]
    if det.thresholds["shadow"] != s_cal[-rank]:
        raise SystemExit(f"seed {seed}: the fitted threshold is not the rank-{rank} calibration score")
    p = mannwhitneyu(s_cal, np.concatenate([s_test, s_att]), alternative="less").pvalue
    p_values.append(p)
    frr = [(np.mean(s_test > s_cal[-r]), np.mean(s_att > s_cal[-r])) for r in (2, 3)]
    rows.append(frr)
    print(f"seed {seed}: n_cal {len(s_cal)}; rank 2 (default): FRR test {frr[0][0]:.3f}, attacker split "
          f"{frr[0][1]:.3f}; rank 3 (before): test {frr[1][0]:.3f}, attacker split {frr[1][1]:.3f}; "
          f"calibration < unseen p {p:.3f}", flush=True)
mean = np.mean(rows, axis=0)
print(f"mean: rank 2 test {mean[0][0]:.3f} attacker {mean[0][1]:.3f}; rank 3 test {mean[1][0]:.3f} attacker "
      f"{mean[1][1]:.3f}; Fisher p (calibration scores lower) {combine_pvalues(p_values).pvalue:.3f}")
