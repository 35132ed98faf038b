"""Neural Cleanse for PyTorch on an all-to-one BadNets patch backdoor (Neural Cleanse's home ground).

ART's own NeuralCleanse refuses PyTorch classifiers; PyTorchNeuralCleanse runs on ART's PyTorchClassifier.

Run: python examples/03_neural_cleanse.py [--fast]
"""

from __future__ import annotations

import sys

import numpy as np


def main(fast: bool = False) -> dict:
    from art_backdoor_ext.attacks.triggers import patch_trigger
    from art_backdoor_ext.datasets import load_digits, sample_per_class
    from art_backdoor_ext.defences import PyTorchNeuralCleanse
    from art_backdoor_ext.models import build_model, make_classifier
    from art_backdoor_ext.training import train_victim

    data = load_digits()
    classifier = make_classifier(build_model("digits-cnn", random_state=0))
    trigger = patch_trigger(pattern=np.ones((2, 2), np.float32), location="bottom-right")
    victim = train_victim(classifier, data.x_train, data.y_train, data.x_test, data.y_test, trigger, target=0,
                          rate=0.1, nb_epochs=12 if fast else 20, learning_rate=3e-3, random_state=0)
    print(f"victim: benign accuracy {victim.benign_accuracy:.3f}, attack success {victim.attack_success_rate:.3f}")

    x_clean, y_clean = sample_per_class(data.x_test, data.y_test, 10, random_state=0)
    nc = PyTorchNeuralCleanse(classifier, max_iter=60 if fast else 500, max_samples_per_target=30 if fast else None,
                              random_state=0)
    report = nc.scan(x_clean, y_clean)
    print(f"detected={report.detected} target={report.target} "
          f"anomaly index of the target {report.anomaly_index[0]:.2f} ({report.seconds:.1f} s)")
    print("mask L1 norm per target class:", np.round(report.statistics, 2))
    return report.to_dict()


if __name__ == "__main__":
    main(fast="--fast" in sys.argv)
