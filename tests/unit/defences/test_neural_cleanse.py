"""PyTorchNeuralCleanse: detection on an all-to-one patch victim, batching faithfulness, hygiene, validation."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from art_backdoor_ext.datasets import load_digits, sample_per_class
from art_backdoor_ext.defences.model.neural_cleanse import NeuralCleanseReport, PyTorchNeuralCleanse
from art_backdoor_ext.defences.model.perturbation import EngineResult, MaskPattern
from art_backdoor_ext.exceptions import DataError, EstimatorError, InvalidParameterError
from art_backdoor_ext.models import DigitsCNN, make_classifier
from art_backdoor_ext.training import train_victim

# Small enough for a fast test, long enough for target 0's mask to stand out (indices ~4-9 over seeds).
FAST = {"max_iter": 50, "max_samples_per_target": 30, "random_state": 0}


def white_patch(x: np.ndarray) -> np.ndarray:
    out = x.copy()
    out[..., -2:, -2:] = 1.0
    return out


@pytest.fixture(scope="module")
def victim():
    """DigitsCNN with a 2x2 white bottom-right patch backdoor, all-to-one, target 0, and 10 clean per class."""
    data = load_digits()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        classifier = make_classifier(DigitsCNN(), device_type="cpu")
    result = train_victim(classifier, data.x_train, data.y_train, data.x_test, data.y_test, white_patch,
                          target=0, rate=0.1, nb_epochs=12, learning_rate=3e-3, random_state=0)
    assert result.attack_success_rate > 0.9
    x, y = sample_per_class(data.x_test, data.y_test, 10, random_state=0)
    return classifier, x, y


@pytest.fixture(scope="module")
def report(victim):
    classifier, x, y = victim
    return PyTorchNeuralCleanse(classifier, **FAST).scan(x, y)


# ---------------------------------------------------------------------------------------------- detection
def test_flags_the_patch_target(report):
    assert isinstance(report, NeuralCleanseReport)
    assert report.detected
    assert report.target == 0
    assert report.flagged[0] == 0
    assert report.anomaly_index[0] > 2.0
    assert report.statistics.shape == (10,) and report.anomaly_index.shape == (10,)
    assert np.argmin(report.statistics) == 0
    assert report.reached.all()
    assert np.all(report.misclassification >= 0.8)
    assert report.p_value is None and report.source is None


def test_estimated_mask_sits_on_the_trigger(report):
    assert report.estimated_pattern.shape == (2, 8, 8)  # mask + 1-channel pattern
    mask = report.estimated_pattern[0]
    corner = np.zeros((8, 8), dtype=bool)
    corner[-2:, -2:] = True
    assert mask[corner].mean() > 2 * mask[~corner].mean()
    assert np.all((report.estimated_pattern >= 0) & (report.estimated_pattern <= 1))


def test_report_json_round_trip(report):
    d = report.to_dict()
    back = json.loads(json.dumps(d))
    assert back == d
    assert back["target"] == 0 and back["detected"] is True and back["p_value"] is None
    assert len(back["statistics"]) == 10 and len(back["anomaly_index"]) == 10
    assert np.asarray(back["estimated_pattern"]).shape == (2, 8, 8)
    assert back["settings"]["max_iter"] == FAST["max_iter"] and "verbose" not in back["settings"]


def test_batched_engine_matches_single_target_runs(victim, report):
    """All K targets optimised together give the same mask norms as each target alone."""
    classifier, x, y = victim
    nc = PyTorchNeuralCleanse(classifier, **FAST)
    problems = nc.problems(y)
    for t in range(10):
        single = nc.engine().run(x, y, problems.subset(np.array([t])))
        np.testing.assert_allclose(single.size_l1[0], report.statistics[t], rtol=1e-4)
        assert single.problems.targets[0] == t


# ---------------------------------------------------------------------------------------------- behaviour
def test_deterministic_under_random_state(victim):
    classifier, x, y = victim

    def scan(seed):
        d = PyTorchNeuralCleanse(classifier, max_iter=8, max_samples_per_target=20, random_state=seed).scan(x, y)
        d = d.to_dict()
        d.pop("seconds")
        return d

    first = scan(3)
    assert scan(3) == first
    assert scan(4)["statistics"] != first["statistics"]


def test_no_input_mutation_hooks_removed_mode_restored(victim):
    classifier, x, y = victim
    model = classifier.model
    x_copy, y_copy = x.copy(), y.copy()
    was_training = model.training
    grads = [None if p.grad is None else p.grad.clone() for p in model.parameters()]
    model.train()
    try:
        PyTorchNeuralCleanse(classifier, max_iter=3, max_samples_per_target=10, random_state=0).scan(x, y)
        assert all(m.training for m in model.modules())
        assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())
        assert all(p.requires_grad for p in model.parameters())
        for p, g in zip(model.parameters(), grads):
            assert (p.grad is None and g is None) or torch.equal(p.grad, g)
    finally:
        model.train(was_training)
    np.testing.assert_array_equal(x, x_copy)
    np.testing.assert_array_equal(y, y_copy)


def test_pattern_stays_in_clip_values(victim):
    """A classifier on [0, 255] (preprocessing divides by 255) gets a pattern in [0, 255]."""
    classifier, x, y = victim
    wide = make_classifier(classifier.model, clip_values=(0.0, 255.0), preprocessing=(0.0, 255.0),
                           device_type="cpu")
    rep = PyTorchNeuralCleanse(wide, max_iter=3, max_samples_per_target=10, random_state=0).scan(x * 255.0, y)
    pattern = rep.estimated_pattern[1:]
    assert pattern.min() >= 0.0 and pattern.max() <= 255.0 and pattern.max() > 1.0
    assert 0.0 <= rep.estimated_pattern[0].min() and rep.estimated_pattern[0].max() <= 1.0


def test_mask_pattern_init_is_shared_and_seeded():
    a = MaskPattern(random_state=5).init(3, (1, 4, 4), torch.device("cpu"))
    b = MaskPattern(random_state=5).init(1, (1, 4, 4), torch.device("cpu"))
    c = MaskPattern(random_state=6).init(1, (1, 4, 4), torch.device("cpu"))
    for pa, pb, pc in zip(a, b, c):
        assert torch.equal(pa[0], pa[2]) and torch.equal(pa[1], pb[0])
        assert not torch.equal(pb, pc)


def _fake_engine(norms, reached):
    k = len(norms)

    class Engine:
        def run(self, x, y, problems):
            pert = np.stack([np.full((2, 8, 8), t / 10.0) for t in range(k)])
            nan = np.full((1, k), np.nan)
            return EngineResult(problems, np.asarray(norms, float), np.asarray(norms, float), np.ones(k),
                                np.zeros(k), np.asarray(reached), np.zeros(k, int), pert, nan, nan, nan)

    return Engine()


def test_unreached_targets_are_excluded_from_the_mad(victim, monkeypatch):
    classifier, x, y = victim
    nc = PyTorchNeuralCleanse(classifier, random_state=0)
    norms = [10.0, 11.0, 9.0, 10.5, 2.0, 9.5, 10.0, 0.5, 11.5, 10.2]
    reached = [True] * 7 + [False] + [True] * 2  # target 7 has the smallest norm but never reached pi
    monkeypatch.setattr(nc, "engine", lambda **_: _fake_engine(norms, reached))
    rep = nc.scan(x, y)
    assert np.isnan(rep.anomaly_index[7]) and rep.to_dict()["anomaly_index"][7] is None
    assert rep.target == 4 and rep.detected and rep.flagged == [4]
    assert rep.statistics[7] == 0.5 and not rep.reached[7]
    np.testing.assert_array_equal(rep.estimated_pattern, np.full((2, 8, 8), 0.4))
    kept = np.delete(np.asarray(norms), 7)
    med = np.median(kept)
    mad = 1.4826 * np.median(np.abs(kept - med))
    assert rep.anomaly_index[4] == pytest.approx((med - 2.0) / mad)

    monkeypatch.setattr(nc, "engine", lambda **_: _fake_engine(norms, [False] * 10))
    none = nc.scan(x, y)
    assert none.target is None and not none.detected and none.estimated_pattern is None
    json.dumps(none.to_dict())


# ---------------------------------------------------------------------------------------------- validation
def test_rejects_non_pytorch_estimator():
    from art.estimators.classification import SklearnClassifier
    from sklearn.linear_model import LogisticRegression

    with pytest.raises(EstimatorError, match="PyTorchNeuralCleanse requires an estimator derived from"):
        PyTorchNeuralCleanse(SklearnClassifier(model=LogisticRegression()))


def test_rejects_classifier_without_clip_values(victim):
    from art.estimators.classification import PyTorchClassifier

    bare = PyTorchClassifier(victim[0].model, loss=torch.nn.CrossEntropyLoss(), input_shape=(1, 8, 8),
                             nb_classes=10, device_type="cpu")
    with pytest.raises(InvalidParameterError, match="clip_values"):
        PyTorchNeuralCleanse(bare)


def test_rejects_two_classes():
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        classifier = make_classifier(DigitsCNN(nb_classes=2), device_type="cpu")
    x = np.zeros((4, 1, 8, 8), np.float32)
    with pytest.raises(DataError, match="at least 3 classes"):
        PyTorchNeuralCleanse(classifier).scan(x, np.array([0, 0, 1, 1]))


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda x, y: (x.transpose(0, 2, 3, 1), y), "channels-first"),
        (lambda x, y: (x, np.eye(10)[y]), "one-hot"),
        (lambda x, y: (x[y != 3], y[y != 3]), r"no samples of class\(es\) \[3\]"),
        (lambda x, y: (np.delete(x, np.flatnonzero(y == 5)[1:], 0), np.delete(y, np.flatnonzero(y == 5)[1:])),
         "at least 2 samples per class"),
        (lambda x, y: (x.astype(np.float64), y), "float64"),
        (lambda x, y: (x * 255, y), "clip_values"),
        (lambda x, y: (x, y[:-1]), "labels but there are"),
    ],
)
def test_rejects_bad_clean_set(victim, make, match):
    classifier, x, y = victim
    nc = PyTorchNeuralCleanse(classifier, max_iter=1)
    bad_x, bad_y = make(x, y)
    with pytest.raises(DataError, match=match):
        nc.scan(bad_x, bad_y)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("target_misclassification", 0.0), ("target_misclassification", 1.5), ("init_cost", 0.0),
        ("learning_rate", -0.1), ("patience", 0), ("patience", 2.5), ("max_iter", 0),
        ("anomaly_threshold", 0), ("max_samples_per_target", 0), ("batch_size", 0), ("random_state", -1),
        ("random_state", 1.5), ("verbose", "yes"),
    ],
)
def test_rejects_bad_params(victim, name, value):
    classifier = victim[0]
    with pytest.raises(InvalidParameterError, match=name):
        PyTorchNeuralCleanse(classifier, **{name: value})
    nc = PyTorchNeuralCleanse(classifier)
    with pytest.raises(InvalidParameterError, match=name):
        nc.set_params(**{name: value})


def test_params_round_trip_and_unknown_param(victim):
    classifier = victim[0]
    nc = PyTorchNeuralCleanse(classifier, max_iter=7, random_state=2)
    assert nc.get_params()["max_iter"] == 7 and "max_iter=7" in repr(nc)
    nc.set_params(anomaly_threshold=3.0)
    assert nc.anomaly_threshold == 3.0
    with pytest.raises(InvalidParameterError, match="unknown parameter 'steps'"):
        nc.set_params(steps=10)
    with pytest.raises(TypeError):
        PyTorchNeuralCleanse(classifier, 0.9)  # keyword-only


# ---------------------------------------------------------------------------------------------- early stop
ES = {"max_iter": 300, "max_samples_per_target": 30, "random_state": 0, "early_stop_patience": 10}


def test_early_stop_ends_the_scan_before_max_iter_and_keeps_each_targets_own_result(victim):
    """Every target freezes on its own trajectory: batched and one-target runs agree, the run ends early, and no
    target beats the full run's smallest mask (early stop can only keep a mask the full run also passed)."""
    classifier, x, y = victim
    nc = PyTorchNeuralCleanse(classifier, **ES)
    problems = nc.problems(y)

    def run_counting_forwards(detector):
        calls = []
        handle = classifier.model.register_forward_pre_hook(lambda *_: calls.append(1))
        try:
            return detector.engine().run(x, y, problems), len(calls)
        finally:
            handle.remove()

    batched, early_calls = run_counting_forwards(nc)
    full, full_calls = run_counting_forwards(PyTorchNeuralCleanse(classifier, **{**ES, "early_stop_patience": None}))
    assert full_calls == ES["max_iter"] + 1
    assert early_calls < ES["max_iter"], "the chunk should stop before max_iter once every target is frozen"
    assert np.all(batched.reached == full.reached)
    assert np.all(batched.size_l1[batched.reached] >= full.size_l1[batched.reached] - 1e-5)
    for t in (0, 3, 7):
        single = nc.engine().run(x, y, problems.subset(np.array([t])))
        np.testing.assert_allclose(single.size_l1[0], batched.size_l1[t], rtol=1e-4)


def test_early_stop_parameters_are_validated(victim):
    classifier, _, _ = victim
    with pytest.raises(InvalidParameterError, match="early_stop_patience"):
        PyTorchNeuralCleanse(classifier, early_stop_patience=0)
    with pytest.raises(InvalidParameterError, match="early_stop_tolerance"):
        PyTorchNeuralCleanse(classifier, early_stop_tolerance=1.0)
    with pytest.raises(InvalidParameterError, match="early_stop_patience"):
        MaskPattern(early_stop_patience=True)
