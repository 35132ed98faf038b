"""Tests of MultiLayerActivationDefence and MultiLayerSpectralSignature (multi-layer AC / SS).

A DigitsCNN is trained (seeded, a few seconds on CPU) on scikit-learn's digits with an all-to-one
BadNets-style backdoor: 40 images of classes 1-9 get a bright 2x2 patch in the bottom-right corner and the
label 0 (23% of the target class). A second DigitsCNN is trained on the same images without poison.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from art.defences.detector.poison import SpectralSignatureDefense
from torch import nn

from art_backdoor_ext.datasets import load_digits
from art_backdoor_ext.defences.activation import (
    LayerDetection,
    MultiLayerActivationDefence,
    MultiLayerSpectralSignature,
    _scoring,
    penultimate_layer,
)
from art_backdoor_ext.exceptions import DataError, EstimatorError, InvalidParameterError
from art_backdoor_ext.models import DigitsCNN, make_classifier

TARGET = 0
N_POISON = 40
SEED = 0


def _stamp(x: np.ndarray) -> np.ndarray:
    out = x.copy()
    out[:, :, -2:, -2:] = 1.0
    return out


def _train(x: np.ndarray, y: np.ndarray, seed: int, epochs: int = 15) -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = DigitsCNN()
        optimiser = torch.optim.Adam(model.parameters(), lr=3e-3)
        xt, yt = torch.tensor(x), torch.tensor(y)
        generator = torch.Generator().manual_seed(seed)
        for _ in range(epochs):
            order = torch.randperm(len(xt), generator=generator)
            for start in range(0, len(xt), 32):
                batch = order[start:start + 32]
                optimiser.zero_grad()
                nn.functional.cross_entropy(model(xt[batch]), yt[batch]).backward()
                optimiser.step()
    return model.eval()


@pytest.fixture(scope="module")
def setup() -> dict:
    data = load_digits()
    rng = np.random.default_rng(SEED)
    x, y = data.x_train, data.y_train
    poison_idx = rng.choice(np.flatnonzero(y != TARGET), N_POISON, replace=False)
    x_poisoned, y_poisoned = x.copy(), y.copy()
    x_poisoned[poison_idx] = _stamp(x[poison_idx])
    y_poisoned[poison_idx] = TARGET
    is_clean_true = np.ones(len(x), dtype=np.int64)
    is_clean_true[poison_idx] = 0

    classifier = make_classifier(_train(x_poisoned, y_poisoned, SEED), device_type="cpu")
    non_target = data.y_test != TARGET
    asr = float(np.mean(classifier.predict(_stamp(data.x_test[non_target])).argmax(1) == TARGET))
    accuracy = float(np.mean(classifier.predict(data.x_test).argmax(1) == data.y_test))
    clean_classifier = make_classifier(_train(x, y, SEED), device_type="cpu")
    return {
        "classifier": classifier, "x": x_poisoned, "y": y_poisoned, "is_clean_true": is_clean_true,
        "asr": asr, "accuracy": accuracy, "clean_classifier": clean_classifier, "x_clean": x, "y_clean": y,
    }


@pytest.fixture(scope="module")
def ac_result(setup: dict) -> tuple:
    defence = MultiLayerActivationDefence(setup["classifier"], setup["x"], setup["y"],
                                          layers=["relu2", "relu3"], random_state=0)
    report, is_clean = defence.detect_poison(is_clean_true=setup["is_clean_true"])
    return defence, report, is_clean


@pytest.fixture(scope="module")
def ss_result(setup: dict) -> tuple:
    defence = MultiLayerSpectralSignature(setup["classifier"], setup["x"], setup["y"],
                                          layers=["relu2", "relu3"])
    report, is_clean = defence.detect_poison(is_clean_true=setup["is_clean_true"])
    return defence, report, is_clean


def test_precondition_backdoor_is_learned(setup: dict) -> None:
    assert setup["asr"] > 0.8
    assert setup["accuracy"] > 0.9


# ----------------------------------------------------------------------------------------- detection quality
def test_activation_clustering_finds_the_poison_on_a_conv_layer(setup: dict, ac_result: tuple) -> None:
    _, report, is_clean = ac_result
    # On this small digits model the poison separates clearly in the convolutional activations (relu2);
    # at the penultimate layer (relu3) naturally two-style digits (1, 9) split as well as the poison does.
    assert report["by_layer"]["relu2"]["metrics"]["f1"] > 0.7
    assert report["layers"] == ["relu2", "relu3"]
    assert report["metrics"]["f1"] == report["by_layer"]["relu2"]["metrics"]["f1"]  # layer_vote="first"
    flagged_classes = {c["label"] for c in report["by_layer"]["relu2"]["classes"] if c["n_flagged"]}
    assert flagged_classes == {TARGET}
    assert is_clean == report["by_layer"]["relu2"]["is_clean"]


def test_spectral_signature_finds_the_poison_on_a_conv_layer(ss_result: tuple) -> None:
    _, report, _ = ss_result
    assert report["by_layer"]["relu2"]["metrics"]["f1"] > 0.7
    target = report["by_layer"]["relu2"]["classes"][TARGET]
    assert target["n_flagged"] >= 0.8 * N_POISON
    assert target["median"] is not None and target["scale"] > 0


@pytest.mark.parametrize("defence_cls", [MultiLayerActivationDefence, MultiLayerSpectralSignature])
def test_default_rules_do_not_flag_half_of_every_class_on_clean_data(setup: dict, defence_cls: type) -> None:
    kwargs = {"random_state": 0} if defence_cls is MultiLayerActivationDefence else {}
    defence = defence_cls(setup["clean_classifier"], setup["x_clean"], setup["y_clean"],
                          layers=["relu2", "relu3"], **kwargs)
    for layer, result in defence.detect_poison_by_layer().items():
        assert result.is_poison.mean() < 0.15, layer
        assert all(c.n_flagged < 0.5 * c.n_samples for c in result.classes), layer


def test_art_like_smaller_rule_flags_every_class(setup: dict) -> None:
    defence = MultiLayerActivationDefence(setup["clean_classifier"], setup["x_clean"], setup["y_clean"],
                                          layers="relu3", cluster_analysis="smaller", random_state=0)
    result = defence.detect_poison_by_layer()["relu3"]
    assert all(c.n_flagged > 0 for c in result.classes)


def test_spectral_signature_paper_rule_flags_the_expected_fraction_of_every_class(setup: dict) -> None:
    defence = MultiLayerSpectralSignature(setup["classifier"], setup["x"], setup["y"], layers="relu2",
                                          expected_poison_fraction=0.1)
    result = defence.detect_poison_by_layer()["relu2"]
    for c in result.classes:
        assert c.n_flagged == math.ceil(0.15 * c.n_samples)
        assert c.threshold is not None


def test_spectral_scores_are_art_scores_of_centred_features(setup: dict) -> None:
    rng = np.random.default_rng(1)
    features = rng.normal(size=(50, 6)) + 3.0
    projection = _scoring.spectral_projection(features)
    centred = features - features.mean(axis=0)
    art_scores = SpectralSignatureDefense.spectral_signature_scores(centred)[:, 0]
    np.testing.assert_allclose(projection**2, art_scores**2, rtol=1e-10)
    uncentred = SpectralSignatureDefense.spectral_signature_scores(features)[:, 0]
    assert not np.allclose(uncentred**2, projection**2)


# ----------------------------------------------------------------------------------------- PyTorch hygiene
def test_several_layers_come_from_one_forward_pass(setup: dict) -> None:
    model = setup["classifier"].model
    calls: list[int] = []
    original = model.forward

    def counting_forward(x: torch.Tensor) -> torch.Tensor:
        calls.append(len(x))
        return original(x)

    model.forward = counting_forward
    try:
        defence = MultiLayerSpectralSignature(setup["classifier"], setup["x"], setup["y"],
                                              layers=["relu1", "pool", "relu3"], batch_size=256)
        results = defence.detect_poison_by_layer()
        assert len(calls) == math.ceil(len(setup["x"]) / 256)
        defence.detect_poison()
        defence.evaluate_defence(setup["is_clean_true"])
        assert len(calls) == math.ceil(len(setup["x"]) / 256)  # features are cached
    finally:
        del model.forward
    assert list(results) == ["relu1", "pool", "relu3"]
    assert results["relu1"].n_features == 16 * 8 * 8  # conv activations flattened


def test_hooks_removed_and_training_mode_restored(setup: dict) -> None:
    model = setup["classifier"].model
    model.train()
    try:
        MultiLayerActivationDefence(setup["classifier"], setup["x"], setup["y"], layers=["relu2", "fc1"],
                                    random_state=0).detect_poison()
        assert all(m.training for m in model.modules())
        assert all(len(m._forward_hooks) == 0 for m in model.modules())
    finally:
        model.eval()


def test_inputs_are_not_mutated(setup: dict) -> None:
    x, y = setup["x"].copy(), np.eye(10, dtype=np.float32)[setup["y"]]
    x_before, y_before = x.copy(), y.copy()
    defence = MultiLayerSpectralSignature(setup["classifier"], x, y, layers="relu2")
    defence.detect_poison()
    np.testing.assert_array_equal(x, x_before)
    np.testing.assert_array_equal(y, y_before)
    assert defence.x_train is x and defence.y_train is y


# ----------------------------------------------------------------------------------------- interface
def test_default_layer_is_the_penultimate_one(setup: dict) -> None:
    assert penultimate_layer(DigitsCNN()) == "relu3"
    defence = MultiLayerSpectralSignature(setup["classifier"], setup["x"], setup["y"])
    assert defence.layers is None and defence.layer_list == ["relu3"]
    with pytest.raises(InvalidParameterError, match="cannot infer the penultimate layer"):
        penultimate_layer(nn.Sequential(nn.Conv2d(1, 2, 3)))


def test_report_and_results_are_json_serialisable(ac_result: tuple) -> None:
    defence, report, is_clean = ac_result
    decoded = json.loads(json.dumps(report))
    assert decoded["n_flagged"] == len(is_clean) - sum(is_clean)
    assert decoded["params"]["layers"] == ["relu2", "relu3"]
    result = defence.detect_poison_by_layer()["relu2"]
    assert isinstance(result, LayerDetection) and result.is_poison.dtype == bool
    json.dumps(result.to_dict())
    assert "scores" not in result.to_dict(include_arrays=False)


def test_evaluate_defence_matches_arts_confusion_matrix_format(setup: dict, ac_result: tuple) -> None:
    defence, report, _ = ac_result
    matrix = json.loads(defence.evaluate_defence(setup["is_clean_true"]))
    assert set(matrix) == {f"class_{c}" for c in range(10)}
    true_positives = sum(m["TruePositive"]["numerator"] for m in matrix.values())
    assert true_positives == report["metrics"]["tp"]
    with pytest.raises(DataError, match="is_clean"):
        defence.evaluate_defence(np.array([]))
    with pytest.raises(DataError, match="is_clean_true must be a vector of 1347"):
        defence.detect_poison(is_clean_true=np.ones(3))


def test_layer_vote(setup: dict) -> None:
    defence = MultiLayerSpectralSignature(setup["classifier"], setup["x"], setup["y"],
                                          layers=["relu2", "relu3"])
    flags = {name: r.is_poison for name, r in defence.detect_poison_by_layer().items()}
    _, any_clean = defence.detect_poison(layer_vote="any")
    _, all_clean = defence.detect_poison(layer_vote="all")
    np.testing.assert_array_equal(np.array(any_clean) == 0, flags["relu2"] | flags["relu3"])
    np.testing.assert_array_equal(np.array(all_clean) == 0, flags["relu2"] & flags["relu3"])


def test_one_hot_and_integer_labels_give_identical_results(setup: dict) -> None:
    one_hot = np.eye(10, dtype=np.float32)[setup["y"]]
    results = [
        MultiLayerActivationDefence(setup["classifier"], setup["x"], labels, layers="relu2",
                                    random_state=0).detect_poison()[1]
        for labels in (setup["y"], one_hot)
    ]
    assert results[0] == results[1]


def test_unknown_layer_raises_with_the_valid_names(setup: dict) -> None:
    with pytest.raises(InvalidParameterError, match=r"unknown layer 'fc9'.*conv1, relu1, conv2"):
        MultiLayerActivationDefence(setup["classifier"], setup["x"], setup["y"], layers=["relu2", "fc9"])


def test_channels_last_input_raises(setup: dict) -> None:
    with pytest.raises(DataError, match="channels-first"):
        MultiLayerSpectralSignature(setup["classifier"], np.transpose(setup["x"], (0, 2, 3, 1)), setup["y"])


def test_wrong_estimator_raises(setup: dict) -> None:
    with pytest.raises(EstimatorError):
        MultiLayerSpectralSignature(object(), setup["x"], setup["y"])


def test_set_params_validates_and_keeps_previous_values(setup: dict) -> None:
    defence = MultiLayerActivationDefence(setup["classifier"], setup["x"], setup["y"], layers="relu2")
    with pytest.raises(InvalidParameterError, match="unknown parameter 'nb_cluster'"):
        defence.set_params(nb_cluster=3)
    with pytest.raises(InvalidParameterError, match="max_poison_fraction must be"):
        defence.set_params(max_poison_fraction=0.9)
    with pytest.raises(InvalidParameterError, match="unknown layer"):
        defence.set_params(layers="nope", nb_dims=5)
    assert defence.layers == "relu2" and defence.nb_dims == 10
    defence.set_params(**defence.get_params())
    assert defence.defence_params == list(defence.get_params())
    assert "MultiLayerActivationDefence(layers='relu2'" in repr(defence)
    with pytest.raises(InvalidParameterError, match="layers is empty"):
        MultiLayerSpectralSignature(setup["classifier"], setup["x"], setup["y"], layers=[])


# ----------------------------------------------------------------------------------------- pure helpers
def test_suspicious_cluster_rules() -> None:
    small_split = np.array([80, 20])
    assert _scoring.suspicious_clusters(small_split, 0.6) == [1]
    assert _scoring.suspicious_clusters(small_split, 0.2) == []  # not separated
    assert _scoring.suspicious_clusters(np.array([55, 45]), 0.9) == []  # not small
    assert _scoring.suspicious_clusters(np.array([55, 45]), 0.0, rule="smaller") == [1]
    assert _scoring.suspicious_clusters(small_split, 0.0, rule="relative-size") == [1]
    assert _scoring.suspicious_clusters(np.array([45, 55]), 0.9, rule="silhouette") == [0]


def test_cluster_indices_are_canonical_largest_first() -> None:
    rng = np.random.default_rng(0)
    points = np.concatenate([rng.normal(size=(10, 2)) + 8.0, rng.normal(size=(30, 2))])
    for seed in range(3):
        assignment, silhouette, _ = _scoring.cluster_class(points, random_state=seed)
        assert assignment[:10].tolist() == [1] * 10 and assignment[10:].tolist() == [0] * 30
        assert silhouette > 0.7


def test_robust_outliers_and_top_fraction() -> None:
    values = np.concatenate([np.linspace(-1, 1, 21), [10.0]])
    mask, median, scale = _scoring.robust_outliers(values, 3.5)
    assert mask.tolist() == [False] * 21 + [True] and median == pytest.approx(0.05) and scale > 0
    constant = np.array([0.0] * 8 + [1.0, 50.0])
    mask, _, scale = _scoring.robust_outliers(constant, 3.5)  # MAD = 0: mean-absolute-deviation fallback
    assert mask.tolist() == [False] * 9 + [True] and scale > 0
    mask, cutoff = _scoring.top_fraction(np.arange(10.0), 0.25)
    assert mask.sum() == 3 and cutoff == 7.0


@pytest.mark.parametrize("shape", [(30, 80), (80, 12)])
def test_principal_components_match_sklearn_pca_up_to_sign(shape: tuple[int, int]) -> None:
    from sklearn.decomposition import PCA

    data = np.random.default_rng(2).normal(size=shape) * np.linspace(3.0, 0.5, shape[1])
    ours = _scoring.reduce_dimensionality(data, nb_dims=5)
    reference = PCA(n_components=5, svd_solver="full").fit_transform(data)
    np.testing.assert_allclose(np.abs(ours), np.abs(reference), atol=1e-8)
