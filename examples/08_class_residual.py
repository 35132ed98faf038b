"""The white-box class-residual baseline beside MBDS's white-box mode, on a BadNets and a blended victim.

A backdoored input is predicted as the target class while its penultimate features still carry the source image
and the trigger, so it lies far from the target's clean features. ClassResidualDetector needs only the victim and
a clean labelled reserve (no shadow models).

Run: python examples/08_class_residual.py [--fast]
"""

from __future__ import annotations

import sys

import numpy as np


def main(fast: bool = False) -> dict:
    import torch

    from art_backdoor_ext.attacks.triggers import blend_trigger, patch_trigger
    from art_backdoor_ext.datasets import load_digits
    from art_backdoor_ext.defences import ClassResidualDetector
    from art_backdoor_ext.functional.metrics import f_beta, false_acceptance_rate, false_rejection_rate
    from art_backdoor_ext.models import build_model, make_classifier
    from art_backdoor_ext.plotting import plot_detection_scores
    from art_backdoor_ext.training import train_victim

    torch.set_num_threads(1)
    data = load_digits()
    triggers = {"BadNets 2x2 patch": patch_trigger(pattern=np.ones((2, 2), np.float32), location="bottom-right"),
                "blended noise (alpha 0.2)": blend_trigger(alpha=0.2, random_state=0)}
    # The defender holds 250 labelled clean test images; the other 200 and their triggered copies are evaluation.
    x_def, y_def = data.x_test[:250], data.y_test[:250]
    x_eval, y_eval = data.x_test[250:], data.y_test[250:]
    results: dict = {}
    for name, trigger in triggers.items():
        classifier = make_classifier(build_model("digits-cnn", random_state=0), device_type="cpu")
        victim = train_victim(classifier, data.x_train, data.y_train, data.x_test, data.y_test, trigger, target=0,
                              rate=0.05, nb_epochs=6 if fast else 12, learning_rate=3e-3, random_state=0)
        detector = ClassResidualDetector(classifier, target_frr=0.05, random_state=0)  # layer: the penultimate
        detector.fit(x_def, y_def)
        x_trig = trigger(x_eval[y_eval != 0])
        x_all = np.concatenate([x_eval, x_trig])
        is_poison = np.r_[np.zeros(len(x_eval), bool), np.ones(len(x_trig), bool)]
        report, flagged = detector.detect(x_all)
        row = {"BA": victim.benign_accuracy, "ASR": victim.attack_success_rate,
               "FAR": false_acceptance_rate(flagged, is_poison), "FRR": false_rejection_rate(flagged, is_poison),
               "F2": f_beta(flagged, is_poison, beta=2.0)}
        print(f"{name:>26} (layer {report['layer']}): " + ", ".join(f"{k} {v:.3f}" for k, v in row.items()))
        results[name] = row
        if not fast:  # scores span orders of magnitude (a unit dead on clean data that a trigger wakes): log10
            log_scores = np.log10(np.asarray(report["scores"]))
            plot_detection_scores({"clean": log_scores[~is_poison], "triggered": log_scores[is_poison]},
                                  threshold=float(np.log10(detector.threshold)), title=f"log10 score, {name}",
                                  path=f"class-residual-{name.split()[0].lower()}.png")
    return results


if __name__ == "__main__":
    main(fast="--fast" in sys.argv)
