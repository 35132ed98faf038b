"""The survey's defences on one BadNets victim: STRIP (ours and ART's), feature squeezing, Fine-Pruning.

Run: python examples/07_survey_defences.py [--fast]
"""

from __future__ import annotations

import sys

import numpy as np


def main(fast: bool = False) -> dict:
    import torch

    from art_backdoor_ext.attacks.triggers import patch_trigger
    from art_backdoor_ext.datasets import load_digits
    from art_backdoor_ext.defences import STRIP, FeatureSqueezingDetector, FinePruning
    from art_backdoor_ext.functional.metrics import f_beta, false_acceptance_rate, false_rejection_rate
    from art_backdoor_ext.models import build_model, make_classifier
    from art_backdoor_ext.registry import art_strip_flags
    from art_backdoor_ext.training import evaluate_attack, train_victim

    torch.set_num_threads(1)
    data = load_digits()

    # 1. A victim with a 2x2 white patch, all-to-one target 0 (5% of the training set poisoned).
    white_patch = patch_trigger(pattern=np.ones((2, 2), np.float32), location="bottom-right")
    classifier = make_classifier(build_model("digits-cnn", random_state=0), device_type="cpu")
    victim = train_victim(classifier, data.x_train, data.y_train, data.x_test, data.y_test, white_patch, target=0,
                          rate=0.05, nb_epochs=12, learning_rate=3e-3, random_state=0)
    print(f"victim: benign accuracy {victim.benign_accuracy:.3f}, attack success {victim.attack_success_rate:.3f}")

    # 2. The defender holds half of the clean test images; the other half (and triggered copies) is evaluation.
    x_def, y_def = data.x_test[:225], data.y_test[:225]
    x_eval, y_eval = data.x_test[225:], data.y_test[225:]
    x_trig = white_patch(x_eval[y_eval != 0])
    x_all = np.concatenate([x_eval, x_trig])
    is_poison = np.r_[np.zeros(len(x_eval), bool), np.ones(len(x_trig), bool)]

    # 3. Sample detectors: ours (ART EvasionDetector contract) and ART's STRIP on a copy of the classifier.
    strip = STRIP(classifier, n_perturbations=20 if fast else 100, random_state=0)
    strip.fit(x_def)
    squeeze = FeatureSqueezingDetector(classifier, bit_depths=(1,), median_sizes=(2,))
    squeeze.fit(x_def)
    flags = {"STRIP": strip.detect(x_all)[1], "ART STRIP (softmax copy)": art_strip_flags(classifier, x_def, x_all,
                                                                                         seed=0),
             "feature squeezing": squeeze.detect(x_all)[1]}
    results: dict = {"victim": {"BA": victim.benign_accuracy, "ASR": victim.attack_success_rate}}
    for name, flagged in flags.items():
        row = {"FAR": false_acceptance_rate(flagged, is_poison), "FRR": false_rejection_rate(flagged, is_poison),
               "F1": f_beta(flagged, is_poison)}
        print(f"{name:>26}: " + ", ".join(f"{k} {v:.3f}" for k, v in row.items()))
        results[name] = row

    # 4. Fine-Pruning returns a new classifier; BA/ASR before, after pruning, after fine-tuning (survey Fig. 8).
    fine_pruning = FinePruning(classifier, fine_tune_epochs=5 if fast else 10, random_state=0)
    repaired = fine_pruning(x_def, y_def)
    print(f"Fine-Pruning pruned {fine_pruning.report_.n_pruned} of {fine_pruning.report_.n_channels} channels of "
          f"{fine_pruning.report_.layer}")
    for stage, clf in (("before", classifier), ("pruned", fine_pruning.pruned_classifier_),
                       ("fine-pruned", repaired)):
        ba, asr = evaluate_attack(clf, x_eval, y_eval, white_patch, target=0)
        print(f"{stage:>26}: BA {ba:.3f}, ASR {asr:.3f}")
        results[f"Fine-Pruning {stage}"] = {"BA": ba, "ASR": asr}
    return results


if __name__ == "__main__":
    main(fast="--fast" in sys.argv)
