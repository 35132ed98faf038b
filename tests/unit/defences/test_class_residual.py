"""ClassResidualDetector: triggered inputs of a BadNets victim flagged, clean ones kept near the target FRR; the
threshold is the conformal rank of the calibration part's scores; the penultimate layer; determinism, no mutation,
and the input errors."""

import json

import numpy as np
import pytest
import torch
from art.exceptions import EstimatorError
from torch import nn

from art_backdoor_ext.defences import ClassResidualDetector
from art_backdoor_ext.defences.activation import penultimate_layer
from art_backdoor_ext.exceptions import DataError, InvalidParameterError, NotFittedError
from art_backdoor_ext.functional.detection import conformal_rank
from art_backdoor_ext.models import BadNetsCNN, DigitsCNN, make_classifier
from tests.conftest import white_patch


@pytest.fixture(scope="module")
def split(digits):
    """Reserve: the first 250 test images (labelled); evaluation: the other 200 and triggered copies of non-zeros."""
    x, y = digits.x_test, digits.y_test
    x_eval, y_eval = x[250:], y[250:]
    return (x[:250], y[:250]), x_eval, white_patch(x_eval[y_eval != 0])


@pytest.fixture(scope="module")
def fitted(badnets_victim, split):
    det = ClassResidualDetector(badnets_victim.classifier, random_state=0)
    det.fit(*split[0])
    return det


def test_triggered_inputs_are_flagged_and_clean_ones_kept(fitted, split):
    _, x_eval, x_trig = split
    report, is_backdoor = fitted.detect(np.concatenate([x_eval, x_trig]))
    n = len(x_eval)
    assert is_backdoor.dtype == bool and report["n_flagged"] == int(is_backdoor.sum())
    # target: 5% expected FRR from 99 calibration images (90% of fits 0.02-0.09); measured 0.05-0.125 over
    # random_state 0-4 on these 200 images
    assert is_backdoor[:n].mean() <= 0.15
    assert is_backdoor[n:].mean() >= 0.8  # measured 1.0: patched images go to 0, far from 0's clean features
    scores = np.asarray(report["scores"])
    assert np.median(scores[n:]) > 5 * np.median(scores[:n])
    assert fitted.fit_report_["layer"] == "relu3" and fitted.fit_report_["n_features"] == 64
    json.dumps(report)
    json.dumps(fitted.fit_report_)


def test_threshold_is_the_conformal_rank_of_the_calibration_part(fitted, split):
    (xr, yr), _, _ = split
    stats, cal = fitted._split(yr)  # the split is redrawn from random_state=0
    assert len(np.intersect1d(stats, cal)) == 0 and len(stats) + len(cal) == len(yr)
    assert fitted.fit_report_["reserve_split"] == {"statistics": len(stats), "calibration": len(cal)}
    cal_scores = np.sort(fitted.score(xr[cal]))[::-1]
    rank = conformal_rank(len(cal), 0.05)
    assert fitted.threshold == pytest.approx(cal_scores[rank - 1])
    assert fitted.fit_report_["calibration_frr"]["rank"] == rank


def test_an_untrained_model_separates_nothing(fresh_classifier, split):
    """The score needs the backdoor to pull triggered inputs to the target: without it, no excess of flags."""
    (xr, yr), x_eval, x_trig = split
    det = ClassResidualDetector(fresh_classifier, random_state=0)
    det.fit(xr, yr)
    assert det.fit_report_["classes_with_all_samples"]  # an untrained model gets whole classes wrong
    flagged = det.detect(np.concatenate([x_eval, x_trig]))[1]
    assert flagged[len(x_eval):].mean() < 0.5


def test_default_layer_is_the_penultimate_one():
    """The layer before the logits: relu3 in both reference CNNs, the flatten of a linear model."""
    assert penultimate_layer(DigitsCNN()) == "relu3" and penultimate_layer(BadNetsCNN()) == "relu3"
    flat = make_classifier(nn.Sequential(nn.Flatten(), nn.Linear(64, 10)), input_shape=(1, 8, 8), nb_classes=10,
                           device_type="cpu")
    assert ClassResidualDetector(flat)._resolve_layer() == "0"
    conv_only = make_classifier(nn.Sequential(nn.Conv2d(1, 10, 8), nn.Flatten()), input_shape=(1, 8, 8),
                                nb_classes=10, device_type="cpu")
    with pytest.raises(InvalidParameterError, match="no nn.Linear"):
        ClassResidualDetector(conv_only).fit(np.zeros((30, 1, 8, 8), np.float32), np.arange(30) % 10)


def test_deterministic_and_input_not_mutated(badnets_victim, split):
    (xr, yr), x_eval, _ = split
    xr_before, yr_before = xr.copy(), yr.copy()
    state = {k: v.clone() for k, v in badnets_victim.classifier.model.state_dict().items()}
    a = ClassResidualDetector(badnets_victim.classifier, random_state=3)
    b = ClassResidualDetector(badnets_victim.classifier, random_state=3)
    a.fit(xr, yr)
    b.fit(xr, yr)
    assert a.threshold == b.threshold
    np.testing.assert_array_equal(a.score(x_eval), b.score(x_eval))
    np.testing.assert_array_equal(xr, xr_before)
    np.testing.assert_array_equal(yr, yr_before)
    assert all(torch.equal(v, badnets_victim.classifier.model.state_dict()[k]) for k, v in state.items())


def test_one_hot_labels_and_another_layer(badnets_victim, split):
    (xr, yr), x_eval, _ = split
    det = ClassResidualDetector(badnets_victim.classifier, layer="pool", random_state=0)
    det.fit(xr, np.eye(10, dtype=np.float32)[yr])
    assert det.fit_report_["layer"] == "pool" and det.fit_report_["n_features"] == 32 * 4 * 4
    assert det.score(x_eval).shape == (len(x_eval),)


def test_errors(badnets_victim, split, fitted):
    (xr, yr), x_eval, _ = split
    clf = badnets_victim.classifier
    with pytest.raises(NotFittedError, match="not fitted"):
        ClassResidualDetector(clf).score(x_eval)
    with pytest.raises(InvalidParameterError, match="unknown layer 'nope'.*conv1, relu1"):
        ClassResidualDetector(clf, layer="nope").fit(xr, yr)
    with pytest.raises(DataError, match="class 3 has 0 reserve samples"):
        ClassResidualDetector(clf).fit(xr[yr != 3], yr[yr != 3])
    with pytest.raises(DataError, match="channels-last"):
        fitted.score(np.transpose(x_eval, (0, 2, 3, 1)))
    with pytest.raises(DataError, match="float64"):
        fitted.score(x_eval.astype(np.float64))
    with pytest.raises(DataError, match="clip_values"):
        fitted.score(x_eval * 3.0)
    with pytest.raises(DataError, match="needs the reserve's labels"):
        ClassResidualDetector(clf).fit(xr)
    with pytest.raises(DataError, match="labels in"):
        ClassResidualDetector(clf).fit(xr, yr + 1)
    with pytest.raises(InvalidParameterError, match="calibration_fraction"):
        ClassResidualDetector(clf, calibration_fraction=1.5)
    with pytest.raises(InvalidParameterError, match="unknown argument"):
        fitted.detect(x_eval, feature_source="victim")
    with pytest.raises((EstimatorError, InvalidParameterError, TypeError)):
        ClassResidualDetector(object())


def test_fit_statistics_scores_like_fit_on_the_same_statistics_part_and_has_no_threshold(fitted, split,
                                                                                        badnets_victim,
                                                                                        fresh_classifier):
    (xr, yr), x_eval, _ = split
    stats, _ = fitted._split(yr)
    det = ClassResidualDetector(badnets_victim.classifier)
    assert det.fit_statistics(xr[stats], yr[stats]) == []  # no class needed all its samples
    np.testing.assert_allclose(det.score(x_eval), fitted.score(x_eval))
    untrained = ClassResidualDetector(fresh_classifier)
    assert len(untrained.fit_statistics(xr[stats], yr[stats])) > 0  # an untrained model gets classes wrong
    with pytest.raises(NotFittedError, match="no threshold"):
        det.detect(x_eval)
    with pytest.raises(NotFittedError, match="no threshold"):
        _ = det.threshold
    restored = ClassResidualDetector.from_statistics(badnets_victim.classifier, "relu3", fitted._means,
                                                     fitted._scale)
    np.testing.assert_array_equal(restored.score(x_eval), fitted.score(x_eval))
    with pytest.raises(DataError, match="do not fit"):
        ClassResidualDetector.from_statistics(badnets_victim.classifier, "relu3", fitted._means[:3], fitted._scale)
