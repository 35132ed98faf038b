"""MBDS: a meta-classifier over shadow models flags backdoored inputs, trained from a small clean reserve only.

Run: python examples/05_mbds.py [--fast] [--plot scores.png]
"""

from __future__ import annotations

import sys

import numpy as np


def main(fast: bool = False, plot: str | None = None) -> dict:
    import torch

    from art_backdoor_ext.datasets import load_digits, split_for_defence
    from art_backdoor_ext.defences.sample import MBDS
    from art_backdoor_ext.functional.metrics import f_beta, false_acceptance_rate, false_rejection_rate
    from art_backdoor_ext.models import DigitsCNN, make_classifier
    from art_backdoor_ext.training import train_victim

    torch.set_num_threads(1)
    data = load_digits()
    # Digits is small: the defender's reserve is 20% of the training split (the paper's 4% would be ~50 images).
    split = split_for_defence(data.x_train, data.y_train, reserved_fraction=0.2, attacker_fraction=0.8,
                              random_state=0)

    # 1. The attacker trains a victim with a 2x2 white patch, all-to-one target 0, on data the defender never sees.
    def white_patch(x: np.ndarray) -> np.ndarray:
        out = x.copy()
        out[..., -2:, -2:] = 1.0
        return out

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        classifier = make_classifier(DigitsCNN(), device_type="cpu")
    victim = train_victim(classifier, split.x_attacker, split.y_attacker, data.x_test, data.y_test, white_patch,
                          target=0, rate=0.05, nb_epochs=12, learning_rate=3e-3, random_state=0)
    print(f"victim: benign accuracy {victim.benign_accuracy:.3f}, attack success {victim.attack_success_rate:.3f}")

    # 2. The defender fits MBDS on the reserve: jumbo shadow models, feature filters, meta-classifier, threshold.
    mbds = MBDS(classifier, n_shadow_models=8 if fast else 32, shadow_epochs=40, shadow_learning_rate=3e-3,
                meta_epochs=60, random_state=1)
    mbds.fit(split.x_reserved, split.y_reserved)
    print("fit:", mbds.fit_report_["filters"], f"{mbds.fit_report_['seconds']:.1f} s")

    # 3. Detection on clean test inputs and on triggered non-target test inputs, for both feature sources.
    x_trig = white_patch(data.x_test[data.y_test != 0])
    x_eval = np.concatenate([data.x_test, x_trig])
    is_poison = np.r_[np.zeros(len(data.x_test), bool), np.ones(len(x_trig), bool)]
    results = {"benign_accuracy": victim.benign_accuracy, "attack_success_rate": victim.attack_success_rate}
    for source in ("shadow", "victim"):
        _, flagged = mbds.detect(x_eval, feature_source=source)
        row = {"FAR": false_acceptance_rate(flagged, is_poison), "FRR": false_rejection_rate(flagged, is_poison),
               "F2": f_beta(flagged, is_poison, beta=2.0)}
        print(f"{source:>6}: " + ", ".join(f"{k} {v:.3f}" for k, v in row.items()))
        results[source] = row

    if plot:  # histograms of the black-box scores, clean vs triggered, with the calibrated threshold
        from art_backdoor_ext.plotting import plot_detection_scores

        scores = mbds.score(x_eval, feature_source="shadow")
        plot_detection_scores({"clean test images": scores[~is_poison], "patched non-target images": scores[is_poison]},
                              threshold=mbds.thresholds["shadow"], title="MBDS black-box scores (digits, 2x2 patch)",
                              path=plot)
        print(f"score histograms written to {plot}")

    # 4. One fit screens other suspect models of the same architecture: the shadow models and the meta-classifier
    #    are reused, only the white-box statistics are recomputed for the new classifier.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(2)
        suspect = make_classifier(DigitsCNN(), device_type="cpu")
    train_victim(suspect, split.x_attacker, split.y_attacker, data.x_test, data.y_test, white_patch, target=0,
                 rate=0.05, nb_epochs=12, learning_rate=3e-3, random_state=2)
    screened = mbds.for_classifier(suspect, split.x_reserved, split.y_reserved)
    _, flagged = screened.detect(x_eval, feature_source="victim")
    results["second_suspect_victim_F2"] = f_beta(flagged, is_poison, beta=2.0)
    print(f"second suspect (same fit, victim features): F2 {results['second_suspect_victim_F2']:.3f}")

    # 5. White-box with the victim's weights: shadow models fine-tuned from copies of the victim (their channels
    #    line up with the victim's), and the "victim+residual" source, which also flags inputs whose penultimate
    #    features are far from the clean ones of their predicted class (the meta-classifier misses local patches
    #    on Fashion-MNIST; the residual misses global blends: docs/mbds.md).
    import copy

    template = copy.deepcopy(classifier.model).cpu()
    white = MBDS(classifier, model_factory=lambda _i: copy.deepcopy(template), n_shadow_models=4 if fast else 16,
                 shadow_epochs=40, shadow_learning_rate=3e-3, meta_epochs=60, random_state=1)
    white.fit(split.x_reserved, split.y_reserved)
    for source in ("victim", "victim+residual"):
        _, flagged = white.detect(x_eval, feature_source=source)
        results[f"victim-init {source}"] = {"FRR": false_rejection_rate(flagged, is_poison),
                                            "F2": f_beta(flagged, is_poison, beta=2.0)}
        print(f"victim-initialised shadows, {source}: " + ", ".join(
            f"{k} {v:.3f}" for k, v in results[f"victim-init {source}"].items()))
    return results


if __name__ == "__main__":
    main(fast="--fast" in sys.argv, plot=sys.argv[sys.argv.index("--plot") + 1] if "--plot" in sys.argv else None)
