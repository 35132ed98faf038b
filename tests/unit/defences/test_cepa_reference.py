import logging
import pickle

import numpy as np
import pytest
import torch

from art_backdoor_ext.datasets import sample_per_class
from art_backdoor_ext.defences import CEPA, CEPAReference
from art_backdoor_ext.defences.model.cepa_report import CEPAReport
from art_backdoor_ext.exceptions import DataError, InvalidParameterError
from art_backdoor_ext.models import DigitsCNN, make_classifier

LAYERS = ["conv1", "relu3"]
SETTINGS = {"variant": "all-to-one", "max_iter": 200, "lam": 0.01, "layers": None}


def _report(sigma: np.ndarray, layers=LAYERS, settings=SETTINGS, variant="all-to-one") -> CEPAReport:
    stats = {variant: {layer: {"sigma": sigma[i]} for i, layer in enumerate(layers)}}
    return CEPAReport(detected=False, p_value=1.0, anomaly_index=0.0, target=0, source=None, variant=variant,
                      layer=layers[0], mu=np.zeros(3), misclassification=1.0, statistic="sigma", layers=list(layers),
                      statistics=stats, tests=[], significance=0.05, seconds=0.0, settings=dict(settings))


def _clean_sigmas(rng, n, k=10):
    """sigma per (model, layer, class): class 8 naturally easy to reach (small sigma) in every model."""
    profile = np.r_[np.ones(8), 0.5, 1.0] * np.random.default_rng(99).uniform(0.8, 1.2, (1, len(LAYERS), k))
    return profile * rng.uniform(0.5, 2.0, (n, 1, 1)) * np.exp(rng.normal(0, 0.08, (n, len(LAYERS), k)))


@pytest.fixture(scope="module")
def reference():
    rng = np.random.default_rng(0)
    return CEPAReference.from_reports([_report(s) for s in _clean_sigmas(rng, 8)]), rng


def test_the_natural_outlier_class_is_ordinary_and_a_backdoor_target_is_found(reference):
    ref, rng = reference
    sigma = _clean_sigmas(rng, 1)[0]
    clean = ref.test(_report(sigma))
    assert not clean.detected and clean.p_value > 0.05 and clean.n_references == 8
    attacked = sigma.copy()
    attacked[0, 3] /= 3.0  # target 3 easy to reach at conv1: a consensual backdoor route
    result = ref.test(_report(attacked))
    assert result.detected and result.target == 3 and result.layer == "conv1" and result.p_value < 0.01
    assert result.z["conv1"].shape == (10,) and result.z["conv1"].argmax() == 3
    assert result.to_dict()["target"] == 3


def test_the_report_is_not_mutated(reference):
    ref, rng = reference
    report = _report(_clean_sigmas(rng, 1)[0])
    before = report.statistics["all-to-one"]["conv1"]["sigma"].copy()
    ref.test(report)
    np.testing.assert_array_equal(report.statistics["all-to-one"]["conv1"]["sigma"], before)


def test_save_and_load_round_trip_without_pickle(reference, tmp_path):
    ref, rng = reference
    path = tmp_path / "refs.npz"
    ref.save(path)
    loaded = CEPAReference.load(path)
    np.testing.assert_array_equal(loaded.statistics, ref.statistics)
    assert loaded.layers == ref.layers and loaded.significance == ref.significance
    assert loaded.settings == ref.settings
    report = _report(_clean_sigmas(rng, 1)[0])
    assert loaded.test(report).p_value == ref.test(report).p_value


def test_load_refuses_pickles_and_foreign_files(tmp_path):
    pickled = tmp_path / "evil.npz"
    np.savez(pickled, statistics=np.array([{"a": 1}], dtype=object), meta=np.array("{}"))
    with pytest.raises(DataError, match="not a CEPA reference file"):
        CEPAReference.load(pickled)
    foreign = tmp_path / "other.npz"
    np.savez(foreign, statistics=np.ones((3, 1, 2)), meta=np.array('{"format": "something else"}'))
    with pytest.raises(DataError, match="format"):
        CEPAReference.load(foreign)
    plain = tmp_path / "model.pt"
    plain.write_bytes(pickle.dumps({"weights": 1}))
    with pytest.raises(DataError):
        CEPAReference.load(plain)


def test_mismatched_scans_get_clear_errors(reference, caplog):
    ref, rng = reference
    sigma = _clean_sigmas(rng, 1)[0]
    with pytest.raises(DataError, match="scanned at"):
        ref.test(_report(sigma[:1], layers=["relu1"]))
    with pytest.raises(DataError, match="classes"):
        ref.test(_report(sigma[:, :9]))
    with pytest.raises(DataError, match="all-to-one"):
        ref.test(_report(sigma, variant="pairs"))
    with pytest.raises(InvalidParameterError, match="CEPAReport"):
        ref.test({"statistics": {}})
    with pytest.raises(DataError, match="at least 3"):
        CEPAReference.from_reports([_report(sigma)] * 2)
    with pytest.raises(DataError, match="same layers"):
        CEPAReference.from_reports([_report(sigma)] * 2 + [_report(sigma[:1], layers=["relu1"])])
    with caplog.at_level(logging.WARNING, logger="art_backdoor_ext.defences.model.cepa_reference"):
        ref.test(_report(sigma, settings={**SETTINGS, "max_iter": 50}))
    assert "max_iter" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="art_backdoor_ext.defences.model.cepa_reference"):
        CEPAReference.from_reports([_report(s) for s in _clean_sigmas(rng, 5)])
    assert "little power below 8" in caplog.text


def test_scan_references_scans_each_clean_model_with_the_detector_settings(digits):
    x, y = sample_per_class(digits.x_test, digits.y_test, 3, random_state=0)
    models = []
    for seed in range(4):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            models.append(make_classifier(DigitsCNN(), device_type="cpu"))
    det = CEPA(models[0], variant="all-to-one", max_iter=3, random_state=0)
    ref = CEPAReference.scan_references(det, models[1:], x, y)
    assert ref.n_references == 3 and ref.layers == det._resolved_layers()
    assert ref.settings["max_iter"] == 3 and ref.settings["variant"] == "all-to-one"
    scans = [CEPA(m, **det.get_params()).scan(x, y) for m in models[1:]]
    np.testing.assert_allclose(ref.statistics, CEPAReference.from_reports(scans).statistics)
    assert ref.test(det.scan(x, y)).n_references == 3
    with pytest.raises(InvalidParameterError, match="PyTorchClassifier"):
        CEPAReference.scan_references(det, [models[1], models[2], "not a model"], x, y)
    with pytest.raises(InvalidParameterError, match="CEPA instance"):
        CEPAReference.scan_references("det", models[1:], x, y)
