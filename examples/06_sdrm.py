"""SDRM: the same backdoor trained regularly and with the multi-level MMD penalty, then MMD^2 and detectors.

Run: python examples/06_sdrm.py [--fast]
"""

from __future__ import annotations

import sys

import numpy as np


def main(fast: bool = False) -> dict:
    from art_backdoor_ext._torch import extract_features, predict_logits
    from art_backdoor_ext.attacks import SDRM
    from art_backdoor_ext.attacks.triggers import patch_trigger
    from art_backdoor_ext.datasets import load_digits
    from art_backdoor_ext.defences import SubspaceReconstruction
    from art_backdoor_ext.functional.metrics import best_f1
    from art_backdoor_ext.functional.mmd import mmd2_numpy
    from art_backdoor_ext.models import build_model, make_classifier
    from art_backdoor_ext.training import evaluate_attack

    data = load_digits(test_fraction=0.5)  # half for testing: enough clean 0s to compare with
    trigger = patch_trigger(pattern=np.ones((2, 2), np.float32), location="bottom-right")
    levels = ["relu1", "relu2", "relu3"]
    results = {}
    for name, lam in (("RBT", 0.0), ("SDRM-A", 0.3)):
        # 1. The same start model, trained with Algorithm 1; lam=0 is regular backdoor training.
        attack = SDRM(make_classifier(build_model("digits-cnn", random_state=0)), perturbation=trigger, target=0,
                      poison_ratio=0.1, layers=levels, lam=lam, nb_epochs=25 if fast else 200, batch_size=128,
                      learning_rate=3e-3, random_state=0)
        model = attack.poison_estimator(data.x_train, data.y_train)  # a new classifier; the start one is intact
        ba, asr = evaluate_attack(model, data.x_test, data.y_test, trigger, target=0)

        # 2. What a defender sees: 40 clean 0s and 40 triggered inputs, all classified as 0.
        zeros = data.x_test[(data.y_test == 0) & (predict_logits(model, data.x_test).argmax(1) == 0)]
        triggered = trigger(data.x_test[data.y_test != 0])[:40]
        clean, reference = zeros[:40], zeros[40:50]
        f_clean, f_trig = extract_features(model, clean, levels), extract_features(model, triggered, levels)
        x_eval = np.concatenate([clean, triggered])
        is_poison = np.repeat([False, True], [len(clean), len(triggered)])
        sr = SubspaceReconstruction(model, x_eval, np.zeros(len(x_eval), int), x_clean=reference,
                                    y_clean=np.zeros(len(reference), int), layers=levels).detect_poison_by_layer()
        results[name] = {
            "benign_accuracy": ba,
            "attack_success_rate": asr,
            **{f"MMD^2 {lv}": mmd2_numpy(f_clean[lv], f_trig[lv]) for lv in levels},
            **{f"SR best F1 {lv}": best_f1(sr[lv].scores, is_poison)[0] for lv in levels},
        }
    print(f"{'':18s}" + "".join(f"{name:>10s}" for name in results))
    for key in results["RBT"]:
        print(f"{key:18s}" + "".join(f"{results[name][key]:10.3f}" for name in results))
    return results


if __name__ == "__main__":
    main(fast="--fast" in sys.argv)
