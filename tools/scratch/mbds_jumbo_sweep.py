"""MBDS black-box and white-box F2 on many Jumbo victims, each poisoned at its own setting's rate ``p``.

Usage: mbds_jumbo_sweep.py PROFILE N  (PROFILE of ``bench mbds``; victims use seeds 120 .. 120 + N - 1).
Prints one row per victim: patch side (-1: full-image blend), opacity, rate, mean |x' - x|, ASR and F2.
"""

from __future__ import annotations

import sys

import numpy as np

from art_backdoor_ext.attacks.jumbo import JumboDistribution
from art_backdoor_ext.benchmarks import mbds as bench
from art_backdoor_ext.datasets import load_dataset, split_for_defence
from art_backdoor_ext.models import build_model, make_classifier
from art_backdoor_ext.training import train_victim


def main(profile: str, n_victims: int) -> list[dict]:
    cfg = dict(bench.PROFILES[profile])
    data = load_dataset(cfg["dataset"])
    split = split_for_defence(data.x_train, data.y_train, reserved_fraction=cfg["reserve"],
                              attacker_fraction=cfg["attacker"], random_state=0)
    x_att, y_att = split.x_attacker, split.y_attacker
    if cfg["train"] is not None and len(x_att) > cfg["train"]:
        keep = np.random.default_rng(0).choice(len(x_att), cfg["train"], replace=False)
        x_att, y_att = x_att[keep], y_att[keep]
    x_test, y_test = data.x_test, data.y_test
    if cfg["test"] is not None:
        keep = np.random.default_rng(7).choice(len(x_test), cfg["test"], replace=False)
        x_test, y_test = x_test[keep], y_test[keep]
    det = bench._mbds(make_classifier(build_model(cfg["arch"], random_state=1)), cfg, cfg["shadows"], 1)
    det.fit(split.x_reserved, split.y_reserved)
    rows = []
    for seed in range(120, 120 + n_victims):
        setting = JumboDistribution().sample(data.input_shape, nb_classes=data.nb_classes, random_state=seed)

        def trigger(x: np.ndarray, s=setting) -> np.ndarray:
            return s.apply(x, channels_first=True)

        clf = make_classifier(build_model(cfg["arch"], random_state=seed))
        victim = train_victim(clf, x_att, y_att, x_test, y_test, trigger, target=int(setting.target),
                              rate=float(setting.rate), nb_epochs=cfg["victim_epochs"],
                              learning_rate=cfg["victim_lr"], random_state=seed)
        scores = bench._evaluate(det.for_classifier(clf, split.x_reserved, split.y_reserved), clf, trigger,
                                 int(setting.target), x_test, y_test)
        mask = np.asarray(setting.mask)
        rows.append({"seed": seed, "side": int(np.sqrt(mask.sum())) if mask.sum() < mask.size else -1,
                     "alpha": round(float(setting.alpha), 3), "rate": round(float(setting.rate), 3),
                     "diff": round(float(np.mean(np.abs(trigger(x_test) - x_test))), 4),
                     "ASR": round(victim.attack_success_rate, 3), "F2 shadow": round(scores["shadow"]["F2"], 3),
                     "F2 victim": round(scores["victim"]["F2"], 3)})
        print(rows[-1], flush=True)
    print("mean F2 shadow", round(float(np.mean([r["F2 shadow"] for r in rows])), 3))
    return rows


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
