"""Detect a warping (WaNet-style) backdoor with CEPA and re-create its trigger on new images.

A DigitsCNN is trained with an all-to-one warping backdoor (target 0, 10% poisoned). CEPA sees only 10 clean
images per class: for every putative target it looks for sample-wise input perturbations that agree on one
shift mu of an internal layer (Eq. 1-2), tests whether the target with the tightest shifts (smallest sigma, the
default; the paper's sigma / ||mu|| with ``statistic="consensus"``) is an outlier, then
turns mu into perturbations for unseen test images (Eq. 3). Last, it measures how consensual the planted
trigger's own embedded shifts are (``CEPA.trigger_consensus``), against what Eq. 1 reached.

Run: python examples/04_cepa.py [--fast]
"""

from __future__ import annotations

import sys


def main(fast: bool = False) -> dict:
    import numpy as np

    from art_backdoor_ext.attacks.triggers import warp_trigger
    from art_backdoor_ext.datasets import load_digits, sample_per_class
    from art_backdoor_ext.defences.model.cepa import CEPA
    from art_backdoor_ext.models import build_model, make_classifier
    from art_backdoor_ext.training import train_victim

    data = load_digits()
    classifier = make_classifier(build_model("digits-cnn", random_state=0), device_type="cpu")
    victim = train_victim(classifier, data.x_train, data.y_train, data.x_test, data.y_test,
                          warp_trigger(grid_size=4, strength=1.0, random_state=0), target=0, rate=0.1,
                          nb_epochs=12, learning_rate=3e-3, random_state=0)
    print(f"victim: benign accuracy {victim.benign_accuracy:.3f}, attack success {victim.attack_success_rate:.3f}")

    x_clean, y_clean = sample_per_class(data.x_test, data.y_test, 10, random_state=0)
    detector = CEPA(classifier, max_iter=100 if fast else 200)   # all-to-one (the default)
    # one optimisation, two decisions: the default (sigma) and the paper's sigma / ||mu||
    reports = detector.scan_variants(x_clean, y_clean, {"sigma": {}, "paper": {"statistic": "consensus"}})
    report, paper = reports["sigma"], reports["paper"]
    print(f"paper's sigma/||mu||: detected={paper.detected} p={paper.p_value:.3g} target={paper.target}")
    stats = report.statistics[report.variant][report.layer]
    ratio, sigma = stats["ratio"], stats["sigma"]
    print(f"detected={report.detected} p={report.p_value:.3g} target={report.target} ({report.variant}, layer "
          f"{report.layer}, {report.seconds:.1f} s)")
    print("sigma per putative target:", np.round(np.asarray(sigma), 2).tolist())
    print("sigma/||mu|| per putative target:", np.round(np.asarray(ratio), 2).tolist())
    # per layer: the p-value calibrated by a parametric bootstrap (the default) beside the uncalibrated order
    # statistic, which falls below 0.05 for about a quarter of clean sets of ten statistics (docs/cepa.md)
    for test in report.tests:
        print(f"  {test['layer']}: most extreme target {test['target']}, p {test['p_value']:.3g} "
              f"(uncalibrated {test['p_value_uncalibrated']:.3g})")
    # the default decision (layer_pooling="auto" -> "joint"): the layers tested together, one target's evidence
    # summed over the layers and calibrated with the layers' correlation (functional.layer_pooling); one test, so
    # no correction for the number of layers
    if report.joint is not None:
        print(f"  joint over {', '.join(report.joint['pooled_layers'])}: target {report.joint['target']}, "
              f"p {report.joint['p_value']:.3g} (decides: {report.settings['resolved_layer_pooling']})")

    x_new = data.x_test[data.y_test != report.target][:200]
    delta = detector.estimate_trigger(x_new, report, max_iter=100)
    asr = float(np.mean(classifier.predict(x_new + delta).argmax(1) == report.target))
    print(f"Eq. 1 perturbations on the clean set: {report.misclassification:.2f} sent to the target; "
          f"Eq. 3 perturbations on {len(x_new)} new images: {asr:.2f}")

    # the planted trigger's own consensus bounds what Eq. 1 can reach for target 0; here Eq. 1 finds a far more
    # consensual perturbation into the backdoor than the warp itself, so target 0 is the most extreme at two of
    # the three layers (whether that is significant is what the calibrated p-value above says)
    x_src = x_clean[y_clean != 0]
    truth = detector.trigger_consensus(x_src, victim.data.trigger(x_src).astype(np.float32))
    for layer, stats in truth.items():
        median = float(np.median(report.statistics[report.variant][layer]["ratio"]))
        print(f"true trigger at {layer}: sigma/||mu|| {stats['ratio']:.2f} (median over putative targets {median:.2f})")
    return {**report.to_dict(), "paper_statistic": paper.to_dict(), "eq3_attack_success_rate": asr,
            "trigger_consensus": truth}


if __name__ == "__main__":
    main(fast="--fast" in sys.argv)
