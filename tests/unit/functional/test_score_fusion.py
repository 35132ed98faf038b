"""Union of detectors: per-detector conformal thresholds at target / D on hand-checked scores, the margin's sign and
units, the FRR the union realises on new clean inputs (simulation, large and small calibration sets), the errors."""

import numpy as np
import pytest

from art_backdoor_ext.exceptions import DataError
from art_backdoor_ext.functional.score_fusion import union_margin, union_thresholds


def test_each_detector_gets_its_conformal_threshold_at_a_share_of_the_target():
    cal_a = np.arange(1.0, 40.0)  # 39 scores 1..39, median 20
    cal_b = np.arange(39.0)[::-1] * 10  # the same inputs scored by another detector, 0..380, median 190
    thresholds, scales = union_thresholds([cal_a, cal_b], 0.1)
    # each at 0.05: k = floor(40 * 0.05) = 2, the 2nd highest score of each
    np.testing.assert_allclose(thresholds, [38.0, 370.0])
    np.testing.assert_allclose(scales, [38.0 - 20.0, 370.0 - 190.0])


def test_margin_is_positive_exactly_above_some_threshold_in_each_detectors_units():
    thresholds, scales = np.array([38.0, 370.0]), np.array([18.0, 180.0])
    a = np.array([20.0, 56.0, 38.0, 0.0])
    b = np.array([190.0, 0.0, 370.0, 730.0])
    np.testing.assert_allclose(union_margin([a, b], thresholds, scales), [-1.0, 1.0, 0.0, 2.0])


def _mean_realised_frr(rng, n_calibration, n_new, repeats):
    """Mean FRR on new clean inputs of the union at 5% over two correlated clean scores on different scales (one
    heavy-tailed), drawn afresh for every repeat."""
    realised = []
    for _ in range(repeats):
        z = rng.normal(size=(n_calibration + n_new, 2)) @ np.array([[1.0, 0.6], [0.0, 0.8]])
        a, b = z[:, 0], np.exp(2 * z[:, 1])
        thresholds, scales = union_thresholds([a[:n_calibration], b[:n_calibration]], 0.05)
        realised.append(np.mean(union_margin([a[n_calibration:], b[n_calibration:]], thresholds, scales) > 0))
    return float(np.mean(realised))


def test_union_holds_the_target_frr_on_new_clean_inputs():
    rng = np.random.default_rng(1)
    # each detector at 2.5%: k = floor(201 * 0.025) = 5, expected FRR at most 5 / 201 each, 0.0498 together
    assert 0.035 < _mean_realised_frr(rng, 200, 2000, 200) <= 10 / 201 + 0.003
    # 40 calibration inputs: k = floor(41 * 0.025) = 1 (above every calibration score), at most 2 / 41 = 0.0488
    assert 0.025 < _mean_realised_frr(rng, 40, 1000, 400) <= 2 / 41 + 0.004


def test_an_input_extreme_under_one_detector_only_is_flagged():
    rng = np.random.default_rng(0)
    cal = [rng.normal(size=400), rng.gamma(2.0, size=400)]
    thresholds, scales = union_thresholds(cal, 0.05)
    margins = union_margin([np.array([0.0, 0.0, 9.0]), np.array([2.0, 30.0, 2.0])], thresholds, scales)
    assert margins[0] < 0 < margins[1] and margins[2] > 0


def test_errors():
    with pytest.raises(DataError, match="at least one detector"):
        union_thresholds([], 0.05)
    with pytest.raises(DataError, match="same inputs"):
        union_thresholds([np.arange(3.0), np.arange(4.0)], 0.05)
    with pytest.raises(DataError, match="NaN"):
        union_thresholds([np.array([0.0, np.nan, 1.0])], 0.05)
    with pytest.raises(DataError, match="one score vector per threshold"):
        union_margin([np.arange(3.0)], np.zeros(2), np.ones(2))
    with pytest.raises(DataError, match="same inputs"):
        union_margin([np.arange(3.0), np.arange(2.0)], np.zeros(2), np.ones(2))
