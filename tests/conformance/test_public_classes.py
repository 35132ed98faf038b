"""One battery over every public class: repr, params round trip, unknown params, determinism, no input
mutation, hooks removed and model mode restored."""

from __future__ import annotations

import json

import numpy as np
import pytest

from art_backdoor_ext.defences import (
    CEPA,
    MultiLayerActivationDefence,
    MultiLayerSpectralSignature,
    OrderStatisticDetector,
    PyTorchNeuralCleanse,
)
from tests.conformance._battery import check_params_round_trip, run_in_train_mode


def _scanner(cls, **kw):
    def build(clf, x, y):
        return cls(clf, **kw)

    def run(obj, x, y):
        return obj.scan(x, y).to_dict()

    return build, run


def _filter(cls, **kw):
    def build(clf, x, y):
        return cls(clf, x, y, **kw)

    def run(obj, x, y):
        report, is_clean = obj.detect_poison()
        return {"report": report, "is_clean": list(is_clean)}

    return build, run


CASES = {
    "CEPA": _scanner(CEPA, max_iter=30, layers=["relu2", "relu3"], random_state=0),
    "OrderStatisticDetector": _scanner(OrderStatisticDetector, max_iter=40, step_size=0.02, random_state=0),
    "PyTorchNeuralCleanse": _scanner(PyTorchNeuralCleanse, max_iter=30, random_state=0),
    "MultiLayerActivationDefence": _filter(MultiLayerActivationDefence, layers=["relu2", "relu3"], random_state=0),
    "MultiLayerSpectralSignature": _filter(MultiLayerSpectralSignature, layers=["relu3"]),
}


@pytest.mark.parametrize("name", list(CASES))
def test_conformance(name, badnets_victim, small_set):
    build, run = CASES[name]
    clf = badnets_victim.classifier
    x, y = small_set
    x_before, y_before = x.copy(), y.copy()
    obj = build(clf, x, y)

    check_params_round_trip(obj)
    first = run_in_train_mode(clf.model, lambda: run(obj, x, y))
    np.testing.assert_array_equal(x, x_before)
    np.testing.assert_array_equal(y, y_before)

    second = run(build(clf, x, y), x, y)
    first.pop("seconds", None), second.pop("seconds", None)
    if "report" in first:
        first["report"].pop("seconds", None), second["report"].pop("seconds", None)
    json.dumps(first)
    assert json.dumps(first, sort_keys=True) == json.dumps(second, sort_keys=True), "not deterministic"
