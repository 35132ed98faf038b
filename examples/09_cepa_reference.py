"""CEPA against clean reference models: each class of the scanned model compared with the same class of clean
models of the same architecture (``CEPAReference``, this project's opt-in addition to the paper).

CEPA's own test compares the ten putative targets of one model with each other, so a class that is naturally easy
to reach can look like a backdoor target. With a few clean models trained like the one under test, each class is
compared with itself instead. Here: eight clean DigitsCNNs (four with ``--fast``) are the references (scanned
once, saved and loaded back), then a warping-backdoor victim (target 0) and another clean model are tested both
ways.

Run: python examples/09_cepa_reference.py [--fast]
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path


def main(fast: bool = False) -> dict:
    from art_backdoor_ext.attacks.triggers import warp_trigger
    from art_backdoor_ext.datasets import load_digits, sample_per_class
    from art_backdoor_ext.defences import CEPA, CEPAReference
    from art_backdoor_ext.models import build_model, make_classifier
    from art_backdoor_ext.training import fit_classifier, train_victim

    data = load_digits()

    def clean_model(seed: int):
        clf = make_classifier(build_model("digits-cnn", random_state=seed), device_type="cpu")
        fit_classifier(clf, data.x_train, data.y_train, nb_epochs=12, learning_rate=3e-3, random_state=seed)
        return clf

    victim = make_classifier(build_model("digits-cnn", random_state=0), device_type="cpu")
    result = train_victim(victim, data.x_train, data.y_train, data.x_test, data.y_test,
                          warp_trigger(grid_size=4, strength=1.0, random_state=0), target=0, rate=0.1,
                          nb_epochs=12, learning_rate=3e-3, random_state=0)
    print(f"victim: benign accuracy {result.benign_accuracy:.3f}, attack success {result.attack_success_rate:.3f}")

    x_clean, y_clean = sample_per_class(data.x_test, data.y_test, 10, random_state=0)
    # fast: fewer iterations and two of the four default layers (the first linear layer and the last ReLU)
    settings = {"max_iter": 40, "layers": ["conv1", "relu3"]} if fast else {}
    detector = CEPA(victim, random_state=0, **settings)
    # references: clean models trained like the victim (architecture, data distribution, schedule), scanned with the
    # detector's settings and layers; at least 3, and the more the stronger the test (R - 1 degrees of freedom)
    clean_models = [clean_model(seed) for seed in range(101, 105 if fast else 109)]
    reference = CEPAReference.scan_references(detector, clean_models, x_clean, y_clean)
    with tempfile.TemporaryDirectory() as tmp:  # a plain .npz, read back with allow_pickle=False
        path = Path(tmp) / "cepa-references.npz"
        reference.save(path)
        reference = CEPAReference.load(path)
    print(f"{reference.n_references} references scanned at {', '.join(reference.layers)}")

    out = {}
    for name, model in (("warp victim (target 0)", victim), ("another clean model", clean_model(200))):
        report = CEPA(model, **detector.get_params()).scan(x_clean, y_clean)   # the per-model test (the default)
        test = reference.test(report)                                         # the same scan against the references
        print(f"{name}: per-model test detected={report.detected} p={report.p_value:.3g} target={report.target}; "
              f"reference test detected={test.detected} p={test.p_value:.3g} target={test.target} at {test.layer}")
        out[name] = {"per_model": report.to_dict(), "reference": test.to_dict()}
    return out


if __name__ == "__main__":
    main(fast="--fast" in sys.argv)
