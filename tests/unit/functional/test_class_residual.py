"""Class-conditional residuals: class means and pooled within-class scale against direct formulas, scores of known
points, and the errors."""

import numpy as np
import pytest

from art_backdoor_ext.exceptions import DataError
from art_backdoor_ext.functional.class_residual import SCALE_EPS, class_means_and_scale, residual_scores


def test_means_and_pooled_scale_match_the_definitions():
    rng = np.random.default_rng(0)
    labels = np.repeat([0, 1, 2], [5, 7, 4])
    centres = np.array([[0.0, 10.0], [5.0, -3.0], [1.0, 1.0]])
    spread = np.array([1.0, 3.0])
    features = centres[labels] + rng.normal(size=(16, 2)) * spread
    means, scale = class_means_and_scale(features, labels, 3)
    for c in range(3):
        np.testing.assert_allclose(means[c], features[labels == c].mean(axis=0))
    deviations = np.concatenate([features[labels == c] - features[labels == c].mean(axis=0) for c in range(3)])
    np.testing.assert_allclose(scale, np.sqrt((deviations ** 2).mean(axis=0)))
    assert scale[1] > scale[0]  # the second feature was drawn with three times the spread


def test_scores_of_known_points_depend_on_the_predicted_class():
    means = np.array([[0.0, 0.0, 0.0], [10.0, 10.0, 10.0]])
    scale = np.array([1.0, 2.0, 0.5])
    at_mean = means[1][None]
    two_scales_out = (means[0] + 2 * scale)[None]
    scores = residual_scores(np.concatenate([at_mean, two_scales_out, two_scales_out]), np.array([1, 0, 1]), means,
                             scale)
    assert scores[0] == pytest.approx(0.0)
    assert scores[1] == pytest.approx(4.0, rel=1e-5)  # two scales out in every feature: mean of 2^2
    expected = np.mean(((means[0] + 2 * scale - means[1]) / (scale + SCALE_EPS)) ** 2)
    assert scores[2] == pytest.approx(expected)  # the same point, judged against the other class
    assert scores[2] > scores[1]


def test_a_dead_feature_turns_any_activation_into_a_large_residual():
    features = np.array([[1.0, 0.0], [3.0, 0.0], [2.0, 0.0], [4.0, 0.0]])
    means, scale = class_means_and_scale(features, np.array([0, 0, 1, 1]), 2)
    assert scale[1] == 0.0
    assert residual_scores(np.array([[2.0, 0.1]]), np.array([0]), means, scale)[0] > 1e9


def test_errors():
    with pytest.raises(DataError, match=r"at least 2 clean samples.*\{1: 1, 2: 0\}"):
        class_means_and_scale(np.zeros((3, 2)), np.array([0, 0, 1]), 3)
    with pytest.raises(DataError, match="labels must have shape"):
        class_means_and_scale(np.zeros((3, 2)), np.array([0, 0]), 2)
    with pytest.raises(DataError, match=r"\(N, D\)"):
        class_means_and_scale(np.zeros((3, 2, 2)), np.array([0, 0, 1]), 2)
    means, scale = np.zeros((2, 3)), np.ones(3)
    with pytest.raises(DataError, match="shapes do not match"):
        residual_scores(np.zeros((2, 4)), np.array([0, 1]), means, scale)
    with pytest.raises(DataError, match=r"0\.\.1"):
        residual_scores(np.zeros((2, 3)), np.array([0, 2]), means, scale)
