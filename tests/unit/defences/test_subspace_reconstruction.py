"""Subspace Reconstruction: the subspace and the loss against independent linear algebra, the decision rules,
the end-to-end filter on a backdoored digits model, and input checks."""

from __future__ import annotations

import math

import numpy as np
import pytest

from art_backdoor_ext._torch import extract_features
from art_backdoor_ext.datasets import sample_per_class
from art_backdoor_ext.defences import SubspaceReconstruction
from art_backdoor_ext.defences.activation import _scoring
from art_backdoor_ext.exceptions import DataError, InvalidParameterError
from art_backdoor_ext.functional.metrics import best_f1, f_beta


def _eigen_subspace(reference: np.ndarray, energy: float) -> tuple[np.ndarray, np.ndarray]:
    """Independent route: eigenvectors of the covariance, smallest k whose eigenvalues reach ``energy``."""
    mean = reference.mean(axis=0)
    values, vectors = np.linalg.eigh(np.cov(reference - mean, rowvar=False, bias=True))
    values, vectors = values[::-1], vectors[:, ::-1]
    k = next(i + 1 for i in range(len(values)) if values[: i + 1].sum() >= energy * values.sum() - 1e-12)
    return mean, vectors[:, :k]


def _distance_to_affine_span(points: np.ndarray, mean: np.ndarray, basis: np.ndarray) -> np.ndarray:
    out = []
    for p in points:
        coef, *_ = np.linalg.lstsq(basis, p - mean, rcond=None)
        out.append(np.linalg.norm(p - mean - basis @ coef))
    return np.array(out)


# ---------------------------------------------------------------------------------------------- math
@pytest.mark.parametrize("energy", [0.5, 0.9, 0.99])
def test_subspace_and_loss_match_eigendecomposition_and_least_squares(energy):
    rng = np.random.default_rng(0)
    reference = rng.normal(size=(40, 6)) * np.array([5.0, 3.0, 2.0, 1.0, 0.5, 0.1]) + 3.0
    mean, basis = _scoring.fit_subspace(reference, energy)
    ref_mean, ref_basis = _eigen_subspace(reference, energy)
    assert basis.shape == ref_basis.shape
    np.testing.assert_allclose(mean, ref_mean)
    np.testing.assert_allclose(basis.T @ basis, np.eye(basis.shape[1]), atol=1e-12)
    np.testing.assert_allclose(basis @ basis.T, ref_basis @ ref_basis.T, atol=1e-8)
    points = rng.normal(size=(7, 6)) * 4
    np.testing.assert_allclose(_scoring.reconstruction_error(points, mean, basis),
                               _distance_to_affine_span(points, ref_mean, ref_basis), atol=1e-8)


def test_full_energy_reconstructs_the_reference_and_constant_reference_keeps_nothing():
    rng = np.random.default_rng(1)
    reference = rng.normal(size=(5, 12))  # 5 points span a 4-dimensional affine subspace
    mean, basis = _scoring.fit_subspace(reference, 1.0)
    assert basis.shape == (12, 4)
    np.testing.assert_allclose(_scoring.reconstruction_error(reference, mean, basis), 0.0, atol=1e-10)
    flat_mean, flat = _scoring.fit_subspace(np.ones((4, 3)), 0.9)
    assert flat.shape == (3, 0)
    point = np.array([[1.0, 4.0, 5.0]])
    assert _scoring.reconstruction_error(point, flat_mean, flat)[0] == pytest.approx(5.0)


# ---------------------------------------------------------------------------------------------- the filter
@pytest.fixture(scope="module")
def case(badnets_victim, digits):
    x_ref, y_ref = sample_per_class(digits.x_test, digits.y_test, 10, random_state=0)
    data = badnets_victim.data
    return badnets_victim.classifier, data.x, data.y, data.is_poison, x_ref, y_ref


def test_scores_are_reconstruction_losses_of_the_clean_class_subspace(case):
    clf, x, y, _, x_ref, y_ref = case
    defence = SubspaceReconstruction(clf, x, y, x_clean=x_ref, y_clean=y_ref, layers=["relu2", "relu3"])
    results = defence.detect_poison_by_layer()
    assert list(results) == ["relu2", "relu3"]
    for label in (0, 4):
        members = y == label
        feats = extract_features(clf, x[members], ["relu3"])["relu3"]
        ref = extract_features(clf, x_ref[y_ref == label], ["relu3"])["relu3"]
        mean, basis = _eigen_subspace(ref.astype(np.float64), 0.9)
        np.testing.assert_allclose(results["relu3"].scores[members], _distance_to_affine_span(feats, mean, basis),
                                   rtol=1e-4, atol=1e-4)
        info = results["relu3"].classes[label]
        assert info.n_components == basis.shape[1] and info.n_reference == 10


def test_poison_is_found_and_only_high_losses_are_flagged(case):
    clf, x, y, is_poison, x_ref, y_ref = case
    result = SubspaceReconstruction(clf, x, y, x_clean=x_ref, y_clean=y_ref, layers="relu2").detect_poison_by_layer()
    layer = result["relu2"]
    target = y == 0  # the poison is a third of class 0: the losses separate it, the robust rule finds most of it
    assert best_f1(layer.scores[target], is_poison[target])[0] > 0.95
    assert f_beta(layer.is_poison, is_poison) > 0.7
    assert np.sum(layer.is_poison[~target]) <= 0.02 * np.sum(~target)
    for info in layer.classes:
        members = y == info.label
        flagged = layer.is_poison & members
        assert np.all(layer.scores[flagged] > info.median + 3.5 * info.scale)
        assert not np.any(~flagged & members & (layer.scores > info.median + 3.5 * info.scale))


def test_fraction_rule_flags_the_top_scores_of_every_class(case):
    clf, x, y, _, x_ref, y_ref = case
    defence = SubspaceReconstruction(clf, x, y, x_clean=x_ref, y_clean=y_ref, layers="relu3",
                                     expected_poison_fraction=0.1)
    layer = defence.detect_poison_by_layer()["relu3"]
    for label in range(10):
        members = np.flatnonzero(y == label)
        flagged = members[layer.is_poison[members]]
        assert len(flagged) == math.ceil(0.1 * len(members))
        assert layer.scores[flagged].min() >= layer.scores[np.setdiff1d(members, flagged)].max()
        assert layer.classes[label].threshold == pytest.approx(layer.scores[flagged].min())


def test_classes_without_reference_are_left_alone(case):
    clf, x, y, _, x_ref, y_ref = case
    keep = y_ref < 5
    defence = SubspaceReconstruction(clf, x, y, x_clean=x_ref[keep], y_clean=np.eye(10)[y_ref[keep]],
                                     layers="relu2", expected_poison_fraction=0.2)
    layer = defence.detect_poison_by_layer()["relu2"]
    assert not np.any(layer.is_poison[y >= 5]) and np.any(layer.is_poison[y < 5])
    assert "0 clean reference sample(s)" in layer.classes[7].note
    assert layer.classes[2].note is None


def test_registered_in_the_evaluation_runner(badnets_victim, digits):
    from art_backdoor_ext.evaluation import DEFENCES, EvaluationContext, _ensure_registered

    _ensure_registered()
    spec = DEFENCES["sr"]
    assert spec.kind == "poison-filter"
    context = EvaluationContext(badnets_victim, digits.x_test, digits.y_test, digits.x_test, digits.y_test,
                                ["relu2"], 0)
    (outcome,) = spec.run(context)
    assert outcome.layer == "relu2" and outcome.is_flagged.shape == badnets_victim.data.is_poison.shape
    assert f_beta(outcome.is_flagged, badnets_victim.data.is_poison) > 0.7


def test_bad_input_gets_clear_errors(case):
    clf, x, y, _, x_ref, y_ref = case
    with pytest.raises(DataError, match="x_clean has shape .*channels-last"):
        SubspaceReconstruction(clf, x, y, x_clean=np.transpose(x_ref, (0, 2, 3, 1)), y_clean=y_ref)
    with pytest.raises(DataError, match="at least 2 samples of a class .* at most 1 per class"):
        SubspaceReconstruction(clf, x, y, x_clean=x_ref[:10], y_clean=np.arange(10))
    with pytest.raises(DataError, match="y_clean has 5 labels but there are 100 samples"):
        SubspaceReconstruction(clf, x, y, x_clean=x_ref, y_clean=y_ref[:5])
    with pytest.raises(InvalidParameterError, match="energy must be a number in \\(0.0, 1.0\\]"):
        SubspaceReconstruction(clf, x, y, x_clean=x_ref, y_clean=y_ref, energy=0.0)
    with pytest.raises(InvalidParameterError, match="unknown layer 'fc9'; the model's layers are: conv1"):
        SubspaceReconstruction(clf, x, y, x_clean=x_ref, y_clean=y_ref, layers="fc9")
    with pytest.raises(DataError, match="x_train has values in .* divide by 255"):
        SubspaceReconstruction(clf, x * 255, y, x_clean=x_ref, y_clean=y_ref)
