"""Realised false-rejection rate of MBDS's black-box threshold on unseen clean images (digits, fast profile fit).

Usage: ``OMP_NUM_THREADS=1 .venv/bin/python tools/scratch/mbds_frr_check.py SEED [SEED ...]``

Fits MBDS as ``bench mbds --profile fast`` does (16 shadow models; SEED is the shadow/fit seed, 1 in the
benchmark) on the same reserve, and prints the fraction of the clean test split and of the attacker's (unseen)
share scored above the threshold set for ``target_frr=0.05`` on the reserve's calibration part.
"""
import sys

import numpy as np

from art_backdoor_ext.benchmarks.mbds import PROFILES, _mbds
from art_backdoor_ext.datasets import load_dataset, split_for_defence
from art_backdoor_ext.models import build_model, make_classifier

cfg = PROFILES["fast"]
data = load_dataset("digits")
split = split_for_defence(data.x_train, data.y_train, reserved_fraction=cfg["reserve"],
                          attacker_fraction=cfg["attacker"], random_state=0)
xr, yr = split.x_reserved, split.y_reserved
for seed in map(int, sys.argv[1:]):
    det = _mbds(make_classifier(build_model(cfg["arch"], random_state=seed)), cfg, 16, seed)
    det.fit(xr, yr)
    thr = det.thresholds["shadow"]
    s_test = det.score(data.x_test, feature_source="shadow")
    s_att = det.score(split.x_attacker, feature_source="shadow")
    print(f"seed {seed}: FRR test {np.mean(s_test > thr):.3f}, attacker split {np.mean(s_att > thr):.3f}", flush=True)
