"""Every public method on a classifier that lives on a given device: CPU always, CUDA when available.

The ``cuda`` cases are marked ``gpu`` and skipped without CUDA (``pytest -m gpu`` runs only them on a GPU
machine). The ``cpu`` cases run the same harness in the default suite, so the checks themselves are exercised
on every run. Checked for each method: it runs with the classifier's model on that device, returns host-side,
JSON-serialisable results with the same structure (keys, array shapes) as the CPU reference, leaves the inputs
and the model's device unchanged; on CPU the result equals the reference exactly (determinism).
"""

from __future__ import annotations

import copy
import json
from typing import Any

import numpy as np
import pytest
import torch

from art_backdoor_ext.attacks import SDRM
from art_backdoor_ext.defences.sample import MBDS
from art_backdoor_ext.ensemble import train_ensemble
from art_backdoor_ext.models import DigitsCNN, make_classifier
from tests.conformance._battery import drop_seconds
from tests.conformance.test_public_classes import CASES as SCANNERS_AND_FILTERS
from tests.conformance.test_survey_classes import CASES as SURVEY
from tests.conftest import white_patch

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)]


def _on(victim, device: str):
    model = copy.deepcopy(victim.classifier.model).cpu()
    return make_classifier(model, device_type="gpu" if device == "cuda" else "cpu")


def _structure(value: Any) -> Any:
    """Keys and shapes of a JSON-like result (values dropped), to compare devices whose numerics differ."""
    if isinstance(value, dict):
        return {k: _structure(v) for k, v in value.items() if k != "seconds"}
    if isinstance(value, (list, tuple)):
        return ("list", len(value))
    return type(value).__name__ if not isinstance(value, (int, float)) else "number"


def _check(device: str, result: Any, reference: Any, clf) -> None:
    json.dumps(result)  # host-side values only (a CUDA tensor or numpy scalar would fail here)
    assert next(clf.model.parameters()).device.type == device, "the classifier's model was moved"
    assert _structure(result) == _structure(reference)
    if device == "cpu":
        assert json.dumps(drop_seconds(result), sort_keys=True) == json.dumps(
            drop_seconds(reference), sort_keys=True)


def _public_cases() -> dict[str, tuple[Any, Any]]:
    """The conformance batteries' cases, all as ``(build(clf, x, y), run(obj, x, y))``."""
    cases = dict(SCANNERS_AND_FILTERS)
    cases.update({name: (lambda clf, x, y, build=build: build(clf), run) for name, (build, run) in SURVEY.items()})
    return cases


CASES = _public_cases()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", list(CASES))
def test_scanners_filters_and_survey_defences(name, device, badnets_victim, small_set):
    build, run = CASES[name]
    x, y = small_set
    x_before = x.copy()
    clf = _on(badnets_victim, device)
    result = run(build(clf, x, y), x, y)
    np.testing.assert_array_equal(x, x_before)
    _check(device, result, run(build(_on(badnets_victim, "cpu"), x, y), x, y), clf)


@pytest.mark.parametrize("device", DEVICES)
def test_cepa_trigger_estimate(device, badnets_victim, small_set):
    from art_backdoor_ext.defences import CEPA

    x, y = small_set
    clf = _on(badnets_victim, device)
    det = CEPA(clf, layers=["relu3"], variant="all-to-one", max_iter=10, random_state=0)
    delta = det.estimate_trigger(x[:5], det.scan(x, y), max_iter=5)
    assert isinstance(delta, np.ndarray) and delta.shape == x[:5].shape and delta.dtype == np.float32
    assert next(clf.model.parameters()).device.type == device


@pytest.mark.parametrize("device", DEVICES)
def test_mbds_trains_its_shadow_models_on_the_classifiers_device(device, badnets_victim, digits):
    clf = _on(badnets_victim, device)
    x, y = digits.x_train[:300], digits.y_train[:300]
    det = MBDS(clf, n_shadow_models=2, shadow_epochs=2, meta_epochs=2, random_state=0)
    det.fit(x, y)
    assert {next(m.parameters()).device.type for m in det.shadow_models} == {device}
    report, flagged = det.detect(digits.x_test[:20])
    json.dumps(report)
    assert isinstance(flagged, np.ndarray) and flagged.dtype == bool and flagged.shape == (20,)
    scores = det.score(digits.x_test[:20], feature_source="victim")
    assert scores.shape == (20,) and np.all((scores >= 0) & (scores <= 1))


@pytest.mark.parametrize("device", DEVICES)
def test_train_ensemble_on_device_matches_the_cpu_run(device, digits):
    x, y = digits.x_train[:64], digits.y_train[:64]
    kw = {"nb_epochs": 1, "batch_size": 16, "learning_rate": 1e-3, "random_state": 0}

    def factory(i: int) -> torch.nn.Module:
        return DigitsCNN()

    on_device = train_ensemble(factory, [(x, y)] * 2, device=device, **kw)
    on_cpu = train_ensemble(factory, [(x, y)] * 2, device="cpu", **kw)
    for a, b in zip(on_device, on_cpu):
        for (name, p), q in zip(a.state_dict().items(), b.state_dict().values()):
            assert p.device.type == "cpu", f"{name} returned on {p.device}"  # models come back on the host
            torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("device", DEVICES)
def test_sdrm_trains_on_the_classifiers_device(device, digits):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = DigitsCNN()
    clf = make_classifier(model, device_type="gpu" if device == "cuda" else "cpu")
    attack = SDRM(clf, perturbation=white_patch, layers=["relu3"], lam=0.3, nb_epochs=1, batch_size=64,
                  random_state=0)
    out = attack.poison_estimator(digits.x_train[:128], digits.y_train[:128])
    assert next(out.model.parameters()).device.type == device
    assert out.predict(digits.x_test[:4]).shape == (4, 10)
