"""STRIP: per-copy entropy (the paper's axis), detection on a BadNets victim, logits = probabilities, no mutation
of the classifier, determinism and input errors."""

import json

import numpy as np
import pytest
import torch
from art.estimators.classification import PyTorchClassifier
from art.exceptions import EstimatorError
from torch import nn

from art_backdoor_ext.defences import STRIP
from art_backdoor_ext.exceptions import DataError, InvalidParameterError, NotFittedError
from art_backdoor_ext.functional.detection import prediction_entropy, softmax
from art_backdoor_ext.models import make_classifier
from tests.conftest import white_patch


@pytest.fixture(scope="module")
def split(digits):
    """Defender's clean set: 200 test images; evaluation: the other 250 and triggered copies of their non-zeros."""
    x, y = digits.x_test, digits.y_test
    x_eval, y_eval = x[200:], y[200:]
    x_trig = white_patch(x_eval[y_eval != 0])
    return x[:200], x_eval, x_trig


@pytest.fixture(scope="module")
def fitted(badnets_victim, split):
    strip = STRIP(badnets_victim.classifier, n_perturbations=20, random_state=0)
    strip.fit(split[0])
    return strip


def _linear_classifier(softmax_output: bool = False, clip_values=(0.0, 1.0)):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(3)
        layers = [nn.Flatten(), nn.Linear(64, 4)]
    model = nn.Sequential(*layers, nn.Softmax(dim=1)) if softmax_output else nn.Sequential(*layers)
    return make_classifier(model, input_shape=(1, 8, 8), nb_classes=4, clip_values=clip_values, device_type="cpu")


def test_triggered_inputs_have_low_entropy_and_are_flagged(fitted, split):
    _, x_eval, x_trig = split
    clean, trig = fitted.score(x_eval), fitted.score(x_trig)
    assert clean.shape == (250,) and np.all(clean >= 0) and np.all(clean <= np.log2(10))
    assert np.median(trig) < 0.5 * np.median(clean)  # the patch dominates every superimposed copy
    report, is_backdoor = fitted.detect(np.concatenate([x_eval, x_trig]))
    assert is_backdoor.dtype == bool and report["n_flagged"] == int(is_backdoor.sum())
    assert is_backdoor[:250].mean() <= 0.05  # FRR on unseen clean inputs (target 1%, 20 copies, 200 calibration)
    assert is_backdoor[250:].mean() >= 0.9  # measured 1.0 (FAR 0)
    assert report["threshold"] == fitted.threshold and report["higher_is_suspicious"] is False
    json.dumps(report)
    json.dumps(fitted.fit_report_)


@pytest.mark.parametrize("superimposition", ["add", "average"])
def test_entropy_is_per_copy_then_averaged(superimposition):
    """With a pool of identical images every copy is known: the score is the entropy of that copy's prediction,
    not ART's entropy across copies (which would be log2(N) for identical copies)."""
    clf = _linear_classifier()
    pool = np.full((3, 1, 8, 8), 0.3, np.float32)
    x = np.random.default_rng(0).uniform(0, 1, (2, 1, 8, 8)).astype(np.float32)
    strip = STRIP(clf, n_perturbations=5, superimposition=superimposition, alpha=0.25, random_state=0)
    strip.fit(pool)
    copy = np.clip(x + 0.3, 0, 1) if superimposition == "add" else 0.25 * x + 0.75 * 0.3
    logits = clf.model(torch.as_tensor(copy.astype(np.float32))).detach().numpy()
    np.testing.assert_allclose(strip.score(x), prediction_entropy(softmax(logits)), rtol=1e-5)


def test_logits_and_probability_models_score_alike(split):
    x_clean, x_eval, _ = split
    scores = []
    for softmax_output in (False, True):
        strip = STRIP(_linear_classifier(softmax_output), n_perturbations=10, random_state=1)
        strip.fit(x_clean[:50])
        scores.append(strip.score(x_eval[:20]))
    np.testing.assert_allclose(scores[0], scores[1], rtol=1e-4)
    with pytest.raises(DataError, match="not probability vectors"):
        STRIP(_linear_classifier(), output="probabilities").fit(x_clean[:5])


def test_classifier_untouched_and_scores_reproducible(badnets_victim, split):
    clf = badnets_victim.classifier
    x_clean, x_eval, _ = split
    before = clf.predict(x_eval[:10])
    a, b = STRIP(clf, n_perturbations=8, random_state=5), STRIP(clf, n_perturbations=8, random_state=5)
    a.fit(x_clean[:40])
    b.fit(x_clean[:40])
    assert type(clf) is PyTorchClassifier  # ART's STRIP swaps the class; this one does not
    np.testing.assert_array_equal(clf.predict(x_eval[:10]), before)
    np.testing.assert_array_equal(a.score(x_eval[:10]), b.score(x_eval[:10]))
    np.testing.assert_array_equal(a.score(x_eval[:10]), a.score(x_eval[:10]))  # draws fixed at fit
    c = STRIP(clf, n_perturbations=8, random_state=6)
    c.fit(x_clean[:40])
    assert not np.array_equal(a.score(x_eval[:10]), c.score(x_eval[:10]))


def test_input_errors(fitted, split, digits):
    x = split[1][:4]
    with pytest.raises(DataError, match="channels-last"):
        fitted.detect(np.transpose(x, (0, 2, 3, 1)))
    with pytest.raises(DataError, match="float64"):
        fitted.score(x.astype(np.float64))
    with pytest.raises(DataError, match="divide by 255"):
        fitted.score(x * 255)
    with pytest.raises(DataError, match="at least 2 clean inputs"):
        STRIP(fitted.classifier).fit(x[:1])
    with pytest.raises(NotFittedError, match="fit"):
        STRIP(fitted.classifier).detect(x)
    with pytest.raises(InvalidParameterError, match="unknown argument"):
        fitted.detect(x, feature_source="victim")


def test_parameter_errors(badnets_victim):
    clf = badnets_victim.classifier
    with pytest.raises(EstimatorError):
        STRIP(object())
    with pytest.raises(InvalidParameterError, match="n_perturbations must be an int"):
        STRIP(clf, n_perturbations=0)
    with pytest.raises(InvalidParameterError, match="alpha must be a number"):
        STRIP(clf, alpha=1.0)
    with pytest.raises(InvalidParameterError, match="superimposition must be one of"):
        STRIP(clf, superimposition="max")
    with pytest.raises(InvalidParameterError, match="clip_values=None"):
        STRIP(_linear_classifier(clip_values=None))
    STRIP(_linear_classifier(clip_values=None), superimposition="average")  # fine without a range
    with pytest.raises(InvalidParameterError, match="unknown parameter"):
        STRIP(clf).set_params(n_samples=20)
