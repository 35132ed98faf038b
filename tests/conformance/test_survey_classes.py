"""The conformance battery for the survey's defences (STRIP, FeatureSqueezingDetector, FinePruning) and the
ClassResidualDetector baseline: repr, params round trip, unknown params, determinism under random_state, no input
mutation, the classifier neither mutated nor re-classed, hooks removed and the model's mode restored."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from art.estimators.classification import PyTorchClassifier

from art_backdoor_ext.defences import STRIP, ClassResidualDetector, FeatureSqueezingDetector, FinePruning
from tests.conformance._battery import check_params_round_trip, drop_seconds, run_in_train_mode


def _detector(cls, labelled=False, **kw):
    def run(obj, x, y):
        if labelled:
            obj.fit(x, y)
        else:
            obj.fit(x)
        report, is_backdoor = obj.detect(x[::2])
        return {"report": report, "is_backdoor": is_backdoor.tolist(), "fit": obj.fit_report_}

    return lambda clf: cls(clf, **kw), run


def _transformer(cls, **kw):
    def run(obj, x, y):
        out = obj(x, y)
        weights = {k: v.tolist() for k, v in out.model.state_dict().items()}
        return {"report": obj.report_.to_dict(), "weights": weights}

    return lambda clf: cls(clf, **kw), run


CASES = {
    "STRIP": _detector(STRIP, n_perturbations=6, random_state=0),
    "FeatureSqueezingDetector": _detector(FeatureSqueezingDetector, bit_depths=(2,), median_sizes=(2, 3)),
    "ClassResidualDetector": _detector(ClassResidualDetector, labelled=True, random_state=0),
    "FinePruning": _transformer(FinePruning, fine_tune_epochs=1, random_state=0),
}


@pytest.mark.parametrize("name", list(CASES))
def test_survey_conformance(name, badnets_victim, small_set):
    build, run = CASES[name]
    clf = badnets_victim.classifier
    x, y = small_set
    x_before, y_before = x.copy(), y.copy()
    weights_before = {k: v.clone() for k, v in clf.model.state_dict().items()}
    obj = build(clf)

    assert repr(obj).startswith(type(obj).__name__ + "(") and "classifier" not in repr(obj)
    check_params_round_trip(obj)
    first = run_in_train_mode(clf.model, lambda: run(obj, x, y))
    assert type(clf) is PyTorchClassifier, "the classifier's class was changed"
    assert all(torch.equal(weights_before[k], v) for k, v in clf.model.state_dict().items()), "classifier mutated"
    np.testing.assert_array_equal(x, x_before)
    np.testing.assert_array_equal(y, y_before)

    second = run(build(clf), x, y)
    json.dumps(first)
    assert json.dumps(drop_seconds(first), sort_keys=True) == json.dumps(drop_seconds(second), sort_keys=True), \
        "not deterministic"
