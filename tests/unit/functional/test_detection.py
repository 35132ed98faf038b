"""Detection math: entropy, softmax / probability handling, L1 distance and thresholds at a target FRR."""

import numpy as np
import pytest
from scipy.stats import norm

from art_backdoor_ext.exceptions import DataError, InvalidParameterError
from art_backdoor_ext.functional.detection import (
    calibration_frr_summary,
    conformal_rank,
    flag_scores,
    is_probability_matrix,
    l1_distance,
    prediction_entropy,
    realised_frr_interval,
    softmax,
    threshold_at_frr,
    to_probabilities,
)


def test_entropy_reference_values():
    p = np.array([[0.25, 0.25, 0.25, 0.25], [1.0, 0.0, 0.0, 0.0], [0.5, 0.5, 0.0, 0.0], [0.9, 0.1, 0.0, 0.0]])
    h = prediction_entropy(p)
    expected_last = -(0.9 * np.log2(0.9) + 0.1 * np.log2(0.1))
    np.testing.assert_allclose(h, [2.0, 0.0, 1.0, expected_last])
    np.testing.assert_allclose(prediction_entropy(p, base=np.e), h * np.log(2))
    with pytest.raises(InvalidParameterError, match="base"):
        prediction_entropy(p, base=1)


def test_softmax_rows_and_shift_invariance():
    z = np.array([[1.0, 2.0, 3.0], [1000.0, 1000.0, 0.0]])
    p = softmax(z)
    np.testing.assert_allclose(p.sum(1), 1.0)
    np.testing.assert_allclose(p[0], np.exp([1, 2, 3]) / np.exp([1, 2, 3]).sum())
    np.testing.assert_allclose(p[1], [0.5, 0.5, 0.0], atol=1e-12)  # no overflow
    np.testing.assert_allclose(softmax(z + 7.0), p)


def test_to_probabilities_auto_logits_and_checks():
    probs = np.array([[0.2, 0.8], [1.0, 0.0]])
    logits = np.array([[-1.0, 3.0], [0.5, 0.5]])
    assert is_probability_matrix(probs) and not is_probability_matrix(logits)
    np.testing.assert_allclose(to_probabilities(probs), probs)
    np.testing.assert_allclose(to_probabilities(logits), softmax(logits))
    np.testing.assert_allclose(to_probabilities(probs, "logits"), softmax(probs))  # forced
    with pytest.raises(DataError, match="not probability vectors"):
        to_probabilities(logits, "probabilities")
    with pytest.raises(InvalidParameterError, match="kind"):
        to_probabilities(probs, "scores")
    with pytest.raises(DataError, match=r"shape \(N, K\)"):
        to_probabilities(np.zeros(3))
    with pytest.raises(DataError, match="NaN"):
        to_probabilities(np.array([[np.nan, 1.0]]))


def test_l1_distance():
    np.testing.assert_allclose(l1_distance([[1.0, 0.0], [0.5, 0.5]], [[0.0, 1.0], [0.5, 0.5]]), [2.0, 0.0])
    with pytest.raises(DataError, match="shape"):
        l1_distance(np.ones((2, 2)), np.ones((3, 2)))


@pytest.mark.parametrize("higher", [True, False])
def test_quantile_threshold_flags_at_most_target_frr(higher):
    scores = np.random.default_rng(0).normal(size=1000)
    for frr in (0.01, 0.05, 0.2):
        t = threshold_at_frr(scores, frr, higher_is_suspicious=higher)
        rate = flag_scores(scores, t, higher_is_suspicious=higher).mean()
        assert frr - 0.002 <= rate <= frr
    # ties: every clean score equal -> nothing is flagged
    t = threshold_at_frr(np.ones(10), 0.1, higher_is_suspicious=higher)
    assert not flag_scores(np.ones(10), t, higher_is_suspicious=higher).any()


def test_normal_threshold_matches_the_fit():
    scores = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
    loc, scale = scores.mean(), scores.std(ddof=1)
    assert threshold_at_frr(scores, 0.05, higher_is_suspicious=False, method="normal") == pytest.approx(
        norm.ppf(0.05, loc, scale))
    assert threshold_at_frr(scores, 0.05, method="normal") == pytest.approx(norm.ppf(0.95, loc, scale))
    assert threshold_at_frr(np.ones(4), 0.05, method="normal") == 1.0


def test_threshold_errors():
    with pytest.raises(DataError, match="at least 2"):
        threshold_at_frr(np.ones(1), 0.1)
    with pytest.raises(DataError, match="NaN"):
        threshold_at_frr(np.array([1.0, np.nan]), 0.1)
    with pytest.raises(InvalidParameterError, match=r"target_frr must lie in \(0, 1\)"):
        threshold_at_frr(np.ones(3), 1.0)
    with pytest.raises(InvalidParameterError, match="method must be"):
        threshold_at_frr(np.ones(3), 0.1, method="median")


def _exceedances(n_cal: int, frr: float, method: str, draws: int = 4000) -> np.ndarray:
    """Realised FRR on a fresh normal test draw of thresholds set on independent normal calibration draws."""
    rng = np.random.default_rng(1)
    cal = rng.normal(size=(draws, n_cal))
    thresholds = np.array([threshold_at_frr(c, frr, method=method) for c in cal])
    return norm.sf(thresholds)  # exact FRR on the whole (normal) clean population


def test_conformal_threshold_bounds_the_expected_frr_on_new_inputs_where_the_quantile_does_not():
    conformal, empirical = _exceedances(50, 0.05, "conformal"), _exceedances(50, 0.05, "quantile")
    assert conformal.mean() <= 0.05  # 2 / 51 = 0.039 in theory
    assert conformal.mean() == pytest.approx(2 / 51, abs=0.003)
    assert empirical.mean() > 0.05  # 3rd largest of 50: 3 / 51 = 0.059
    low_is_suspicious = threshold_at_frr(np.arange(50.0), 0.05, higher_is_suspicious=False, method="conformal")
    assert flag_scores(np.arange(50.0), low_is_suspicious, higher_is_suspicious=False).sum() == 1  # rank 2 -> 1 below


def test_conformal_rank():
    assert conformal_rank(50, 0.05) == 2
    assert conformal_rank(19, 0.05) == 1  # (19 + 1) * 0.05 = 1 exactly
    assert conformal_rank(10, 0.05) == 0  # no score bounds 5% with 10 scores
    assert threshold_at_frr(np.arange(10.0), 0.05, method="conformal") == 9.0  # then the maximum
    with pytest.raises(DataError, match="n_calibration"):
        conformal_rank(0, 0.05)
    with pytest.raises(InvalidParameterError, match="target_frr"):
        conformal_rank(10, 0.0)


def test_realised_frr_interval_covers_the_simulated_spread():
    mean, low, high = realised_frr_interval(50, 2, coverage=0.9)
    realised = _exceedances(50, 0.05, "conformal")
    assert mean == pytest.approx(2 / 51)
    assert low < mean < high
    assert np.mean((realised >= low) & (realised <= high)) == pytest.approx(0.9, abs=0.02)
    assert np.mean(realised > high) == pytest.approx(0.05, abs=0.015)
    with pytest.raises(DataError, match="rank"):
        realised_frr_interval(50, 0)
    with pytest.raises(InvalidParameterError, match="coverage"):
        realised_frr_interval(50, 2, coverage=1.0)


def test_calibration_frr_summary_combines_rank_and_interval():
    summary = calibration_frr_summary(50, 0.05)
    assert summary["rank"] == conformal_rank(50, 0.05) == 2 and summary["n_calibration"] == 50
    mean, low, high = realised_frr_interval(50, 2, coverage=0.9)
    assert summary["expected"] == mean and summary["interval_90"] == [low, high]
    assert calibration_frr_summary(10, 0.05)["rank"] == 1  # no rank achieves 5%: the most suspicious score
