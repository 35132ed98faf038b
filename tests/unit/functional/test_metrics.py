import numpy as np
import pytest

from art_backdoor_ext.exceptions import DataError
from art_backdoor_ext.functional.metrics import (
    attack_success_rate,
    benign_accuracy,
    best_f1,
    detection_accuracy,
    detection_counts,
    f_beta,
    false_acceptance_rate,
    false_rejection_rate,
    precision,
    recall,
    roc_auc,
)

# 10 samples: 4 poisoned (first four); flagged: 3 of the poisoned and 2 clean.
TRUTH = np.array([1, 1, 1, 1, 0, 0, 0, 0, 0, 0], dtype=bool)
FLAGS = np.array([1, 1, 1, 0, 1, 1, 0, 0, 0, 0], dtype=bool)


def test_counts_and_rates_by_hand():
    c = detection_counts(FLAGS, TRUTH)
    assert (c.true_positives, c.false_positives, c.true_negatives, c.false_negatives) == (3, 2, 4, 1)
    assert precision(FLAGS, TRUTH) == pytest.approx(3 / 5)
    assert recall(FLAGS, TRUTH) == pytest.approx(3 / 4)
    assert false_acceptance_rate(FLAGS, TRUTH) == pytest.approx(1 / 4)
    assert false_rejection_rate(FLAGS, TRUTH) == pytest.approx(2 / 6)
    p, r = 0.6, 0.75
    assert f_beta(FLAGS, TRUTH) == pytest.approx(2 * p * r / (p + r))
    assert f_beta(FLAGS, TRUTH, beta=2) == pytest.approx(5 * p * r / (4 * p + r))


def test_f_beta_matches_sklearn():
    from sklearn.metrics import fbeta_score

    rng = np.random.default_rng(0)
    t, f = rng.random(50) < 0.3, rng.random(50) < 0.4
    for beta in (0.5, 1, 2):
        assert f_beta(f, t, beta) == pytest.approx(fbeta_score(t, f, beta=beta))


def test_degenerate_cases():
    none = np.zeros(4, bool)
    assert precision(none, TRUTH[:4]) == 0.0 and f_beta(none, TRUTH[:4]) == 0.0
    with pytest.raises(DataError, match="shape"):
        precision(FLAGS[:3], TRUTH)


def test_ba_asr_and_model_detection_accuracy():
    assert benign_accuracy(np.array([0, 1, 2, 2]), np.array([0, 1, 2, 1])) == 0.75
    assert attack_success_rate(np.array([0, 0, 3, 0]), 0) == 0.75
    assert attack_success_rate(np.array([0, 0, 3, 0]), 0, y_true=np.array([0, 1, 1, 1])) == pytest.approx(2 / 3)
    with pytest.raises(DataError, match="undefined"):
        attack_success_rate(np.array([0]), 0, y_true=np.array([0]))
    assert detection_accuracy(np.array([1, 0, 1]), np.array([1, 1, 1])) == pytest.approx(2 / 3)


def test_best_f1_is_the_best_threshold_by_brute_force():
    rng = np.random.default_rng(0)
    for _ in range(50):
        scores = rng.integers(0, 6, size=15).astype(float)  # ties on purpose
        truth = rng.random(15) < 0.4
        brute = max(f_beta(scores >= t, truth) for t in np.unique(scores))
        f1, threshold = best_f1(scores, truth)
        assert f1 == pytest.approx(brute)
        assert f_beta(scores >= threshold, truth) == pytest.approx(f1)
    assert best_f1(np.array([3.0, 1.0, 2.0]), np.array([True, False, True])) == (1.0, 2.0)
    assert best_f1(np.array([1.0, 2.0]), np.array([False, False])) == (0.0, float("inf"))
    with pytest.raises(DataError, match="equal shape"):
        best_f1(np.ones(3), np.ones(2, bool))


def test_roc_auc_is_the_pairwise_win_rate_with_ties_halved():
    rng = np.random.default_rng(1)
    for _ in range(30):
        scores = rng.integers(0, 5, size=20).astype(float)  # ties on purpose
        truth = rng.random(20) < 0.5
        truth[:2] = [True, False]
        pos, neg = scores[truth], scores[~truth]
        wins = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
        assert roc_auc(scores, truth) == pytest.approx(wins / (len(pos) * len(neg)))
    assert roc_auc(np.array([0.9, 0.8, 0.1]), np.array([True, True, False])) == 1.0
    assert roc_auc(np.array([0.1, 0.9]), np.array([True, False])) == 0.0
    assert roc_auc(np.ones(4), np.array([True, False, True, False])) == 0.5
    with pytest.raises(DataError, match="both"):
        roc_auc(np.ones(3), np.ones(3, bool))
    with pytest.raises(DataError, match="NaN"):
        roc_auc(np.array([np.nan, 1.0]), np.array([True, False]))
