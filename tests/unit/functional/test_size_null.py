import math

import numpy as np
import pytest
from scipy import stats

from art_backdoor_ext.exceptions import DataError, InvalidParameterError
from art_backdoor_ext.functional.robust import order_statistic_pvalue, reciprocal_statistics
from art_backdoor_ext.functional.size_null import fit_left_truncated_gamma, size_order_statistic_pvalue


def _matrix(values: np.ndarray) -> np.ndarray:
    d = values.copy()
    np.fill_diagonal(d, np.nan)
    return d


def test_left_truncated_fit_recovers_the_unconditional_gamma():
    rng = np.random.default_rng(0)
    d = rng.gamma(3.0, 0.5, size=50000)
    cut = float(np.quantile(d, 0.3))
    null = fit_left_truncated_gamma(d[d >= cut], truncation=cut)
    assert null.shape == pytest.approx(3.0, rel=0.05) and null.scale == pytest.approx(0.5, rel=0.05)
    assert null.variable == "size" and null.truncation == cut and null.to_dict()["variable"] == "size"
    naive = stats.gamma.fit(d[d >= cut], floc=0)  # ignoring the truncation biases the shape up
    assert naive[0] > 4.0


def test_size_null_is_calibrated_where_the_paper_null_is_not():
    """Sizes drawn i.i.d. from a Gamma: the p-value of the smallest size is close to uniform (about 5% below
    0.05; a little anti-conservative at K = 10, as the reciprocal null is for exact Gamma reciprocals), while
    the paper's Gamma on the reciprocals flags about half of these clean matrices."""
    rng = np.random.default_rng(1)
    p_size, p_paper = [], []
    for _ in range(200):
        d = _matrix(rng.gamma(20.0, 0.15, size=(10, 10)))
        p_size.append(size_order_statistic_pvalue(d).p_value)
        p_paper.append(order_statistic_pvalue(reciprocal_statistics(d)).p_value)
    assert np.mean(np.array(p_size) < 0.05) < 0.12
    assert np.mean(np.array(p_paper) < 0.05) > 0.3


def test_planted_small_pair_is_found():
    rng = np.random.default_rng(2)
    d = _matrix(rng.gamma(20.0, 0.15, size=(10, 10)))
    d[4, 1] = 0.4
    res = size_order_statistic_pvalue(d)
    assert res.pair == (4, 1) and res.p_value < 1e-3 and res.r_max == pytest.approx(1 / 0.4)
    d[4, 1] = 0.0
    zero = size_order_statistic_pvalue(d)
    assert zero.p_value == 0.0 and math.isinf(zero.r_max)


def test_bad_input():
    rng = np.random.default_rng(3)
    d = _matrix(rng.gamma(20.0, 0.15, size=(10, 10)))
    with pytest.raises(InvalidParameterError):
        size_order_statistic_pvalue(d[:2, :2])
    with pytest.raises(InvalidParameterError, match="n_exclude"):
        size_order_statistic_pvalue(d, n_exclude=0)
    bad = d.copy()
    bad[0, 1] = -1.0
    with pytest.raises(DataError, match=">= 0"):
        size_order_statistic_pvalue(bad)
    bad[0, 1] = np.nan
    with pytest.raises(DataError):
        size_order_statistic_pvalue(bad)
    with pytest.raises(DataError, match=">= truncation"):
        fit_left_truncated_gamma([1.0, 2.0], truncation=1.5)
    with pytest.raises(DataError, match="all equal"):
        fit_left_truncated_gamma([2.0, 2.0, 2.0])
    with pytest.raises(InvalidParameterError):
        fit_left_truncated_gamma([1.0, 2.0], truncation=-1.0)
