"""The conformance battery for SDRM and SubspaceReconstruction: repr, params round trip, unknown params,
determinism under random_state, no input mutation, the classifier untouched, hooks removed, mode restored."""

from __future__ import annotations

import json

import numpy as np
import torch

from art_backdoor_ext.attacks import SDRM
from art_backdoor_ext.datasets import sample_per_class
from art_backdoor_ext.defences import SubspaceReconstruction
from art_backdoor_ext.models import DigitsCNN, make_classifier
from tests.conformance._battery import check_params_round_trip, hook_count, run_in_train_mode
from tests.conftest import white_patch


def _state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_sdrm_conformance(digits):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        clf = make_classifier(DigitsCNN(), device_type="cpu")
    x, y = digits.x_train[:200], digits.y_train[:200]
    x_before, y_before = x.copy(), y.copy()

    def build() -> SDRM:
        return SDRM(clf, perturbation=white_patch, layers=["relu1", "relu3"], lam=0.3, nb_epochs=2, batch_size=64,
                    random_state=3)

    attack = build()
    check_params_round_trip(attack)
    model = clf.model
    weights = _state(model)
    first = run_in_train_mode(model, lambda: attack.poison_estimator(x, y))
    assert hook_count(first.model) == hook_count(model) == 0, "hooks left behind"
    assert all(torch.equal(weights[k], v) for k, v in model.state_dict().items()), "classifier was trained"
    np.testing.assert_array_equal(x, x_before)
    np.testing.assert_array_equal(y, y_before)

    second_attack = build()
    second = second_attack.poison_estimator(x, y)
    assert all(torch.equal(a, b) for a, b in zip(first.model.state_dict().values(),
                                                 second.model.state_dict().values())), "not deterministic"
    logs = [a.last_training.to_dict() for a in (attack, second_attack)]
    for log in logs:
        log.pop("seconds_per_epoch")
    assert json.dumps(logs[0], sort_keys=True) == json.dumps(logs[1], sort_keys=True)


def test_subspace_reconstruction_conformance(badnets_victim, digits):
    clf = badnets_victim.classifier
    x, y = sample_per_class(badnets_victim.data.x, badnets_victim.data.y, 6, random_state=0)
    x_ref, y_ref = sample_per_class(digits.x_test, digits.y_test, 4, random_state=0)
    arrays = [a.copy() for a in (x, y, x_ref, y_ref)]

    def build() -> SubspaceReconstruction:
        return SubspaceReconstruction(clf, x, y, x_clean=x_ref, y_clean=y_ref, layers=["relu2", "relu3"])

    defence = build()
    check_params_round_trip(defence)
    report, is_clean = run_in_train_mode(clf.model, defence.detect_poison)
    for before, after in zip(arrays, (x, y, x_ref, y_ref)):
        np.testing.assert_array_equal(before, after)
    again = build().detect_poison()
    assert json.dumps({"r": report, "c": list(is_clean)}, sort_keys=True) == json.dumps(
        {"r": again[0], "c": list(again[1])}, sort_keys=True), "not deterministic"
    assert json.loads(defence.evaluate_defence(np.ones(len(x), dtype=int)))["class_0"]
