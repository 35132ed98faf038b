"""Rank fusion of detection scores: ranks of hand-checked values, the leave-one-out calibration ranks, the FRR a
conformal threshold on fused scores realises on new clean inputs (simulation), and the errors."""

import numpy as np
import pytest

from art_backdoor_ext.exceptions import DataError
from art_backdoor_ext.functional.detection import threshold_at_frr
from art_backdoor_ext.functional.score_fusion import calibration_ranks, max_rank_fusion, tail_exceedance


def test_ranks_count_the_calibration_scores_strictly_below():
    calibration = np.array([4.0, 1.0, 3.0, 2.0])
    np.testing.assert_allclose(calibration_ranks(calibration, np.array([0.0, 2.0, 2.5, 9.0])),
                               [0.0, 0.25, 0.5, 1.0])


def test_calibration_scores_are_ranked_among_the_others():
    calibration = np.array([30.0, 10.0, 20.0])
    np.testing.assert_allclose(calibration_ranks(calibration, calibration, leave_one_out=True), [1.0, 0.0, 0.5])


def test_exceedance_past_the_calibration_maximum_in_units_of_its_range():
    calibration = np.array([0.0, 1.0, 2.0, 4.0])  # range 4
    values = np.array([3.0, 4.0, 8.0, 12.0])
    np.testing.assert_allclose(tail_exceedance(calibration, values), [0.0, 0.0, 1 - np.exp(-1.0), 1 - np.exp(-2.0)])
    # leave one out: the maximum 4 is compared with the runner-up 2 over the others' range 2 - 0
    np.testing.assert_allclose(tail_exceedance(calibration, calibration, leave_one_out=True),
                               [0.0, 0.0, 0.0, 1 - np.exp(-1.0)])


def test_fusion_keeps_the_largest_rank_and_orders_the_top_by_exceedance():
    cal_a, cal_b = np.arange(10.0), np.arange(10.0) * 100  # ranges 9 and 900
    # input 0: far above a's calibration, bottom of b; input 1: just above b's; input 2: middle of both
    fused = max_rank_fusion([cal_a, cal_b], [np.array([18.0, 0.0, 4.5]), np.array([-1.0, 990.0, 450.0])])
    np.testing.assert_allclose(fused, [1.0 + 1 - np.exp(-1.0), 1.0 + 1 - np.exp(-0.1), 0.5])


def test_an_input_extreme_under_one_detector_only_is_flagged():
    rng = np.random.default_rng(0)
    cal = [rng.normal(size=400), rng.gamma(2.0, size=400)]
    threshold = threshold_at_frr(max_rank_fusion(cal, cal, scores_are_calibration=True), 0.05, method="conformal")
    typical = [np.array([0.0]), np.array([2.0])]
    only_second = [np.array([0.0]), np.array([30.0])]
    assert max_rank_fusion(cal, typical)[0] < threshold < max_rank_fusion(cal, only_second)[0]


def _mean_realised_frr(rng, n_calibration, n_new, repeats):
    """Mean FRR on new clean inputs of the conformal threshold (5%) on fused calibration scores: two correlated
    clean scores on different scales, drawn afresh for every repeat."""
    realised = []
    for _ in range(repeats):
        z = rng.normal(size=(n_calibration + n_new, 2)) @ np.array([[1.0, 0.6], [0.0, 0.8]])
        a, b = z[:, 0], np.exp(z[:, 1])
        cal = [a[:n_calibration], b[:n_calibration]]
        threshold = threshold_at_frr(max_rank_fusion(cal, cal, scores_are_calibration=True), 0.05,
                                     method="conformal")
        realised.append(np.mean(max_rank_fusion(cal, [a[n_calibration:], b[n_calibration:]]) > threshold))
    return float(np.mean(realised))


def test_conformal_threshold_on_fused_scores_holds_the_target_frr_on_new_clean_inputs():
    rng = np.random.default_rng(1)
    # the conformal rank k = floor(201 * 0.05) = 10 gives an expected FRR of at most 10 / 201 = 0.0498
    assert 0.035 < _mean_realised_frr(rng, 200, 2000, 200) <= 0.0498 + 0.003
    # a small calibration set, where the threshold usually falls above every calibration score of a detector and
    # the exceedance orders the top: k = floor(41 * 0.05) = 2, expected FRR at most 2 / 41 = 0.0488
    assert 0.03 < _mean_realised_frr(rng, 40, 1000, 400) <= 2 / 41 + 0.004


def test_errors():
    with pytest.raises(DataError, match="one calibration vector per score vector"):
        max_rank_fusion([np.arange(3.0)], [np.arange(3.0), np.arange(3.0)])
    with pytest.raises(DataError, match="same inputs"):
        max_rank_fusion([np.arange(3.0), np.arange(4.0)], [np.arange(2.0), np.arange(2.0)])
    with pytest.raises(DataError, match="leave_one_out"):
        calibration_ranks(np.arange(3.0), np.arange(2.0), leave_one_out=True)
    with pytest.raises(DataError, match="NaN"):
        calibration_ranks(np.array([0.0, np.nan]), np.arange(2.0))
    with pytest.raises(DataError, match="at least 3"):
        calibration_ranks(np.array([0.0, 1.0]), np.arange(2.0))
