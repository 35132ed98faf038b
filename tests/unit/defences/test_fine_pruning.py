"""FinePruning: lowest-activation channels of the last conv pruned within the accuracy budget, pruned channels
kept at zero through fine-tuning, backdoor weakened, the given classifier untouched, and errors."""

import json

import numpy as np
import pytest
import torch
from art.exceptions import EstimatorError
from torch import nn

from art_backdoor_ext.defences import FinePruning
from art_backdoor_ext.exceptions import DataError, InvalidParameterError
from art_backdoor_ext.models import DigitsCNN, make_classifier
from art_backdoor_ext.training import evaluate_attack
from tests.conftest import white_patch


@pytest.fixture(scope="module")
def split(digits):
    return (digits.x_test[:225], digits.y_test[:225]), (digits.x_test[225:], digits.y_test[225:])


@pytest.fixture(scope="module")
def repaired(badnets_victim, split):
    (x, y), _ = split
    fp = FinePruning(badnets_victim.classifier, fine_tune_epochs=10, learning_rate=1e-2, random_state=0)
    return fp, fp(x, y)


def _state(clf):
    return {k: v.detach().clone() for k, v in clf.model.state_dict().items()}


def test_prunes_the_least_active_channels_within_the_budget(repaired):
    fp, out = repaired
    r = fp.report_
    assert (r.layer, r.activation_layer, r.n_channels) == ("conv2", "relu2", 32)
    assert 0 < r.n_pruned < 32
    order = np.argsort(r.mean_activations, kind="stable")
    assert r.pruned_channels == order[: r.n_pruned].tolist()
    assert r.accuracy_before - r.accuracy_pruned <= r.max_accuracy_drop
    assert r.pruning_curve[0] == r.accuracy_before and r.pruning_curve[r.n_pruned] == r.accuracy_pruned
    if len(r.pruning_curve) > r.n_pruned + 1:  # stopped by the budget: the next step exceeded it
        assert r.accuracy_before - r.pruning_curve[r.n_pruned + 1] > r.max_accuracy_drop
    json.dumps(r.to_dict())


def test_pruned_channels_stay_zero_and_fine_tuning_changes_the_rest(repaired, badnets_victim):
    fp, out = repaired
    pruned = fp.report_.pruned_channels
    for clf in (fp.pruned_classifier_, out):
        conv = clf.model.conv2
        assert torch.all(conv.weight[pruned] == 0) and torch.all(conv.bias[pruned] == 0)
        assert not hasattr(conv, "weight_orig") and not conv._forward_pre_hooks  # masks made permanent
    kept = [c for c in range(32) if c not in pruned]
    assert not torch.equal(out.model.conv2.weight[kept], fp.pruned_classifier_.model.conv2.weight[kept])
    assert out is not badnets_victim.classifier and out.model is not badnets_victim.classifier.model


def test_weakens_the_backdoor_and_keeps_accuracy(repaired, badnets_victim, split):
    fp, out = repaired
    _, (x_eval, y_eval) = split
    ba0, asr0 = evaluate_attack(badnets_victim.classifier, x_eval, y_eval, white_patch, target=0)
    ba1, asr1 = evaluate_attack(out, x_eval, y_eval, white_patch, target=0)
    assert asr0 > 0.95 and asr1 < asr0 - 0.3  # measured: 1.00 -> 0.37
    assert ba1 >= ba0 - 0.05


def test_classifier_untouched_and_deterministic(badnets_victim, split):
    (x, y), _ = split
    clf = badnets_victim.classifier
    before = _state(clf)
    clf.model.train()
    try:
        runs = [FinePruning(clf, fine_tune_epochs=1, random_state=3)(x[:80], y[:80]) for _ in range(2)]
        assert clf.model.training
    finally:
        clf.model.eval()
    after = _state(clf)
    assert all(torch.equal(before[k], after[k]) for k in before)
    a, b = (_state(r) for r in runs)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_batchnorm_channels_are_pruned_too(digits):
    class ConvBN(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.bn, self.act = nn.Conv2d(1, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU()
            self.head = nn.Sequential(nn.Flatten(), nn.Linear(6 * 64, 10))

        def forward(self, x):
            return self.head(self.act(self.bn(self.conv(x))))

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        clf = make_classifier(ConvBN(), input_shape=(1, 8, 8), nb_classes=10, device_type="cpu")
    fp = FinePruning(clf, max_accuracy_drop=1.0, fine_tune_epochs=1, random_state=0)
    out = fp(digits.x_test[:60], digits.y_test[:60])
    assert fp.report_.n_pruned == 5  # an unlimited budget prunes every channel but one
    pruned = fp.report_.pruned_channels
    assert torch.all(out.model.bn.weight[pruned] == 0) and torch.all(out.model.bn.bias[pruned] == 0)
    out.model.eval()
    with torch.no_grad():
        act = out.model.act(out.model.bn(out.model.conv(torch.as_tensor(digits.x_test[:5]))))
    assert torch.all(act[:, pruned] == 0)


def test_zero_epochs_and_transformed_classifier(badnets_victim, split, fresh_classifier):
    (x, y), _ = split
    fp = FinePruning(badnets_victim.classifier, fine_tune_epochs=0, max_accuracy_drop=0.0)
    out = fp(x[:60], y[:60], transformed_classifier=fresh_classifier)
    assert out is fresh_classifier
    assert fp.report_.accuracy_fine_tuned == fp.report_.accuracy_pruned
    assert fp.report_.accuracy_pruned >= fp.report_.accuracy_before  # a zero budget allows no accuracy loss
    with pytest.raises(InvalidParameterError, match="must not be the classifier being defended"):
        fp(x[:60], y[:60], transformed_classifier=badnets_victim.classifier)
    wide = make_classifier(DigitsCNN(width=8), device_type="cpu")
    with pytest.raises(InvalidParameterError, match="share the classifier's architecture"):
        fp(x[:60], y[:60], transformed_classifier=wide)


def test_errors(badnets_victim, split):
    (x, y), _ = split
    clf = badnets_victim.classifier
    with pytest.raises(EstimatorError):
        FinePruning(object())
    with pytest.raises(InvalidParameterError, match="'relu3' is a ReLU, not a convolution; .*conv1, conv2"):
        FinePruning(clf, layer="relu3")
    with pytest.raises(InvalidParameterError, match="unknown layer 'conv9'"):
        FinePruning(clf, layer="conv9")
    mlp = make_classifier(nn.Sequential(nn.Flatten(), nn.Linear(64, 10)), input_shape=(1, 8, 8), nb_classes=10,
                          device_type="cpu")
    with pytest.raises(InvalidParameterError, match="no nn.Conv2d"):
        FinePruning(mlp)
    with pytest.raises(InvalidParameterError, match="max_accuracy_drop"):
        FinePruning(clf, max_accuracy_drop=1.5)
    fp = FinePruning(clf, fine_tune_epochs=0)
    assert FinePruning(clf, layer="conv1")._resolve_layer(clf.model) == ("conv1", "relu1")
    with pytest.raises(DataError, match="one-hot"):
        fp(x[:20], np.eye(10)[y[:20]])
    with pytest.raises(DataError, match="channels-last"):
        fp(np.transpose(x[:20], (0, 2, 3, 1)), y[:20])
    with pytest.raises(DataError, match="float64"):
        fp(x[:20].astype(np.float64), y[:20])
    with pytest.raises(NotImplementedError, match="call the instance"):
        fp.fit(x, y)
