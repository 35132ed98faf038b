"""Our trigger functions inside ART's PoisoningAttackBackdoor, then ART's AC/SS against the layer-selectable ones.

Run: python examples/01_triggers_and_ac_ss.py [--fast]
"""

from __future__ import annotations

import sys

import numpy as np


def main(fast: bool = False) -> dict:
    from art.attacks.poisoning import PoisoningAttackBackdoor
    from art.defences.detector.poison import ActivationDefence

    from art_backdoor_ext.attacks.triggers import patch_trigger
    from art_backdoor_ext.datasets import load_digits
    from art_backdoor_ext.defences import MultiLayerActivationDefence
    from art_backdoor_ext.functional.metrics import f_beta
    from art_backdoor_ext.models import build_model, make_classifier
    from art_backdoor_ext.training import fit_classifier

    data = load_digits()
    n = 600 if fast else len(data.x_train)
    x, y = data.x_train[:n], data.y_train[:n]

    # 1. Poison 5% of the training set (a third of the target class) through ART, with our BadNets trigger.
    trigger = patch_trigger(pattern=np.ones((2, 2), np.float32), location="bottom-right")
    attack = PoisoningAttackBackdoor(perturbation=trigger)
    rng = np.random.default_rng(0)
    poison_idx = rng.choice(np.flatnonzero(y != 0), size=n // 20, replace=False)
    x_train, y_train = x.copy(), y.copy()
    x_train[poison_idx], _ = attack.poison(x[poison_idx], y=np.eye(10)[np.zeros(len(poison_idx), int)])
    y_train[poison_idx] = 0
    is_poison = np.zeros(n, bool)
    is_poison[poison_idx] = True

    # 2. Train a small CNN wrapped in ART's PyTorchClassifier.
    classifier = make_classifier(build_model("digits-cnn", random_state=0))
    fit_classifier(classifier, x_train, y_train, nb_epochs=12 if fast else 20, learning_rate=3e-3, random_state=0)

    # 3. ART's ActivationDefence (last layer) vs ours on the penultimate layer.
    _, art_clean = ActivationDefence(classifier, x_train, np.eye(10)[y_train]).detect_poison(nb_clusters=2,
                                                                                             nb_dims=10)
    _, our_clean = MultiLayerActivationDefence(classifier, x_train, y_train, layers="relu3").detect_poison()
    scores = {
        "ART ActivationDefence (logits)": f_beta(np.asarray(art_clean) == 0, is_poison),
        "MultiLayerActivationDefence (relu3)": f_beta(np.asarray(our_clean) == 0, is_poison),
    }
    for name, f1 in scores.items():
        print(f"{name:40s} F1 = {f1:.3f}")
    return scores


if __name__ == "__main__":
    main(fast="--fast" in sys.argv)
