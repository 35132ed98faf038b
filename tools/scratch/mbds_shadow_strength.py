"""MBDS black-box F2 on Fashion-MNIST against how hard the shadow models are trained.

Usage: mbds_shadow_strength.py EPOCHS LR N_SHADOWS  (the ``bench mbds`` full profile's split, reserve and victims;
victims: BadNets seeds 100 and 102, Blended 110, Jumbo 121, the effective ones of the full-profile run).
Prints the shadow models' mean clean accuracy and attack success on their own triggers, then one row per victim.
"""

from __future__ import annotations

import sys
import time

import numpy as np

from art_backdoor_ext.benchmarks import mbds as bench
from art_backdoor_ext.datasets import load_dataset, split_for_defence
from art_backdoor_ext.defences.sample import MBDS
from art_backdoor_ext.models import build_model, make_classifier
from art_backdoor_ext.training import train_victim

VICTIMS = (("BadNets", 100), ("BadNets", 102), ("Blended", 110), ("Jumbo", 121))


def main(epochs: int, lr: float, n_shadows: int) -> None:
    cfg = dict(bench.PROFILES["full"])
    data = load_dataset(cfg["dataset"])
    split = split_for_defence(data.x_train, data.y_train, reserved_fraction=cfg["reserve"],
                              attacker_fraction=cfg["attacker"], random_state=0)
    keep = np.random.default_rng(0).choice(len(split.x_attacker), cfg["train"], replace=False)
    x_att, y_att = split.x_attacker[keep], split.y_attacker[keep]
    keep = np.random.default_rng(7).choice(len(data.x_test), cfg["test"], replace=False)
    x_test, y_test = data.x_test[keep], data.y_test[keep]
    start = time.perf_counter()
    det = MBDS(make_classifier(build_model(cfg["arch"], random_state=1)), n_shadow_models=n_shadows,
               shadow_epochs=epochs, shadow_learning_rate=lr, meta_epochs=cfg["meta_epochs"], random_state=1)
    det.fit(split.x_reserved, split.y_reserved)
    fit = det.fit_report_
    print({"epochs": epochs, "lr": lr, "shadows": n_shadows, "fit s": round(time.perf_counter() - start),
           **{k: v for k, v in fit.items() if "mean" in k}}, flush=True)
    for attack, seed in VICTIMS:
        trigger, target, rate = bench._trigger(attack, seed, data.input_shape, data.nb_classes)
        clf = make_classifier(build_model(cfg["arch"], random_state=seed))
        victim = train_victim(clf, x_att, y_att, x_test, y_test, trigger, target=target, rate=rate,
                              nb_epochs=cfg["victim_epochs"], learning_rate=cfg["victim_lr"], random_state=seed)
        scores = bench._evaluate(det.for_classifier(clf, split.x_reserved, split.y_reserved), clf, trigger, target,
                                 x_test, y_test, sources=("shadow",))["shadow"]
        print({"attack": attack, "seed": seed, "ASR": round(victim.attack_success_rate, 3),
               **{k: round(v, 3) for k, v in scores.items() if k != "detect s"}}, flush=True)


if __name__ == "__main__":
    main(int(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3]))
