import numpy as np
import pytest
import torch

from art_backdoor_ext.exceptions import DataError, EstimatorError, InvalidParameterError
from art_backdoor_ext.training import evaluate_attack, fit_classifier, poison_dataset
from tests.conftest import white_patch


def _small(digits, n=200):
    return digits.x_train[:n], digits.y_train[:n]


def test_all_to_one_poisons_exact_count_from_non_targets(digits):
    x, y = _small(digits)
    x_before, y_before = x.copy(), y.copy()
    p = poison_dataset(x, y, white_patch, target=3, count=20, nb_classes=10, random_state=0)
    assert p.is_poison.sum() == 20 and np.all(p.y[p.is_poison] == 3)
    assert np.all(p.original_labels[p.is_poison] != 3)
    assert np.all(p.x[p.is_poison][..., -2:, -2:] == 1.0)
    np.testing.assert_array_equal(p.x[~p.is_poison], x[~p.is_poison])
    np.testing.assert_array_equal(x, x_before)
    np.testing.assert_array_equal(y, y_before)
    again = poison_dataset(x, y, white_patch, target=3, count=20, nb_classes=10, random_state=0)
    np.testing.assert_array_equal(again.poison_indices, p.poison_indices)


def test_one_to_one_and_multi_source(digits):
    x, y = _small(digits)
    p = poison_dataset(x, y, white_patch, target=0, mode="one-to-one", sources=[7], rate=0.05, nb_classes=10)
    assert set(p.original_labels[p.is_poison]) == {7} and p.sources == [7]
    m = poison_dataset(x, y, white_patch, target=0, mode="multi-source", sources=[1, 2], count=10, nb_classes=10)
    assert set(m.original_labels[m.is_poison]) <= {1, 2}


def test_poison_errors(digits):
    x, y = _small(digits)
    with pytest.raises(InvalidParameterError, match="mode must be one of"):
        poison_dataset(x, y, white_patch, mode="two-to-one")
    with pytest.raises(InvalidParameterError, match="exactly one source"):
        poison_dataset(x, y, white_patch, mode="one-to-one", sources=[1, 2])
    with pytest.raises(InvalidParameterError, match="other than the target"):
        poison_dataset(x, y, white_patch, target=1, mode="multi-source", sources=[1, 2])
    with pytest.raises(DataError, match="cannot poison 500"):
        poison_dataset(x, y, white_patch, count=500)
    with pytest.raises(DataError, match="one-hot"):
        poison_dataset(x, np.eye(10)[y], white_patch)


def test_fit_is_deterministic_and_restores_mode(digits, fresh_classifier):
    from art_backdoor_ext.models import DigitsCNN, make_classifier

    x, y = _small(digits, 120)
    fresh_classifier.model.eval()
    state = torch.random.get_rng_state()
    losses = fit_classifier(fresh_classifier, x, y, nb_epochs=3, random_state=5)
    assert not fresh_classifier.model.training and torch.equal(state, torch.random.get_rng_state())
    assert losses[-1] < losses[0]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)
        twin = make_classifier(DigitsCNN(), device_type="cpu")
    fit_classifier(twin, x, y, nb_epochs=3, random_state=5)
    assert torch.allclose(twin.model.fc1.weight, fresh_classifier.model.fc1.weight)
    with pytest.raises(EstimatorError):
        fit_classifier(object(), x, y)
    with pytest.raises(DataError, match="channels-first"):
        fit_classifier(fresh_classifier, np.transpose(x, (0, 2, 3, 1)), y)


def test_victim_learns_backdoor(badnets_victim, digits):
    v = badnets_victim
    assert v.benign_accuracy > 0.85 and v.attack_success_rate > 0.9
    ba, asr = evaluate_attack(v.classifier, digits.x_test, digits.y_test, lambda x: x.copy(), target=0)
    assert asr < 0.3  # without the trigger, non-target test images are not sent to the target
    d = v.to_dict()
    assert d["n_poison"] == v.data.is_poison.sum() and d["target"] == 0
