"""Rank fusion of detection scores: ranks of hand-checked values, the leave-one-out calibration ranks, the FRR a
conformal threshold on fused scores realises on new clean inputs (simulation), and the errors."""

import numpy as np
import pytest

from art_backdoor_ext.exceptions import DataError
from art_backdoor_ext.functional.detection import threshold_at_frr
from art_backdoor_ext.functional.score_fusion import TIE_BREAK, calibration_ranks, max_rank_fusion


def test_ranks_count_the_calibration_scores_strictly_below():
    calibration = np.array([4.0, 1.0, 3.0, 2.0])
    np.testing.assert_allclose(calibration_ranks(calibration, np.array([0.0, 2.0, 2.5, 9.0])),
                               [0.0, 0.25, 0.5, 1.0])


def test_calibration_scores_are_ranked_among_the_others():
    calibration = np.array([30.0, 10.0, 20.0])
    np.testing.assert_allclose(calibration_ranks(calibration, calibration, leave_one_out=True), [1.0, 0.0, 0.5])


def test_fusion_keeps_the_largest_rank_and_breaks_ties_by_the_mean():
    cal_a, cal_b = np.arange(10.0), np.arange(10.0) * 100
    # input 0: top of a, bottom of b; input 1: top of both; input 2: middle of both
    fused = max_rank_fusion([cal_a, cal_b], [np.array([20.0, 20.0, 4.5]), np.array([-1.0, 5000.0, 450.0])])
    np.testing.assert_allclose(fused, [1.0 + TIE_BREAK * 0.5, 1.0 + TIE_BREAK, 0.5 + TIE_BREAK * 0.5])


def test_an_input_extreme_under_one_detector_only_is_flagged():
    rng = np.random.default_rng(0)
    cal = [rng.normal(size=400), rng.gamma(2.0, size=400)]
    threshold = threshold_at_frr(max_rank_fusion(cal, cal, scores_are_calibration=True), 0.05, method="conformal")
    typical = [np.array([0.0]), np.array([2.0])]
    only_second = [np.array([0.0]), np.array([30.0])]
    assert max_rank_fusion(cal, typical)[0] < threshold < max_rank_fusion(cal, only_second)[0]


def test_conformal_threshold_on_fused_scores_holds_the_target_frr_on_new_clean_inputs():
    rng = np.random.default_rng(1)
    realised = []
    for _ in range(200):
        # two correlated clean scores on different scales, 200 calibration inputs, 2000 new clean inputs
        z = rng.normal(size=(2200, 2)) @ np.array([[1.0, 0.6], [0.0, 0.8]])
        a, b = z[:, 0], np.exp(z[:, 1])
        cal = [a[:200], b[:200]]
        threshold = threshold_at_frr(max_rank_fusion(cal, cal, scores_are_calibration=True), 0.05,
                                     method="conformal")
        realised.append(np.mean(max_rank_fusion(cal, [a[200:], b[200:]]) > threshold))
    # the conformal rank k = floor(201 * 0.05) = 10 gives an expected FRR of at most 10 / 201 = 0.0498
    assert 0.035 < np.mean(realised) <= 0.0498 + 0.003
    # without the leave-one-out ranks the calibration inputs rank lower than new ones, and the FRR rises
    naive = []
    for _ in range(200):
        z = rng.normal(size=(2200, 2)) @ np.array([[1.0, 0.6], [0.0, 0.8]])
        cal = [z[:200, 0], z[:200, 1]]
        threshold = threshold_at_frr(max_rank_fusion(cal, cal), 0.05, method="conformal")
        naive.append(np.mean(max_rank_fusion(cal, [z[200:, 0], z[200:, 1]]) > threshold))
    assert np.mean(naive) > np.mean(realised)


def test_errors():
    with pytest.raises(DataError, match="one calibration vector per score vector"):
        max_rank_fusion([np.arange(3.0)], [np.arange(3.0), np.arange(3.0)])
    with pytest.raises(DataError, match="same inputs"):
        max_rank_fusion([np.arange(3.0), np.arange(4.0)], [np.arange(2.0), np.arange(2.0)])
    with pytest.raises(DataError, match="leave_one_out"):
        calibration_ranks(np.arange(3.0), np.arange(2.0), leave_one_out=True)
    with pytest.raises(DataError, match="NaN"):
        calibration_ranks(np.array([0.0, np.nan]), np.arange(2.0))
    with pytest.raises(DataError, match="at least 2"):
        calibration_ranks(np.array([0.0]), np.arange(2.0))
