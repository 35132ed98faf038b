"""FeatureSqueezingDetector: L1 distances through ART's squeezers, joint (max) score, threshold at the target FRR,
logits = probabilities, and errors."""

import json

import numpy as np
import pytest
import torch
from art.defences.preprocessor import FeatureSqueezing, SpatialSmoothing
from art.exceptions import EstimatorError
from torch import nn

from art_backdoor_ext.defences import FeatureSqueezingDetector
from art_backdoor_ext.exceptions import DataError, InvalidParameterError, NotFittedError
from art_backdoor_ext.functional.detection import softmax
from art_backdoor_ext.models import make_classifier


class MidGrey(nn.Module):
    """Two classes; the class-1 logit grows with the share of mid-grey pixels (4 x (1 - x) is 1 at 0.5, 0 at 0/1)."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(10.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        grey = (4 * x * (1 - x)).flatten(1).mean(1, keepdim=True)
        return torch.cat([torch.zeros_like(grey), self.scale * (grey - 0.25)], dim=1)


def _classifier(model=None, clip_values=(0.0, 1.0)):
    return make_classifier(model or MidGrey(), input_shape=(1, 8, 8), nb_classes=2, clip_values=clip_values,
                           device_type="cpu")


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(0)
    binary = (rng.uniform(size=(40, 1, 8, 8)) > 0.5).astype(np.float32)
    grey = np.clip(binary * 0.2 + 0.4 + rng.uniform(-0.05, 0.05, binary.shape), 0, 1).astype(np.float32)
    return binary, grey


def test_flags_inputs_whose_prediction_moves_when_squeezed(images):
    binary, grey = images
    fs = FeatureSqueezingDetector(_classifier(), target_frr=0.05)
    fs.fit(binary[:30])
    assert fs.threshold == pytest.approx(0.0)  # squeezing leaves binary images (and their predictions) unchanged
    report, is_backdoor = fs.detect(np.concatenate([binary[30:], grey]))
    assert not is_backdoor[:10].any() and is_backdoor[10:].all()
    assert report["squeezers"] == ["bit-depth-1", "median-2x2"] and report["higher_is_suspicious"] is True
    json.dumps(report)


def test_distances_use_arts_squeezers_and_score_is_their_max(badnets_victim, digits):
    clf = badnets_victim.classifier
    x = digits.x_test[:30]
    fs = FeatureSqueezingDetector(clf, bit_depths=(1, 4), median_sizes=(2, 3))
    d = fs.distances(x)
    assert list(d) == ["bit-depth-1", "bit-depth-4", "median-2x2", "median-3x3"]
    p = softmax(clf.predict(x))
    squeezed = FeatureSqueezing(clip_values=(0.0, 1.0), bit_depth=4)(x)[0].astype(np.float32)
    np.testing.assert_allclose(d["bit-depth-4"], np.abs(p - softmax(clf.predict(squeezed))).sum(1), atol=1e-5)
    smoothed = SpatialSmoothing(window_size=3, channels_first=True, clip_values=(0.0, 1.0))(x)[0]
    np.testing.assert_allclose(d["median-3x3"], np.abs(p - softmax(clf.predict(smoothed))).sum(1), atol=1e-5)
    assert all(np.all((v >= 0) & (v <= 2 + 1e-9)) for v in d.values())
    fs.fit(digits.x_test[30:130])
    np.testing.assert_allclose(fs.score(x), np.max(np.stack(list(d.values())), axis=0))
    assert fs.fit_report_["calibration_frr"] <= 0.05


def test_conformal_threshold_takes_the_rank_that_bounds_the_expected_frr(badnets_victim, digits):
    x = digits.x_test[:49]
    conformal = FeatureSqueezingDetector(badnets_victim.classifier, target_frr=0.05, threshold_method="conformal")
    conformal.fit(x)
    quantile = FeatureSqueezingDetector(badnets_victim.classifier, target_frr=0.05)
    quantile.fit(x)
    scores = np.sort(conformal.score(x))
    assert len(np.unique(scores[-4:])) == 4  # distinct top scores, so the ranks are told apart
    assert conformal.threshold == pytest.approx(scores[-2])  # floor(50 * 0.05) = 2nd highest: expected FRR 2 / 50
    assert quantile.threshold == pytest.approx(scores[-3])  # at most 5% of the 49 flagged: the 3rd highest


def test_logits_and_probability_models_agree(images):
    binary, grey = images
    scores = []
    for model in (MidGrey(), nn.Sequential(MidGrey(), nn.Softmax(dim=1))):
        fs = FeatureSqueezingDetector(_classifier(model))
        fs.fit(binary)
        scores.append(fs.score(grey))
    np.testing.assert_allclose(scores[0], scores[1], atol=1e-6)
    with pytest.raises(DataError, match="not probability vectors"):
        FeatureSqueezingDetector(_classifier(), output="probabilities").fit(binary)


def test_errors(images):
    binary, _ = images
    clf = _classifier()
    with pytest.raises(EstimatorError):
        FeatureSqueezingDetector(object())
    with pytest.raises(InvalidParameterError, match="at least one squeezer"):
        FeatureSqueezingDetector(clf, bit_depths=(), median_sizes=())
    with pytest.raises(InvalidParameterError, match=r"every entry of bit_depths must be an int in \[1, 16\]"):
        FeatureSqueezingDetector(clf, bit_depths=(0, 5))
    with pytest.raises(InvalidParameterError, match="every entry of median_sizes"):
        FeatureSqueezingDetector(clf, median_sizes=(1,))
    with pytest.raises(InvalidParameterError, match="median_sizes must be a tuple of ints"):
        FeatureSqueezingDetector(clf, median_sizes=2)
    with pytest.raises(InvalidParameterError, match="clip_values=None"):
        FeatureSqueezingDetector(_classifier(clip_values=None))
    FeatureSqueezingDetector(_classifier(clip_values=None), bit_depths=())  # median smoothing needs no range
    with pytest.raises(InvalidParameterError, match="target_frr"):
        FeatureSqueezingDetector(clf, target_frr=0.0)
    fs = FeatureSqueezingDetector(clf)
    with pytest.raises(NotFittedError):
        fs.detect(binary)
    with pytest.raises(DataError, match="channels-last"):
        fs.fit(np.transpose(binary, (0, 2, 3, 1)))
    with pytest.raises(DataError, match="float64"):
        fs.fit(binary.astype(np.float64))
    with pytest.raises(DataError, match="clip_values"):
        fs.fit(binary + 2)
