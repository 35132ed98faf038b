"""SDRM: the poisoned training set, Algorithm 1's loss, the effect of the MMD penalty, and input checks."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from art.exceptions import EstimatorError

from art_backdoor_ext._torch import extract_features, predict_logits
from art_backdoor_ext.attacks import SDRM
from art_backdoor_ext.exceptions import DataError, InvalidParameterError
from art_backdoor_ext.functional.mmd import mmd2_numpy
from art_backdoor_ext.models import DigitsCNN, make_classifier
from tests.conftest import white_patch


def _classifier(seed: int = 0):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return make_classifier(DigitsCNN(), device_type="cpu")


@pytest.fixture(scope="module")
def small(digits):
    return digits.x_train[:300], digits.y_train[:300]


def _attack(clf, **kw):
    params = {"perturbation": white_patch, "target": 0, "poison_ratio": 0.1, "layers": ["relu2", "relu3"],
              "lam": 0.3, "nb_epochs": 1, "batch_size": 64, "learning_rate": 3e-3, "random_state": 0}
    params.update(kw)
    return SDRM(clf, **params)


# ---------------------------------------------------------------------------------------------- poison
def test_poison_appends_triggered_relabelled_copies_of_non_target_samples(small):
    x, y = small
    x_before = x.copy()
    attack = _attack(_classifier())
    x_p, y_p = attack.poison(x, y)
    n_u = round(0.1 * len(x))
    assert x_p.shape == (len(x) + n_u,) + x.shape[1:] and x_p.dtype == np.float32
    np.testing.assert_array_equal(x_p[: len(x)], x)
    np.testing.assert_array_equal(y_p[: len(x)], y)
    sources = attack.last_source_indices
    assert len(np.unique(sources)) == n_u and np.all(y[sources] != 0)
    np.testing.assert_array_equal(x_p[len(x):], white_patch(x[sources]))
    assert np.all(y_p[len(x):] == 0)
    np.testing.assert_array_equal(attack.last_is_poison, np.arange(len(x_p)) >= len(x))
    np.testing.assert_array_equal(x, x_before)
    again = _attack(_classifier()).poison(x, y)
    np.testing.assert_array_equal(again[0], x_p)
    other = _attack(_classifier(), random_state=1)
    other.poison(x, y)
    assert not np.array_equal(other.last_source_indices, sources)


# ---------------------------------------------------------------------------------------------- training
def test_first_logged_loss_is_algorithm_1_on_the_initial_model(small):
    """One batch holding all of C = D u U: the logged loss is CE(clean) + CE(poison) + lam * mean MMD^2, which
    is computed here independently from the untouched start model."""
    x, y = small
    clf = _classifier()
    x_c, y_c = _attack(clf).poison(x, y)
    is_poison = np.arange(len(x_c)) >= len(x)
    logits = torch.tensor(predict_logits(clf, x_c), dtype=torch.float64)
    labels = torch.tensor(y_c)
    ce = torch.nn.functional.cross_entropy
    ce_clean = float(ce(logits[~is_poison], labels[~is_poison]))
    ce_poison = float(ce(logits[is_poison], labels[is_poison]))
    features = extract_features(clf, x_c, ["relu2", "relu3"])
    reference = ~is_poison & (y_c == 0)
    penalty = np.mean([mmd2_numpy(features[k][is_poison], features[k][reference]) for k in features])

    attack = _attack(clf, lam=0.7, batch_size=len(x_c), learning_rate=1e-4)
    attack.poison_estimator(x, y)
    log = attack.last_training
    assert log.ce_clean[0] == pytest.approx(ce_clean, rel=1e-4)
    assert log.ce_poison[0] == pytest.approx(ce_poison, rel=1e-4)
    assert log.mmd[0] == pytest.approx(penalty, rel=1e-3)
    assert log.loss[0] == pytest.approx(ce_clean + ce_poison + 0.7 * penalty, rel=1e-4)
    assert (log.variant, log.n_clean, log.n_poison, log.batches_without_mmd) == ("SDRM-A", 300, 30, 0)

    rbt = _attack(clf, lam=0.0, batch_size=len(x_c), learning_rate=1e-4)
    rbt.poison_estimator(x, y)
    assert rbt.last_training.loss[0] == pytest.approx(ce_clean + ce_poison, rel=1e-4)
    assert rbt.last_training.mmd == [None] and rbt.variant == "RBT"


def test_mmd_penalty_reduces_the_difference_at_the_constrained_layer(digits):
    x, y = digits.x_train[:500], digits.y_train[:500]
    measured = {}
    for lam in (0.0, 1.0):
        attack = _attack(_classifier(), layers="relu3", lam=lam, nb_epochs=10)
        poisoned = attack.poison_estimator(x, y)
        x_c, y_c = attack.poison(x, y)
        feats = extract_features(poisoned, x_c, ["relu3"])["relu3"]
        is_poison = attack.last_is_poison
        measured[lam] = mmd2_numpy(feats[is_poison], feats[~is_poison & (y_c == 0)])
        asr = np.mean(predict_logits(poisoned, white_patch(digits.x_test[digits.y_test != 0])).argmax(1) == 0)
        assert asr > 0.9, (lam, asr)
    assert measured[1.0] < 0.2 * measured[0.0], measured


def test_classifier_is_copied_not_trained(small):
    x, y = small
    clf = _classifier()
    before = {k: v.clone() for k, v in clf.model.state_dict().items()}
    clf.model.train()
    poisoned = _attack(clf, nb_epochs=2).poison_estimator(x, y)
    assert poisoned is not clf and poisoned.model is not clf.model
    assert all(torch.equal(before[k], v) for k, v in clf.model.state_dict().items())
    assert clf.model.training
    assert any(not torch.equal(before[k], v) for k, v in poisoned.model.state_dict().items())
    assert type(poisoned) is type(clf) and poisoned.input_shape == clf.input_shape
    assert poisoned.nb_classes == clf.nb_classes and str(poisoned.device) == str(clf.device)


def test_small_batches_skip_the_penalty_and_count_it(small):
    x, y = small
    attack = _attack(_classifier(), batch_size=3, nb_epochs=1)
    attack.poison_estimator(x, y)
    log = attack.last_training
    assert log.batches_without_mmd == 110  # ceil(330 / 3): three samples never hold two poisoned AND two clean 0s
    assert log.mmd == [None] and len(log.loss) == len(log.seconds_per_epoch) == 1


# ---------------------------------------------------------------------------------------------- errors
def test_bad_parameters_get_clear_errors():
    clf = _classifier()
    with pytest.raises(InvalidParameterError, match="unknown layer 'fc9'; the model's layers are: conv1, relu1"):
        _attack(clf, layers=["relu3", "fc9"])
    with pytest.raises(InvalidParameterError, match="target must be a class in 0..9, got 10"):
        _attack(clf, target=10)
    with pytest.raises(InvalidParameterError, match="poison_ratio must be a number in \\(0.0, 1.0\\]"):
        _attack(clf, poison_ratio=0.0)
    with pytest.raises(InvalidParameterError, match="lam must be a number in \\[0.0, inf\\]"):
        _attack(clf, lam=-0.1)
    with pytest.raises(InvalidParameterError, match="kernel must be one of 'gk', 'gmk', 'lk'"):
        _attack(clf, kernel="rbf")
    with pytest.raises(InvalidParameterError, match="the Gaussian kernel takes one sigma"):
        _attack(clf, kernel="gk", sigmas=[1.0, 2.0])
    with pytest.raises(InvalidParameterError, match="sigmas must be one or more positive numbers"):
        _attack(clf, sigmas=[1.0, -2.0])
    with pytest.raises(InvalidParameterError, match="layers has duplicates"):
        _attack(clf, layers=["relu3", "relu3"])
    with pytest.raises(InvalidParameterError, match="perturbation must be a callable"):
        _attack(clf, perturbation="patch")
    with pytest.raises(InvalidParameterError, match="unknown parameter 'epochs'"):
        _attack(clf).set_params(epochs=3)
    with pytest.raises(EstimatorError):
        SDRM(object(), perturbation=white_patch, layers="relu3")
    attack = _attack(clf)
    with pytest.raises(InvalidParameterError, match="nb_epochs must be an int in \\[1, inf\\], got 0"):
        attack.set_params(lam=0.5, nb_epochs=0)
    assert attack.lam == 0.3 and attack.nb_epochs == 1


def test_bad_data_gets_clear_errors(small):
    x, y = small
    attack = _attack(_classifier())
    with pytest.raises(DataError, match="channels-last"):
        attack.poison(np.transpose(x, (0, 2, 3, 1)), y)
    with pytest.raises(DataError, match="float64"):
        attack.poison(x.astype(np.float64), y)
    with pytest.raises(DataError, match="divide by 255"):
        attack.poison(x * 255, y)
    with pytest.raises(DataError, match="one-hot"):
        attack.poison(x, np.eye(10)[y])
    with pytest.raises(DataError, match="299 labels but there are 300 samples"):
        attack.poison_estimator(x, y[:-1])
    with pytest.raises(InvalidParameterError, match="needs the labels y"):
        attack.poison(x)
    with pytest.raises(InvalidParameterError, match="unexpected arguments"):
        attack.poison_estimator(x, y, nb_epochs=3)
