"""MBDS black-box mode: how the per-extractor meta scores are combined (mean = the paper's, max, top-4, q75, mean
logit), each thresholded at the 5% FRR quantile of the calibration part of the reserve.

Usage: mbds_aggregation.py PROFILE N_SHADOW N_JUMBO  (two BadNets, two Blended, N_JUMBO Jumbo triggers).
Shadow-mode scores do not depend on the victim, so only the triggers are needed, no victims are trained.
"""

from __future__ import annotations

import sys

import numpy as np

from art_backdoor_ext.attacks.jumbo import JumboDistribution
from art_backdoor_ext.benchmarks import mbds as bench
from art_backdoor_ext.datasets import load_dataset, split_for_defence
from art_backdoor_ext.defences.sample import mbds as mbds_module
from art_backdoor_ext.functional.metrics import f_beta
from art_backdoor_ext.models import build_model, make_classifier

RULES = {"mean": lambda s: s.mean(1), "max": lambda s: s.max(1), "top4": lambda s: np.sort(s, 1)[:, -4:].mean(1),
         "q75": lambda s: np.quantile(s, 0.75, 1),
         "mean logit": lambda s: np.log(np.clip(s, 1e-6, 1 - 1e-6) / np.clip(1 - s, 1e-6, 1)).mean(1)}


def main(profile: str, n_shadow: int, n_jumbo: int) -> None:
    cfg = dict(bench.PROFILES[profile])
    data = load_dataset(cfg["dataset"])
    split = split_for_defence(data.x_train, data.y_train, reserved_fraction=cfg["reserve"],
                              attacker_fraction=cfg["attacker"], random_state=0)
    xr, yr = split.x_reserved, split.y_reserved
    det = bench._mbds(make_classifier(build_model(cfg["arch"], random_state=1)), cfg, n_shadow, 1)
    det.fit(xr, yr)
    _, _, idx_cal = det._split(yr, det._split_seed)

    def per_extractor(x: np.ndarray) -> np.ndarray:
        out = []
        for i, model in enumerate(det._shadow):
            feats, _ = mbds_module.module_features(model, x, det._layer, batch_size=256, device="cpu")
            normed = mbds_module._normalise(feats, det._shadow_mean[i], det._shadow_std[i])
            out.append(mbds_module.meta_probabilities(det._meta, normed, batch_size=256))
        return np.stack(out, 1)

    calibration = per_extractor(xr[idx_cal])
    thresholds = {name: mbds_module._threshold(rule(calibration), 0.05) for name, rule in RULES.items()}
    clean = per_extractor(data.x_test)
    cases = [("BadNets", 100), ("BadNets", 101), ("Blended", 110), ("Blended", 111)]
    cases += [("Jumbo", s) for s in range(120, 120 + n_jumbo)]
    rows = []
    for attack, seed in cases:
        if attack == "Jumbo":
            setting = JumboDistribution().sample(data.input_shape, nb_classes=data.nb_classes, random_state=seed)
            triggered = setting.apply(data.x_test[data.y_test != setting.target], channels_first=True)
        else:
            trigger, target, _ = bench._trigger(attack, seed, data.input_shape, data.nb_classes)
            triggered = trigger(data.x_test[data.y_test != target])
        scores = per_extractor(triggered)
        truth = np.r_[np.zeros(len(clean), bool), np.ones(len(scores), bool)]
        row = {"attack": attack, "seed": seed}
        for name, rule in RULES.items():
            flagged = np.r_[rule(clean) > thresholds[name], rule(scores) > thresholds[name]]
            row[name] = round(f_beta(flagged, truth, beta=2.0), 3)
        rows.append(row)
        print(row, flush=True)
    for name in RULES:
        print(name, {a: round(float(np.mean([r[name] for r in rows if r["attack"] == a])), 3)
                     for a in ("BadNets", "Blended", "Jumbo")})


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))
