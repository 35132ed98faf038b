"""Bootstrap calibration of the largest-of-K order-statistic p-value (CEPA's all-to-one inference)."""

from __future__ import annotations

import numpy as np
import pytest

from art_backdoor_ext.exceptions import InvalidParameterError
from art_backdoor_ext.functional.bootstrap_calibration import calibrated_max_statistic_pvalue
from art_backdoor_ext.functional.cepa_math import max_statistic_null, max_statistic_pvalue


def test_uncalibrated_pvalue_over_flags_iid_gamma_sets_and_the_calibrated_one_does_not():
    rng = np.random.default_rng(3)
    raw, calibrated = [], []
    for _ in range(60):
        values = rng.gamma(10.0, 1.0, size=10)  # a clean model: ten i.i.d. statistics, no outlier
        p, _, p_raw = calibrated_max_statistic_pvalue(values, n_bootstrap=39, random_state=rng)
        raw.append(p_raw)
        calibrated.append(p)
    raw_rate = np.mean(np.array(raw) < 0.05)
    calibrated_rate = np.mean(np.array(calibrated) < 0.05)
    assert raw_rate > 0.12  # about a quarter (the reason for the calibration)
    assert calibrated_rate < 0.12  # near the nominal 0.05
    assert calibrated_rate < raw_rate


def test_planted_outlier_keeps_a_small_calibrated_pvalue():
    rng = np.random.default_rng(4)
    hits = 0
    for _ in range(10):
        values = rng.gamma(10.0, 1.0, size=10)
        values[6] = 3.0 * values.max()
        p, index, p_raw = calibrated_max_statistic_pvalue(values, n_bootstrap=39, random_state=rng)
        assert index == 6 and p >= p_raw
        hits += p <= 1 / 40
    assert hits >= 9


def test_calibrated_pvalue_is_a_bootstrap_proportion_and_reproducible():
    values = np.random.default_rng(5).gamma(5.0, 2.0, size=8)
    p, index, raw = calibrated_max_statistic_pvalue(values, n_bootstrap=19, random_state=1)
    assert index == int(np.argmax(values)) and raw == max_statistic_pvalue(values)[0]
    assert 1 / 20 <= p <= 1 and round(p * 20) == pytest.approx(p * 20)
    assert calibrated_max_statistic_pvalue(values, n_bootstrap=19, random_state=1)[0] == p
    values[2] = np.inf
    assert calibrated_max_statistic_pvalue(values, n_bootstrap=19)[0] == 0.0


def test_null_is_the_fit_to_all_but_the_largest():
    values = np.array([1.0, 2.0, 1.5, 2.5, 9.0, 1.2])
    null = max_statistic_null(values)
    assert null.n_fit == 5 and null.truncation == 9.0
    assert max_statistic_pvalue(values)[0] == pytest.approx(-np.expm1(6 * float(null.log_cdf(9.0))))
    assert max_statistic_pvalue(values, null=null) == max_statistic_pvalue(values)


@pytest.mark.parametrize("bad", [0, -1, 2.5, True])
def test_bad_bootstrap_count_is_a_clear_error(bad):
    with pytest.raises(InvalidParameterError, match="n_bootstrap must be an int >= 1"):
        calibrated_max_statistic_pvalue([1.0, 2.0, 3.0, 4.0], n_bootstrap=bad)
